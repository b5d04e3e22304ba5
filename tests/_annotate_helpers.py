"""Start ``python -m alignprop.annotate`` as a real process and talk to it over HTTP."""
from __future__ import annotations

import http.client
import json
import os
import re
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parents[1]
URL_RE = re.compile(r"open (http://[^ ]+/)")


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, lines: list[str]):
        self.proc, self.url, self.lines = proc, url, lines
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash or a closed terminal."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- HTTP
    def request(self, method: str, path: str, body=None, headers=None,
                raw_body: bytes | None = None, host_header: str | None = None
                ) -> tuple[int, dict | bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        hdrs = dict(headers or {})
        data = raw_body
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if host_header is not None:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host_header)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            if data is not None:
                conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
        else:
            conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, json.loads(payload)
        return resp.status, payload

    def state(self, annotator: str, tab: str) -> dict:
        status, data = self.request("GET", "/api/state?" + urlencode({"annotator": annotator,
                                                                       "tab": tab}))
        assert status == 200, data
        return data

    def choose(self, annotator: str, tab: str, pair: dict, choice: str, event: str):
        return self.request("POST", "/api/choice", {
            "event": event, "annotator": annotator, "tab": tab, "pair": pair["id"],
            "order": pair["order"], "choice": choice})

    def undo(self, annotator: str, tab: str, undoes: str, event: str):
        return self.request("POST", "/api/undo", {"event": event, "annotator": annotator,
                                                  "tab": tab, "undoes": undoes})


def start_server(directory, *args: str, timeout: float = 120.0) -> Server:
    """Run the real command; wait for the line with its URL (port 0: the kernel picks one)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "alignprop.annotate", str(directory),
                             "--port", "0", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # A thread reads the output: select() on a buffered text pipe misses lines already
    # read into Python's buffer.
    found: queue.Queue = queue.Queue()
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = URL_RE.search(line)
            if m:
                found.put(m.group(1))
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        url = found.get(timeout=timeout)
    except queue.Empty:
        url = None
    if url:
        return Server(proc, url, lines)
    proc.kill()
    proc.wait()
    raise AssertionError("annotate server did not start:\n" + "".join(lines))


def brightness_of_url(url: str) -> float:
    """Mean luma of the image at ``url`` (what a person comparing brightness looks at)."""
    import io
    import urllib.request

    import numpy as np
    from PIL import Image

    with urllib.request.urlopen(url, timeout=30) as resp:
        img = Image.open(io.BytesIO(resp.read())).convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return float((arr * np.array([0.299, 0.587, 0.114], np.float32)).sum(-1).mean())

"""Debian's Firefox ESR driven over WebDriver BiDi, the protocol Firefox itself speaks.

Debian ships no geckodriver; Firefox has its own WebDriver BiDi server
(``--remote-debugging-port``), reached here with a few JSON messages over a WebSocket
(``websocket-client``, which selenium installs). Enough for the annotation page's test:
navigate, reload, run a script, press keys, click at a point, take a screenshot.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

FIREFOX = os.environ.get("ALIGNPROP_FIREFOX", "/usr/bin/firefox-esr")
# Keep a headless Firefox off the network (the machine has none) and quiet.
PREFS = {
    "browser.shell.checkDefaultBrowser": False, "app.update.enabled": False,
    "app.update.auto": False, "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False, "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False, "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False, "extensions.update.enabled": False,
    "browser.startup.homepage_override.mstone": "ignore", "browser.aboutwelcome.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False, "app.normandy.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
}
LISTEN_RE = re.compile(r"WebDriver BiDi listening on (ws://[0-9.:]+)")


def missing() -> str | None:
    if not (os.path.isfile(FIREFOX) and os.access(FIREFOX, os.X_OK)):
        return f"no {FIREFOX}: install Debian's firefox-esr (apt-get install firefox-esr)"
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "websocket-client is not installed (pip install -r requirements.txt)"
    return None


class BiDiError(RuntimeError):
    pass


class Firefox:
    def __init__(self, width: int = 1280, height: int = 800, timeout: float = 90.0):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="firefox-")
        with open(os.path.join(self.profile, "user.js"), "w") as fh:
            for k, v in PREFS.items():
                fh.write(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n")
        self.proc = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", self.profile,
             "--remote-debugging-port", "0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, MOZ_HEADLESS="1"))
        found: list[str] = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                m = LISTEN_RE.search(line)
                if m and not found:
                    found.append(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not found:
            self.close()
            raise BiDiError("Firefox did not start its WebDriver BiDi server")
        self.ws = None
        try:
            self.ws = websocket.create_connection(found[0] + "/session", timeout=timeout,
                                                 suppress_origin=True)  # Firefox refuses Origins
            self.ids = itertools.count(1)
            self.send("session.new",
                      {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": False}}})
            self.context = self.send("browsingContext.getTree", {})["contexts"][0]["context"]
            self.send("browsingContext.setViewport",
                      {"context": self.context, "viewport": {"width": width, "height": height}})
        except BaseException:
            self.close()  # never leave a Firefox running behind a failed start
            raise

    def send(self, method: str, params: dict) -> dict:
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") != mid:
                continue  # events
            if msg.get("type") == "error":
                raise BiDiError(f"{method}: {msg.get('error')}: {msg.get('message')}")
            return msg["result"]

    # -- page
    def navigate(self, url: str) -> None:
        self.send("browsingContext.navigate", {"context": self.context, "url": url,
                                               "wait": "complete"})

    def reload(self) -> None:
        self.send("browsingContext.reload", {"context": self.context, "wait": "complete"})

    def eval_json(self, expression: str):
        """Value of a JS expression, through JSON (awaits a promise)."""
        r = self.send("script.evaluate", {
            "expression": f"Promise.resolve({expression}).then(v => JSON.stringify(v))",
            "target": {"context": self.context}, "awaitPromise": True})
        if r.get("type") != "success":
            raise BiDiError(f"script failed: {r.get('exceptionDetails', {}).get('text')}")
        value = r["result"].get("value")
        return None if value is None else json.loads(value)

    def keys(self, text: str) -> None:
        actions = []
        for ch in text:
            actions += [{"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch}]
        self.send("input.performActions", {"context": self.context, "actions": [
            {"type": "key", "id": "keyboard", "actions": actions}]})

    def click(self, selector: str) -> None:
        """A real pointer click at the middle of the element."""
        box = self.eval_json(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                             f".getBoundingClientRect(); return [r.x + r.width / 2, "
                             f"r.y + r.height / 2]; }})()")
        x, y = int(box[0]), int(box[1])
        self.send("input.performActions", {"context": self.context, "actions": [
            {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
             "actions": [{"type": "pointerMove", "x": x, "y": y},
                         {"type": "pointerDown", "button": 0},
                         {"type": "pointerUp", "button": 0}]}]})

    def screenshot(self, path) -> None:
        data = self.send("browsingContext.captureScreenshot", {"context": self.context})["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))

    def wait(self, condition, timeout: float = 30.0, message: str = ""):
        end = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(message or "condition not met")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                if getattr(self, "ids", None) is not None:
                    try:
                        self.send("session.end", {})
                    except Exception:
                        pass
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

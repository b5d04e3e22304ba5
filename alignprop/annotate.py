"""``python -m alignprop.annotate DIR``: people choose the better edit of each pair in a browser.

Serves one page on 127.0.0.1 (by default) that shows a pair's input, its instruction
and its two edits side by side (order randomised per pair and recorded), takes a click
or the keys 1 / 2 / s (skip), u (undo), shows progress, and appends every choice to
``DIR/preferences.jsonl`` (:mod:`alignprop.preferences`) before answering: a choice the
page showed as saved survives a killed server. The page asks for a name once.

What it serves, and nothing else: ``/`` and three static files shipped beside this
module, and the inputs and edits named in ``DIR/pairs.json`` (by their exact relative
path, re-checked to lie inside DIR at every request). Requests naming any other path
(``..``, encoded or not, absolute paths, the manifest, the trajectories, symlinks that
lead out) get 404. Requests whose Host is not this server's loopback address are
refused (a web page elsewhere cannot reach the server by DNS rebinding), and choices
are only accepted as JSON (a form on another site cannot post one).

One server per folder (an exclusive lock on the preferences file); inside it a lock
makes choices from several tabs one sequence: each tab is handed a pair nobody else
is looking at, a retried request (same event id) is recorded once, and a second
choice of a pair the same person already judged is refused with 409.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import mimetypes
import random
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from common.cli import UserError, run_cli

from .pairs_format import PREFERENCES, PairsManifest, load_pairs
from .preferences import (
    CHOICES,
    PreferencesError,
    PreferenceWriter,
    check_annotator,
    choice_record,
    undo_record,
)

PROG = "alignprop.annotate"
STATIC_DIR = Path(__file__).resolve().parent / "annotate_static"
STATIC_FILES = {"annotate.js": "text/javascript; charset=utf-8",
                "annotate.css": "text/css; charset=utf-8"}
INDEX = "index.html"
LEASE_SECONDS = 600.0          # a pair shown in one tab is not handed to another tab for this long
MAX_BODY = 16 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
KEYS = {"1": "left edit is better", "2": "right edit is better", "s": "skip (can't tell)",
        "u": "undo the last choice"}


@dataclass
class Shown:
    pair_id: str
    order: list[int]          # order[0] = index into pair.images shown on the left


class AnnotationState:
    """Who is shown what, and the choices so far; every method runs under one lock."""

    def __init__(self, pairs: PairsManifest, writer: PreferenceWriter,
                 lease_seconds: float = LEASE_SECONDS, rng: random.Random | None = None):
        self.pairs = pairs
        self.by_id = pairs.by_id
        self.position = {p.id: k + 1 for k, p in enumerate(pairs.pairs)}
        self.writer = writer
        self.log = writer.log
        self.lease_seconds = lease_seconds
        self.rng = rng or random.SystemRandom()
        self.lock = threading.Lock()
        self.current: dict[tuple[str, str], Shown] = {}      # (annotator, tab) -> shown pair
        self.leases: dict[tuple[str, str], tuple[str, float]] = {}  # (annotator, pair) -> tab

    # -- what a tab sees
    def _lease(self, annotator: str, tab: str, shown: Shown) -> Shown:
        self.current[(annotator, tab)] = shown
        self.leases[(annotator, shown.pair_id)] = (tab, time.monotonic() + self.lease_seconds)
        return shown

    def _next(self, annotator: str, tab: str) -> tuple[Shown | None, bool]:
        judged = self.log.judged_by(annotator)
        cur = self.current.get((annotator, tab))
        if cur is not None and cur.pair_id not in judged:
            return self._lease(annotator, tab, cur), False
        now = time.monotonic()
        open_elsewhere = None
        for pair in self.pairs.pairs:
            if pair.id in judged:
                continue
            lease = self.leases.get((annotator, pair.id))
            if lease and lease[0] != tab and lease[1] > now:
                open_elsewhere = open_elsewhere or pair.id
                continue
            order = [0, 1]
            self.rng.shuffle(order)
            return self._lease(annotator, tab, Shown(pair.id, order)), False
        if open_elsewhere is not None:
            # Only pairs another tab holds are left: show one anyway (the person may have
            # closed that tab); whichever tab answers first is recorded, the other gets 409.
            order = [0, 1]
            self.rng.shuffle(order)
            return Shown(open_elsewhere, order), True
        self.current.pop((annotator, tab), None)
        return None, False

    def view(self, annotator: str, tab: str) -> dict:
        shown, elsewhere = self._next(annotator, tab)
        judged = self.log.judged_by(annotator)
        last = self.log.last_active(annotator)
        out = {"total": len(self.pairs.pairs), "done": len(judged),
               "choices_all": len(self.log.active), "annotator": annotator,
               "last": ({"event": last["event"], "pair": last["pair"], "choice": last["choice"]}
                        if last else None),
               "pair": None, "keys": KEYS}
        if shown is not None:
            pair = self.by_id[shown.pair_id]
            out["pair"] = {
                "id": pair.id, "prompt": pair.prompt, "order": shown.order,
                "position": self.position[pair.id],
                "input": file_url(pair.input),
                "left": file_url(pair.images[shown.order[0]]),
                "right": file_url(pair.images[shown.order[1]]),
                "open_elsewhere": elsewhere,
            }
        return out

    # -- what a tab sends
    def choose(self, body: dict) -> tuple[int, dict]:
        annotator, tab, event = _who(body)
        pair_id, order, choice = body.get("pair"), body.get("order"), body.get("choice")
        if pair_id not in self.by_id:
            raise RequestError(f"unknown pair {pair_id!r}")
        if order not in ([0, 1], [1, 0]):
            raise RequestError("order must be [0, 1] or [1, 0]")
        if choice not in CHOICES:
            raise RequestError(f"choice must be one of {', '.join(CHOICES)}")
        with self.lock:
            if event in self.log.events:  # a retry of a request already recorded
                return 200, {"recorded": False, "duplicate": True,
                             "state": self.view(annotator, tab)}
            if pair_id in self.log.judged_by(annotator):
                return 409, {"error": f"pair {pair_id} was already judged by {annotator} "
                                      f"(in another tab?)", "state": self.view(annotator, tab)}
            self.writer.append(choice_record(pair_id, order, choice, annotator, event))
            # (append returns after fsync: only then is the page told "saved")
            if (cur := self.current.get((annotator, tab))) and cur.pair_id == pair_id:
                del self.current[(annotator, tab)]
            self.leases.pop((annotator, pair_id), None)
            return 200, {"recorded": True, "event": event, "state": self.view(annotator, tab)}

    def undo(self, body: dict) -> tuple[int, dict]:
        annotator, tab, event = _who(body)
        undoes = body.get("undoes")
        if not isinstance(undoes, str):
            raise RequestError("undoes must be the event id of a choice")
        with self.lock:
            if event in self.log.events:
                return 200, {"recorded": False, "duplicate": True,
                             "state": self.view(annotator, tab)}
            target = self.log.events.get(undoes)
            standing = (target is not None and target["type"] == "choice"
                        and self.log.active.get((annotator, target["pair"])) == undoes)
            if not standing:
                return 409, {"error": "that choice is not yours to undo or was already undone",
                             "state": self.view(annotator, tab)}
            self.writer.append(undo_record(undoes, annotator, event))
            # The withdrawn pair comes back to this tab, in the order it was shown.
            cur = self.current.get((annotator, tab))
            if cur is not None:
                self.leases.pop((annotator, cur.pair_id), None)
            self._lease(annotator, tab, Shown(target["pair"], list(target["shown"])))
            return 200, {"recorded": True, "event": event, "pair": target["pair"],
                         "state": self.view(annotator, tab)}

    def state(self, annotator: str, tab: str) -> dict:
        with self.lock:
            return self.view(annotator, tab)


class RequestError(ValueError):
    """A malformed request from the page (400)."""


def _who(body: dict) -> tuple[str, str, str]:
    try:
        annotator = check_annotator(body.get("annotator"))
    except PreferencesError as exc:
        raise RequestError(str(exc)) from None
    tab, event = body.get("tab"), body.get("event")
    for name, value in (("tab", tab), ("event", event)):
        if not isinstance(value, str) or not (8 <= len(value) <= 64) or not all(
                c.isalnum() or c in "_-" for c in value) or not value.isascii():
            raise RequestError(f"{name} must be 8-64 letters, digits, '_' or '-'")
    return annotator, tab, event


def file_url(rel: str) -> str:
    return "/files/" + quote(rel)


# --------------------------------------------------------------------------- HTTP

def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Handler(BaseHTTPRequestHandler):
    server_version = "alignprop-annotate"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # set on the subclass by make_server
    app: AnnotationState
    pairs: PairsManifest
    served: dict[str, Path]
    allowed_hosts: set[str] | None
    verbose: bool = False

    def log_message(self, fmt, *args):  # quiet unless asked: the terminal shows the URL
        if self.verbose:
            sys.stderr.write(f"{PROG}: {self.address_string()} {fmt % args}\n")

    # -- responses
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True  # an unread request body must not be read as a request
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        if self.allowed_hosts is None:
            return True
        return (self.headers.get("Host") or "").lower() in self.allowed_hosts

    # -- GET
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if not self._host_ok():
            return self._error(403, "unexpected Host header")
        url = urlsplit(self.path)
        path = url.path
        if path in ("/", "/index.html"):
            return self._static(INDEX, "text/html; charset=utf-8")
        if path == "/favicon.ico":  # browsers ask for it; nothing to show, and no 404 noise
            return self._send(204, b"", "image/x-icon")
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            if name in STATIC_FILES:
                return self._static(name, STATIC_FILES[name])
            return self._error(404, "not found")
        if path.startswith("/files/"):
            return self._file(path[len("/files/"):])
        if path == "/api/state":
            q = parse_qs(url.query)
            try:
                annotator, tab, _ = _who({"annotator": q.get("annotator", [""])[0],
                                          "tab": q.get("tab", [""])[0], "event": "x" * 8})
            except RequestError as exc:
                return self._error(400, str(exc))
            return self._json(200, self.app.state(annotator, tab))
        return self._error(404, "not found")

    def _static(self, name: str, ctype: str) -> None:
        self._send(200, (STATIC_DIR / name).read_bytes(), ctype)

    def _file(self, quoted: str) -> None:
        # Only the exact relative paths the manifest names (inputs and edits) are served;
        # anything else, however spelled, is "not found".
        try:
            rel = unquote(quoted, errors="strict")
        except UnicodeDecodeError:
            return self._error(404, "not found")
        target = self.served.get(rel)
        if target is None:
            return self._error(404, "not found")
        real = target.resolve()
        root = self.pairs.root
        if root not in real.parents or not real.is_file():  # a symlink swapped in since start
            return self._error(404, "not found")
        ctype = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
        if not ctype.startswith("image/"):
            return self._error(404, "not found")
        self._send(200, real.read_bytes(), ctype)

    # -- POST
    def do_POST(self):
        if not self._host_ok():
            return self._error(403, "unexpected Host header")
        routes = {"/api/choice": self.app.choose, "/api/undo": self.app.undo}
        route = routes.get(urlsplit(self.path).path)
        if route is None:
            return self._error(404, "not found")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self._error(415, "send JSON (Content-Type: application/json)")
        origin = self.headers.get("Origin")
        if origin and self.allowed_hosts is not None and \
                urlsplit(origin).netloc.lower() not in self.allowed_hosts:
            return self._error(403, "unexpected Origin")
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._error(400, "missing or too large body")
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            status, payload = route(body)
        except (ValueError, UnicodeDecodeError) as exc:  # RequestError and bad JSON
            return self._error(400, " ".join(str(exc).split()))
        except OSError as exc:  # the disk refused: the choice is NOT saved, and the page says so
            return self._error(503, f"not saved: {exc}")
        self._json(status, payload)


def make_server(directory: str | Path, host: str = "127.0.0.1", port: int = 0,
                preferences: str | Path | None = None, verbose: bool = False
                ) -> tuple[ThreadingHTTPServer, AnnotationState]:
    """Load and check the folder, open the preferences file, bind; the caller serves."""
    pairs = load_pairs(directory)
    pref_path = Path(preferences) if preferences else pairs.root / PREFERENCES
    inputs = {pairs.manifest_path.resolve(), *(pairs.path(rel).resolve() for rel in pairs.files())}
    if pref_path.resolve() in inputs:
        raise UserError(f"--preferences {pref_path} is one of the pairs folder's own files; "
                        f"choices go to a .jsonl file of their own")
    writer = PreferenceWriter(pref_path, pairs)
    try:
        app = AnnotationState(pairs, writer)
        served = {}
        for p in pairs.pairs:
            for rel in (p.input, *p.images):
                served[rel] = pairs.root / rel
        handler = type("AnnotateHandler", (Handler,), {
            "app": app, "pairs": pairs, "served": served, "verbose": verbose,
            "allowed_hosts": None})
        try:
            server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        writer.close()
        raise
    server.daemon_threads = True
    bound_port = server.server_address[1]
    if _loopback(host):
        names = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
        handler.allowed_hosts = {f"{n}:{bound_port}" for n in names}
    return server, app


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a local page where people choose the better edit of each pair in a "
                    "pairs folder (written by python -m alignprop.sample_pairs). Choices are "
                    "appended to DIR/preferences.jsonl; train on them with --method d3po "
                    "--preferences DIR/preferences.jsonl. See docs/annotate.md.")
    ap.add_argument("directory", metavar="DIR", help="pairs folder (with pairs.json)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this computer only; another "
                         "address lets anyone who reaches it annotate)")
    ap.add_argument("--port", type=int, default=0,
                    help="port (default 0: a free one, printed at start)")
    ap.add_argument("--preferences", default=None,
                    help="preferences file to append to (default DIR/preferences.jsonl; an "
                         "existing file is resumed)")
    ap.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, got {args.port}")
    server, app = make_server(args.directory, args.host, args.port, args.preferences,
                              args.verbose)
    host, port = server.server_address[:2]
    shown_host = f"[{host}]" if ":" in host else host
    judged = len(app.log.active)
    print(f"{PROG}: {len(app.pairs.pairs)} pairs in {app.pairs.root}; {judged} choices so far "
          f"in {app.writer.path}", flush=True)
    if app.writer.torn_lines:
        print(f"{PROG}: ignored {len(app.writer.torn_lines)} unfinished line(s) of "
              f"{app.writer.path} (a crash while writing; nothing confirmed was lost)",
              flush=True)
    if not _loopback(args.host):
        print(f"{PROG}: warning: listening on {args.host}: anyone who can reach it can "
              f"record choices", flush=True)
    print(f"{PROG}: open http://{shown_host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.writer.close()
    print(f"{PROG}: stopped; {len(app.log.active)} choices in {app.writer.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, PROG))


__all__ = ["AnnotationState", "make_server", "main", "build_parser", "KEYS"]

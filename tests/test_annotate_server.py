"""The annotation server without a browser: what it serves, what it records, crashes, two tabs."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

from alignprop.pairs_format import load_pairs
from alignprop.preferences import load_preferences, read_records

from _annotate_helpers import REPO, start_server
from _pairs_fixture import make_pairs_folder

pytestmark = pytest.mark.slow


def ev() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    make_pairs_folder(d, n=6, size=32)
    return d


@pytest.fixture
def fresh(tmp_path):
    make_pairs_folder(tmp_path / "pairs", n=6, size=32)
    return tmp_path / "pairs"


@pytest.fixture(scope="module")
def server(folder):
    srv = start_server(folder)
    yield srv
    srv.stop()


# --------------------------------------------------------------------------- what is served

TRAVERSALS = [
    "/files/../pairs.json", "/files/%2e%2e/pairs.json", "/files/%2E%2E%2Fpairs.json",
    "/files/images/../pairs.json", "/files/images/%2e%2e/%2e%2e/etc/passwd",
    "/files//etc/passwd", "/files/%2Fetc%2Fpasswd", "/files/images%2F..%2Fpairs.json",
    "/files/images%5c..%5cpairs.json", "/files/%252e%252e/pairs.json", "/files/%ff%fe",
    "/static/../annotate.py", "/static/%2e%2e/annotate.py", "/static/index.html/../../x",
    "/files/trajectories/0000.safetensors",     # named in the manifest, but not for the page
    "/pairs.json", "/preferences.jsonl", "/files/pairs.json", "/files/preferences.jsonl",
    "/files/", "/files/inputs/", "/alignprop/annotate.py", "/../../etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_only_manifest_images_and_static_files_are_served(server, path):
    status, body = server.request("GET", path)
    assert status == 404, (path, body)
    assert b"root:" not in (body if isinstance(body, bytes) else json.dumps(body).encode())


def test_page_static_and_images_are_served(server, folder):
    pairs = load_pairs(folder)
    status, page = server.request("GET", "/")
    assert status == 200 and b"<script src=\"/static/annotate.js\"" in page
    assert b"http" not in page.replace(b"http-equiv", b"")  # nothing from the network
    for name in ("annotate.js", "annotate.css"):
        status, body = server.request("GET", f"/static/{name}")
        assert status == 200 and b"http://" not in body and b"https://" not in body
    pair = pairs.pairs[0]
    for rel in (pair.input, *pair.images):
        status, body = server.request("GET", f"/files/{rel}")
        assert status == 200 and body == (folder / rel).read_bytes()


def test_symlink_swapped_in_after_start_is_not_followed(fresh, tmp_path):
    srv = start_server(fresh)
    try:
        pair = load_pairs(fresh).pairs[0]
        secret = tmp_path / "secret.png"
        secret.write_bytes(b"\x89PNG secret outside the folder")
        target = fresh / pair.images[0]
        target.unlink()
        target.symlink_to(secret)
        status, body = srv.request("GET", f"/files/{pair.images[0]}")
        assert status == 404 and b"secret" not in (body if isinstance(body, bytes) else b"")
    finally:
        srv.stop()


def test_foreign_host_origin_and_non_json_posts_are_refused(server):
    # DNS rebinding: a page elsewhere reaching the port under its own host name.
    status, _ = server.request("GET", "/", host_header="evil.example:80")
    assert status == 403
    status, _ = server.request("GET", "/", host_header=f"localhost:{server.port}")
    assert status == 200
    body = {"event": ev(), "annotator": "x", "tab": "tab00001", "pair": "0000",
            "order": [0, 1], "choice": "left"}
    # A form on another site can only send text/plain or form data: refused.
    status, _ = server.request("POST", "/api/choice", raw_body=json.dumps(body).encode(),
                               headers={"Content-Type": "text/plain"})
    assert status == 415
    status, _ = server.request("POST", "/api/choice", body,
                               headers={"Origin": "http://evil.example"})
    assert status == 403
    status, data = server.request("POST", "/api/choice", {**body, "pair": "nope"})
    assert status == 400 and "unknown pair" in data["error"]
    status, data = server.request("POST", "/api/choice", {**body, "annotator": ""})
    assert status == 400


# --------------------------------------------------------------------------- recording

def test_choices_are_recorded_once_undone_and_resumed(fresh):
    srv = start_server(fresh)
    try:
        s = srv.state("Ana", "tabA0001")
        assert (s["done"], s["total"], s["last"]) == (0, 6, None)
        first = s["pair"]
        e1 = ev()
        status, r = srv.choose("Ana", "tabA0001", first, "left", e1)
        assert status == 200 and r["recorded"] and r["state"]["done"] == 1
        # The same request again (a retry after a lost answer) is one choice.
        status, again = srv.choose("Ana", "tabA0001", first, "left", e1)
        assert status == 200 and again["duplicate"] and again["state"]["done"] == 1
        # Another choice of a pair Ana already judged (a stale tab) is refused.
        status, stale = srv.choose("Ana", "tabB0001", first, "right", ev())
        assert status == 409 and "already judged" in stale["error"]
        second = r["state"]["pair"]
        assert second["id"] != first["id"]
        status, r = srv.choose("Ana", "tabA0001", second, "skip", ev())
        assert status == 200 and r["state"]["last"]["pair"] == second["id"]
        # Undo the last one: it comes back in the order it was shown.
        status, u = srv.undo("Ana", "tabA0001", r["state"]["last"]["event"], ev())
        assert status == 200 and u["pair"] == second["id"]
        assert u["state"]["pair"]["id"] == second["id"]
        assert u["state"]["pair"]["order"] == second["order"]
        assert u["state"]["done"] == 1
        status, again = srv.undo("Ana", "tabA0001", r["state"]["last"]["event"], ev())
        assert status == 409
        # Bob cannot undo Ana's choice.
        status, _ = srv.undo("Bob", "tabC0001", e1, ev())
        assert status == 409
    finally:
        srv.stop()
    # A new server resumes: Ana's one standing choice is there, the undone pair is open.
    srv = start_server(fresh)
    try:
        assert "1 choices so far" in "".join(srv.lines)
        s = srv.state("Ana", "tabZ0001")
        assert s["done"] == 1 and s["pair"]["id"] == second["id"]
        assert s["last"]["event"] == e1
    finally:
        srv.stop()
    recs = [r for _, r in read_records(fresh / "preferences.jsonl").records]
    assert [r["type"] for r in recs] == ["header", "choice", "choice", "undo"]
    choice = recs[1]
    assert choice["annotator"] == "Ana" and choice["pair"] == first["id"]
    assert choice["shown"] == first["order"] and choice["preferred"] == first["order"][0]
    assert choice["time"].endswith("Z")
    prefs = load_preferences(fresh / "preferences.jsonl")
    assert prefs.examples == ((first["id"], first["order"][0]),)
    assert (prefs.counts.undone, prefs.counts.skips, prefs.counts.unjudged_pairs) == (1, 0, 5)


def test_order_is_randomised_per_pair(tmp_path):
    make_pairs_folder(tmp_path, n=40, size=16)
    srv = start_server(tmp_path)
    try:
        orders = []
        s = srv.state("Ana", "tabA0001")
        while s["pair"]:
            orders.append(tuple(s["pair"]["order"]))
            status, r = srv.choose("Ana", "tabA0001", s["pair"], "left", ev())
            assert status == 200
            s = r["state"]
    finally:
        srv.stop()
    # 40 fair coin flips: both orders appear (all equal has probability 2**-39).
    assert 5 <= orders.count((0, 1)) <= 35, orders
    recs = [r for _, r in read_records(tmp_path / "preferences.jsonl").records
            if r["type"] == "choice"]
    assert [tuple(r["shown"]) for r in recs] == orders


def test_two_tabs_neither_duplicate_nor_lose_choices(fresh):
    """Two tabs of one person, each answering what it is shown, as fast as they can."""
    srv = start_server(fresh)
    confirmed: dict[str, list[str]] = {"tabA0001": [], "tabB0001": []}
    conflicts = []

    def tab(name, s):
        while s["pair"]:
            e = ev()
            status, r = srv.choose("Ana", name, s["pair"], "right", e)
            if status == 200:
                confirmed[name].append(s["pair"]["id"])
            else:
                assert status == 409, r
                conflicts.append(s["pair"]["id"])
            s = r["state"]

    try:
        # Both tabs are open (each shows a pair) before either answers.
        first = {n: srv.state("Ana", n) for n in confirmed}
        assert first["tabA0001"]["pair"]["id"] != first["tabB0001"]["pair"]["id"]
        threads = [threading.Thread(target=tab, args=(n, first[n])) for n in confirmed]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Both tabs worked (the server handed them different pairs).
        assert confirmed["tabA0001"] and confirmed["tabB0001"]
        judged = confirmed["tabA0001"] + confirmed["tabB0001"]
        assert sorted(judged) == sorted(p.id for p in load_pairs(fresh).pairs)
        # Many copies of one request at once (a flaky network's retries): one record.
        s = srv.state("Bob", "tabC0001")
        e = ev()
        answers = []
        dup = [threading.Thread(target=lambda: answers.append(
            srv.choose("Bob", "tabC0001", s["pair"], "left", e)[0])) for _ in range(8)]
        for t in dup:
            t.start()
        for t in dup:
            t.join(60)
        assert answers == [200] * 8
    finally:
        srv.stop()
    recs = [r for _, r in read_records(fresh / "preferences.jsonl").records
            if r["type"] == "choice"]
    assert len(recs) == 6 + 1
    assert len({(r["annotator"], r["pair"]) for r in recs}) == 7
    prefs = load_preferences(fresh / "preferences.jsonl", mode="every")
    assert prefs.counts.choices == 7 and prefs.counts.duplicates == 0


def test_killed_server_loses_no_confirmed_choice(tmp_path):
    """Choices keep arriving while the server is killed (SIGKILL); every one answered 200
    is in the file after a restart, and the file reads cleanly."""
    make_pairs_folder(tmp_path, n=30, size=16)
    srv = start_server(tmp_path)
    confirmed: list[tuple[str, str]] = []
    stop = threading.Event()

    def annotate(who):
        tab = f"tab{who}0001"
        try:
            s = srv.state(who, tab)
            while s["pair"] and not stop.is_set():
                e = ev()
                status, r = srv.choose(who, tab, s["pair"], "left", e)
                if status != 200:
                    return
                confirmed.append((e, s["pair"]["id"]))
                s = r["state"]
        except (OSError, ConnectionError, json.JSONDecodeError):
            return  # the server died mid-request: that choice was never confirmed

    threads = [threading.Thread(target=annotate, args=(w,)) for w in ("Ana", "Bob")]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while len(confirmed) < 12 and time.monotonic() - t0 < 60:
        time.sleep(0.01)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(60)
    assert len(confirmed) >= 12
    srv = start_server(tmp_path)  # repairs an unfinished last line if the kill cut one
    try:
        assert srv.state("Ana", "tabAna0001")["done"] + srv.state("Bob", "tabBob0001")["done"] \
            >= len(confirmed)
    finally:
        srv.stop()
    recs = [r for _, r in read_records(tmp_path / "preferences.jsonl").records]
    recorded = {r["event"] for r in recs if r["type"] == "choice"}
    assert {e for e, _ in confirmed} <= recorded
    prefs = load_preferences(tmp_path / "preferences.jsonl", mode="every")
    assert prefs.counts.choices == len(recorded)


def test_second_server_on_the_same_folder_is_refused(server, folder):
    proc = subprocess.run([sys.executable, "-m", "alignprop.annotate", str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alignprop.annotate: error: ")
    assert "another alignprop.annotate" in lines[0]


@pytest.mark.parametrize("case", ["no_manifest", "missing_image", "other_pairs", "input_file"])
def test_bad_folder_or_file_is_one_line(tmp_path, case):
    d = tmp_path / "pairs"
    make_pairs_folder(d, n=2, size=16)
    args = [str(d)]
    expect = {"no_manifest": "pairs.json: missing", "missing_image": "is missing",
              "other_pairs": "made for other pairs",
              "input_file": "is one of the pairs folder's own files"}[case]
    if case == "no_manifest":
        (d / "pairs.json").unlink()
    elif case == "missing_image":
        (d / "images" / "0001_b.png").unlink()
    elif case == "input_file":
        args += ["--preferences", str(d / "pairs.json")]
    else:
        other = tmp_path / "other"
        make_pairs_folder(other, n=2, size=16, seed=1)
        srv = start_server(other)
        srv.stop()
        args += ["--preferences", str(other / "preferences.jsonl")]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "alignprop.annotate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alignprop.annotate: error: "), lines
    assert expect in lines[0]
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed


def test_default_bind_is_loopback(server):
    assert server.host == "127.0.0.1"

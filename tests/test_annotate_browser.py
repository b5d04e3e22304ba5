"""The annotation page in real headless browsers: click through, reload, resume, undo, skip.

Chromium: Debian's ``chromium`` and ``chromium-driver`` driven by selenium. Firefox:
Debian's ``firefox-esr`` driven over its own WebDriver BiDi (tests/_firefox.py). .ci/run
installs both; selenium (and websocket-client with it) come from requirements.txt.
Without them the tests are skipped with the reason, which ``make test`` prints (``-rs``);
with ``ALIGNPROP_REQUIRE_BROWSER=1`` (set by .ci/run) they fail instead.
``ALIGNPROP_WRITE_MEDIA=1`` also saves the page's screenshot as media/annotate.png (the
README's picture).
"""
from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import alignprop_fluxkontext as train_cli
from alignprop.held_out import HeldOut
from alignprop.preferences import load_preferences, read_records
from alignprop.sample_pairs import main as sample_pairs_main
from common.photos import HELD_OUT_NAMES, write_photos

from _annotate_helpers import REPO, start_server
import _firefox
from _browser import (HEIGHT, PAGE_JS, REQUIRE, WIDTH, answer, brighter_side, chromium,
                      done_count, enter_name, need_browser, page, press, quit_driver,
                      scripted_person, wait, wait_ready)
from _pairs_fixture import make_pairs_folder

pytestmark = pytest.mark.slow


@pytest.fixture
def browser():
    need_browser()
    profile = tempfile.mkdtemp(prefix="chromium-")
    driver = chromium(Path(profile))
    yield driver
    quit_driver(driver, profile)


@pytest.fixture
def folder(tmp_path):
    manifest, truth = make_pairs_folder(tmp_path / "pairs", n=8, size=256)
    return manifest, truth


def _shown_left_index(manifest, p) -> int:
    """Which of the pair's images the page showed on the left (from the image URL)."""
    pair = manifest.by_id[p["pair"]]
    return [p["left"].endswith("/files/" + im) for im in pair.images].index(True)


def test_click_through_reload_resume_undo_skip(browser, folder, tmp_path):
    manifest, truth = folder
    srv = start_server(manifest.root)
    try:
        browser.get(srv.url)
        enter_name(browser, "Ana")
        first = page(browser)
        assert first["progress"] == "0 of 8 pairs judged" and first["prompt"]
        keys = browser.find_element("css selector", ".keys").text
        for text in ("1", "left is better", "2", "right is better", "S", "skip", "U", "undo"):
            assert text in keys

        # Five pairs, the first with keys, then alternating keys and clicks.
        judged = scripted_person(browser, limit=5, use_clicks=True)
        assert [j["pair"] for j in judged] == ["0000", "0001", "0002", "0003", "0004"]
        assert page(browser)["progress"] == "5 of 8 pairs judged"

        # Reload: no second name prompt, same progress, the next pair not yet judged.
        browser.refresh()
        p = wait_ready(browser)
        assert not p["name_panel"] and p["progress"] == "5 of 8 pairs judged"
        assert p["pair"] == "0005"
        shot = tmp_path / "annotate.png"
        browser.save_screenshot(str(shot))

        # Undo: the last pair comes back, with its edits on the same sides as before.
        press(browser, "u")
        wait(browser, lambda d: done_count(page(d)) == 4 and page(d)["pair"] == "0004"
             and page(d)["ready"] == "1", message="undo did not bring pair 0004 back")
        back = page(browser)
        assert (back["left"], back["right"]) == (judged[4]["left"], judged[4]["right"])
        judged[4] = scripted_person(browser, limit=1)[0]        # judged again
        answer(browser, "skip")                                 # 0005 skipped with S
        judged += scripted_person(browser)                      # the rest
        end = page(browser)
        assert end["done_panel"] and end["progress"] == "8 of 8 pairs judged"
        # Nothing on the page came from anywhere but this server (works offline).
        urls = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(srv.url) for u in urls), urls
    finally:
        srv.stop()

    path = manifest.root / "preferences.jsonl"
    kinds = [r["type"] for _, r in read_records(path).records]
    assert kinds == ["header"] + ["choice"] * 5 + ["undo"] + ["choice"] * 4
    prefs = load_preferences(path)
    assert dict(prefs.examples) == {pid: truth[pid] for pid in truth if pid != "0005"}
    c = prefs.counts
    assert (c.choices, c.skips, c.undone, c.skipped_pairs, c.annotators) == (7, 1, 1, 1, ("Ana",))
    # The file records the order the page showed.
    shown = {r["pair"]: r for _, r in read_records(path).records
             if r["type"] == "choice" and r["event"] not in
             {u["undoes"] for _, u in read_records(path).records if u["type"] == "undo"}}
    for j in judged:
        assert shown[j["pair"]]["shown"][0] == _shown_left_index(manifest, j)

    from PIL import Image
    img = Image.open(shot)
    assert img.size == (WIDTH, HEIGHT)
    assert np.asarray(img.convert("L"), np.float32).std() > 20  # photos, not a blank page
    if os.environ.get("ALIGNPROP_WRITE_MEDIA") == "1":
        shutil.copyfile(shot, REPO / "media" / "annotate.png")


def test_two_tabs_get_different_pairs_and_record_each_once(browser, folder):
    manifest, _ = folder
    srv = start_server(manifest.root)
    try:
        browser.get(srv.url)
        enter_name(browser, "Bo")
        tab1 = browser.current_window_handle
        browser.switch_to.new_window("tab")
        browser.get(srv.url)
        p2 = wait_ready(browser)              # the name is remembered: no prompt
        tab2 = browser.current_window_handle
        browser.switch_to.window(tab1)
        p1 = wait_ready(browser)
        assert not p2["name_panel"] and p1["pair"] != p2["pair"]
        answer(browser, "left")
        browser.switch_to.window(tab2)
        answer(browser, "right")
        # Tab 2 answered the pair it showed; tab 1's pair is not repeated there.
        assert page(browser)["pair"] not in (p1["pair"], p2["pair"])
    finally:
        srv.stop()
    recs = [r for _, r in read_records(manifest.root / "preferences.jsonl").records
            if r["type"] == "choice"]
    assert sorted(r["pair"] for r in recs) == sorted([p1["pair"], p2["pair"]])
    assert all(r["annotator"] == "Bo" for r in recs)


def test_page_survives_a_killed_server(browser, folder):
    """What the page showed as saved is in the file after a SIGKILL; a choice made while the
    server is down is shown as not saved, and the same key press saves it once it is back."""
    manifest, _ = folder
    srv = start_server(manifest.root)
    try:
        browser.get(srv.url)
        enter_name(browser, "Kim")
        saved = [answer(browser, "left")["pair"], answer(browser, "right")["pair"]]
        srv.kill()
        p = page(browser)
        press(browser, "1")
        wait(browser, lambda d: page(d)["status"].startswith("Not saved"),
             message="a choice with no server was not reported as unsaved")
        assert page(browser)["pair"] == p["pair"] and done_count(page(browser)) == 2
        srv = start_server(manifest.root, "--port", str(srv.port))  # same address, new process
        answer(browser, "left")
        saved.append(p["pair"])
        browser.refresh()
        assert wait_ready(browser)["progress"] == "3 of 8 pairs judged"
    finally:
        srv.stop()
    recs = [r for _, r in read_records(manifest.root / "preferences.jsonl").records
            if r["type"] == "choice"]
    assert [r["pair"] for r in recs] == saved and all(r["annotator"] == "Kim" for r in recs)


def test_scripted_person_preferring_brighter_edits_writes_their_preferences(browser, tmp_path):
    manifest, truth = make_pairs_folder(tmp_path / "pairs", n=12, size=64, seed=3)
    srv = start_server(manifest.root)
    try:
        browser.get(srv.url)
        enter_name(browser, "scripted-brightness")
        judged = scripted_person(browser)
    finally:
        srv.stop()
    assert len(judged) == 12
    prefs = load_preferences(manifest.root / "preferences.jsonl", mode="majority")
    assert dict(prefs.examples) == truth
    assert prefs.counts.annotators == ("scripted-brightness",)
    # Both sides were shown and chosen: the order really is random, and the person read it.
    assert {j["chose"] for j in judged} == {"left", "right"}


def _readme_people_commands() -> list[list[str]]:
    """The README's three commands of 'People as the judge', as argument lists."""
    text = (REPO / "README.md").read_text()
    block = text.split("## People as the judge", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line.split("#")[0]) for line in joined.splitlines() if line.strip()]


def test_readme_people_workflow_with_a_scripted_person_brightens_held_out_photos(browser,
                                                                                 tmp_path):
    """Issue 25's loop, with the README's own three commands: sample pairs, a person (always
    the brighter edit) chooses in the browser, --method d3po --preferences trains on exactly
    those stored trajectories, and the LoRA edits held-out photos (never seen by tiny-photo
    nor here) brighter."""
    sample, annotate, training = _readme_people_commands()
    assert sample[:3] == ["python", "-m", "alignprop.sample_pairs"]
    assert annotate == ["python", "-m", "alignprop.annotate", "pairs/"]
    assert training[:2] == ["python", "alignprop_fluxkontext.py"]
    paths = {"photos/": str(tmp_path / "photos"), "pairs/": str(tmp_path / "pairs"),
             "pairs/preferences.jsonl": str(tmp_path / "pairs" / "preferences.jsonl"),
             "outputs/people": str(tmp_path / "run")}
    write_photos(tmp_path / "photos", ["hubble_deep_field", "retina", "camera", "coins"])
    assert sample_pairs_main([paths.get(a, a) for a in sample[3:]]) == 0
    srv = start_server(tmp_path / "pairs")
    try:
        browser.get(srv.url)
        enter_name(browser, "scripted-brightness")
        judged = scripted_person(browser)
    finally:
        srv.stop()
    assert len(judged) == int(sample[sample.index("--num_pairs") + 1])
    assert train_cli.main([paths.get(a, a) for a in training[2:]]) == 0
    value = dict(zip(training[2::2], training[3::2]))
    size, steps, seq = (int(value[k]) for k in ("--image_height", "--sample_num_steps",
                                                "--max_sequence_length"))
    targets = ("attn.to_k,attn.to_q,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_q_proj,"
               "attn.add_v_proj,attn.to_add_out,ff.net.0.proj,ff.net.2,ff_context.net.0.proj,"
               "ff_context.net.2").split(",")
    prompt = sample[sample.index("--prompt") + 1]
    held = HeldOut("tiny-photo", HELD_OUT_NAMES, prompt, size, steps, 16, targets, seq)

    def luma(images, inputs, prompts):
        return (0.2126 * images[:, 0] + 0.7152 * images[:, 1] + 0.0722 * images[:, 2]).mean((1, 2))

    gain = held.score(tmp_path / "run", luma) - held.score(None, luma)
    assert (gain > 0).all() and gain.mean() > 0.02, gain.tolist()


# --------------------------------------------------------------------------- Firefox

@pytest.fixture
def firefox():
    reason = _firefox.missing()
    if reason:
        if REQUIRE:
            pytest.fail(f"ALIGNPROP_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"Firefox test skipped: {reason}")
    browser = _firefox.Firefox(WIDTH, HEIGHT)
    yield browser
    browser.close()


def test_firefox_judge_reload_resume_undo_skip(firefox, tmp_path):
    manifest, truth = make_pairs_folder(tmp_path / "pairs", n=6, size=128, seed=5)
    srv = start_server(manifest.root)
    fx = firefox

    def shown():
        return fx.eval_json(PAGE_JS)

    def saved(before):
        fx.wait(lambda: (lambda now: now["ready"] == "1" and now["status"].startswith("Saved")
                         and f"pair {before['pair']}" in now["status"]
                         and done_count(now) > done_count(before))(shown()),
                message=f"choice on pair {before['pair']} not saved: {shown()}")

    try:
        fx.navigate(srv.url)
        fx.wait(lambda: shown()["name_panel"], message="no name prompt")
        fx.click("#name-input")
        fx.keys("Fx")
        fx.keys("\ue007")  # Enter
        judged = []
        for how in ("key", "click", "button"):
            p = fx.wait(lambda: (lambda s: s if s["ready"] == "1" else None)(shown()))
            side = brighter_side(p)
            if how == "key":
                fx.keys({"left": "1", "right": "2"}[side])
            elif how == "click":
                fx.click(f"button.pick[data-choice='{side}']")
            else:
                fx.click(f".actions button[data-choice='{side}']")
            saved(p)
            judged.append(p)
        assert [j["pair"] for j in judged] == ["0000", "0001", "0002"]
        fx.reload()
        p = fx.wait(lambda: (lambda s: s if s["ready"] == "1" else None)(shown()))
        assert not p["name_panel"] and p["progress"] == "3 of 6 pairs judged"
        assert p["pair"] == "0003"
        fx.keys("u")
        fx.wait(lambda: (lambda s: s["ready"] == "1" and s["pair"] == "0002"
                         and done_count(s) == 2)(shown()), message="undo did not work")
        back = shown()
        assert (back["left"], back["right"]) == (judged[2]["left"], judged[2]["right"])
        fx.keys("s")
        saved(back)
        fx.screenshot(tmp_path / "firefox.png")
    finally:
        srv.stop()
    path = manifest.root / "preferences.jsonl"
    assert [r["type"] for _, r in read_records(path).records] == \
        ["header", "choice", "choice", "choice", "undo", "choice"]
    prefs = load_preferences(path)
    assert dict(prefs.examples) == {"0000": truth["0000"], "0001": truth["0001"]}
    assert (prefs.counts.skipped_pairs, prefs.counts.undone, prefs.counts.annotators) == \
        (1, 1, ("Fx",))
    from PIL import Image
    img = Image.open(tmp_path / "firefox.png")
    assert img.size == (WIDTH, HEIGHT)
    assert np.asarray(img.convert("L"), np.float32).std() > 20

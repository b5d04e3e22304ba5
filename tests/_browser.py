"""Debian's Chromium driven by selenium, and a scripted person who always picks the brighter edit.

Used by tests/test_annotate_browser.py; any test that needs a preferences file made
through the real page (e.g. training on it) can use :func:`scripted_person`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from _annotate_helpers import brightness_of_url

CHROMIUM = os.environ.get("ALIGNPROP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ALIGNPROP_CHROMEDRIVER", "/usr/bin/chromedriver")
# .ci/run sets this after installing the browser: there, a missing browser is a failure.
REQUIRE = os.environ.get("ALIGNPROP_REQUIRE_BROWSER", "") == "1"
# Flags Chromium needs on these machines (root, no GPU, no network but the registries).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")
WIDTH, HEIGHT = 1280, 800


def missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (f"no {path}: install Debian's {package} (apt-get install chromium "
                    f"chromium-driver; .ci/run does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements.txt)"
    return None


def need_browser() -> None:
    reason = missing()
    if reason:
        if REQUIRE:
            pytest.fail(f"ALIGNPROP_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"browser test skipped: {reason}")


def chromium(profile: Path | None = None):
    """A fresh headless Chromium (new empty profile) with a 1280x800 page area."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    opts.add_argument(f"--user-data-dir={profile or tempfile.mkdtemp(prefix='chromium-')}")
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    # Headless window sizes include no browser frame on some versions and do on others:
    # fix the page area itself so screenshots are always WIDTH x HEIGHT.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
                            "mobile": False})
    return driver


def quit_driver(driver, profile: str | None = None) -> None:
    try:
        driver.quit()
    finally:
        if profile:
            shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- page helpers

def wait(driver, condition, timeout: float = 30.0, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: condition(d), message)


# What the page shows now, read from the DOM as a person would see it (a JS expression,
# shared with the Firefox test).
PAGE_JS = """(() => {
    const b = document.body, q = (id) => document.getElementById(id);
    return {ready: b.dataset.ready, pair: b.dataset.pair,
            progress: q('progress-text').textContent, prompt: q('prompt').textContent,
            left: q('img-left').src, right: q('img-right').src, input: q('img-input').src,
            name_panel: !q('name-panel').hidden, done_panel: !q('done-panel').hidden,
            pair_panel: !q('pair-panel').hidden, status: q('status').textContent,
            undo_enabled: !q('undo').disabled};
})()"""


def page(driver) -> dict:
    return driver.execute_script("return " + PAGE_JS)


def wait_ready(driver) -> dict:
    wait(driver, lambda d: page(d)["ready"] == "1", message="page never became ready")
    return page(driver)


def done_count(p: dict) -> int:
    return int(p["progress"].split(" of ")[0])


def press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def click_edit(driver, side: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"button.pick[data-choice='{side}']").click()


def answer(driver, side_or_skip: str, use_click: bool = False) -> dict:
    """Choose on the page and wait until the page shows the choice saved."""
    before = wait_ready(driver)
    if use_click and side_or_skip in ("left", "right"):
        click_edit(driver, side_or_skip)
    else:
        press(driver, {"left": "1", "right": "2", "skip": "s"}[side_or_skip])
    # Saved = the page says so for this pair, and the count went up (by more than one when
    # another tab of the same person answered meanwhile).
    def saved(d):
        now = page(d)
        return (now["ready"] == "1" and now["status"].startswith("Saved")
                and f"pair {before['pair']}" in now["status"]
                and done_count(now) > done_count(before))

    try:
        wait(driver, saved)
    except Exception as exc:  # say what the page showed instead
        raise AssertionError(f"{side_or_skip} on pair {before['pair']} not saved; the page shows "
                             f"{page(driver)}") from exc
    return before


def brighter_side(p: dict) -> str:
    return "left" if brightness_of_url(p["left"]) > brightness_of_url(p["right"]) else "right"


def scripted_person(driver, limit: int | None = None, use_clicks: bool = False) -> list[dict]:
    """Judge pairs on the open page, always preferring the brighter edit (measured on the
    images the page shows), until the page says all are judged or ``limit`` is reached.
    Returns what was shown and chosen, per pair."""
    done = []
    while limit is None or len(done) < limit:
        p = wait_ready(driver)
        if p["done_panel"]:
            break
        side = brighter_side(p)
        answer(driver, side, use_click=use_clicks and len(done) % 2 == 1)
        done.append({**p, "chose": side})
    return done


def enter_name(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: page(d)["name_panel"], message="no name prompt")
    box = driver.find_element(By.ID, "name-input")
    box.clear()
    box.send_keys(name)
    driver.find_element(By.ID, "name-submit").click()
    wait_ready(driver)

"""What a person sees after a run, checked in a real browser: a finished (tiny) pipeline run, the
MLflow UI that `uft ui` starts on it, and Debian's headless Chromium (driven by selenium through
Debian's chromedriver; `make install-browser`) loading the parent run's page, its markdown report
and its HTML report. Fails on a broken image, raw markdown markers, a missing registry link or a
UI that opens without the model registry. A screenshot of every page is kept under pytest's tmp
directory (printed), never in the repository.

The MLflow UI is a single-page app: every check first waits for the rendered content. Its markdown
artifact viewer (mlflow/server/js ShowArtifactMarkdownView → GenAIMarkdownRenderer) draws images
only from URLs with a scheme (data:image/png passes its urlTransform; a relative ``x.png`` is shown
as the text ``[x](x.png)``), which is what the image checks below catch.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.test_local_pipeline import TINY, _write_imagefolder

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800)]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,2000", "--hide-scrollbars")
#: Markdown that a renderer would have consumed: seen as text, the page shows raw markup.
RAW_MARKERS = ("**", "![", "](", "|---", "| ---", ":---", "---:", "`")
WAIT_S = 60


@pytest.fixture(scope="module")
def finished_run(s3_server, tmp_path_factory):
    """A whole tiny pipeline run (kfp.local, SeaweedFS, MLflow on sqlite) → (LocalRun, env)."""
    from uft.config import validate_config
    from uft.orchestrate.local import run_local

    tmp = tmp_path_factory.mktemp("browser_run")
    env = {**s3_server.env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "UFT_MLFLOW_ARTIFACTS": "s3://browser-artifacts/mlflow", "UFT_STATE_DIR": str(tmp / "state")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="browser-artifacts")
    cfg = {**TINY, "target": _write_imagefolder(tmp / "target_images")}
    try:
        res = run_local(validate_config(cfg), store_uri="s3://browser-artifacts/uft", experiment="browser")
        yield res, env
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def ui(finished_run):
    """`uft ui` (the command `make ui` runs) on the finished run → the report URL it prints."""
    from uft.services import free_port

    _, env = finished_run
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uft.cli", "ui", "--port", str(port), "--experiment", "browser"],
                            env={**os.environ, **env, "COLUMNS": "400"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        printed = _read_until(proc, "latest run's report:", 120)
        url = re.search(r"latest run's report: (\S+)", printed).group(1)
        _wait_http(f"http://127.0.0.1:{port}/health", 300)
        yield url, port
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # `uft ui` stops its MLflow (its own session) on the way out
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _stop_ui_on(port)  # whatever a killed `uft ui` could not stop: only the server on this test's port


def _stop_ui_on(port: int) -> None:
    """SIGTERM, then SIGKILL, the MLflow UI processes listening on ``port`` (found by command line)."""
    from uft.services import kill_pid

    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mlflow" in b" ".join(args) and str(port).encode() in args and b"--port" in args:
            kill_pid(int(d.name))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium with a fresh profile, driven through Debian's chromedriver."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: run `make install-browser` (Debian's chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # a given driver: no download
    yield driver
    driver.quit()


#: Where the screenshots are kept (a test artifact, ignored by git): $UFT_TEST_ARTIFACTS, else
#: build/test-artifacts (pytest's own tmp dirs are pruned by the next sessions on a shared machine).
ARTIFACTS = Path(os.environ.get("UFT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts"))


@pytest.fixture(scope="module")
def shots() -> Path:
    d = ARTIFACTS / "browser"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    print(f"\nscreenshots: {d}")
    return d


def test_parent_run_page_links_the_registry_and_the_report(finished_run, ui, browser, shots):
    res, _ = finished_run
    url, port = ui
    assert f"/runs/{res.parent_run_id}/artifacts/report.md" in url  # the parent run: the one a person opens
    run_page = url.split("/artifacts/")[0] + "?workflowType=machine_learning"
    _open(browser, run_page)
    link = _wait(browser, lambda d: _first(d, "a[href*='#/models/']"), "the registered model version's link")
    href = link.get_attribute("href")
    text = _wait(browser, lambda d: d.find_element("tag name", "body").text, "the page text",
                 until=lambda t: "Decision:" in t and "linear 1-shot" in t)
    assert re.search(r"#/models/[^/]+/versions/\d+", href)
    assert _first(browser, "a[href*='/artifacts/report.md']") is not None
    assert not [m for m in RAW_MARKERS if m in _description_text(browser)], _description_text(browser)
    assert "Model registry" in text  # the classic workflow: the registry is in the sidebar
    _expand_description(browser)
    browser.save_screenshot(str(shots / "parent_run.png"))
    _open(browser, href)  # the version page opens: a real route, not a dead end
    _wait(browser, lambda d: d.find_element("tag name", "body").text, "the model version page",
          until=lambda t: re.search(r"Version \d+", t) is not None)
    browser.save_screenshot(str(shots / "model_version.png"))


def test_markdown_report_renders_with_images(ui, browser, shots):
    url, _ = ui
    _open(browser, url)
    heading = _wait(browser, lambda d: _first(d, "h1, h2"), "the report's headings",
                    until=lambda el: el is not None and "uft run report" in browser.find_element("tag name", "body").text)
    assert heading is not None
    images = _wait_images(browser, browser, minimum=4)
    browser.save_screenshot(str(shots / "report_md.png"))
    _full_page_shot(browser, shots / "report_md_full.png")
    body = browser.find_element("tag name", "body").text
    report = body[body.index("uft run report"):]
    assert not [m for m in RAW_MARKERS if m in report], "raw markdown in the rendered report"
    assert {"accuracy", "projection", "loss"} <= {i.get_attribute("alt") for i in images}


def test_html_report_renders_with_images(ui, browser, shots):
    url, _ = ui
    _open(browser, url.replace("report.md", "report.html"))
    frame = _wait(browser, lambda d: _first(d, "iframe"), "the HTML report's frame")
    browser.switch_to.frame(frame)
    try:
        _wait(browser, lambda d: d.find_element("tag name", "body").text, "the HTML report's text",
              until=lambda t: "uft run report" in t)
        images = _wait_images(browser, browser, minimum=4)
        text = browser.find_element("tag name", "body").text
        assert not [m for m in RAW_MARKERS if m in text], "raw markdown in the HTML report"
        # text columns left, number columns right (the "reading" sentences are not flush right)
        aligns = browser.execute_script(
            "return [...document.querySelectorAll('table')].map(t => [...t.rows[1].cells].map(c => getComputedStyle(c).textAlign))")
        assert any("left" in row and "right" in row for row in aligns), aligns
        assert len(images) >= 4
    finally:
        browser.switch_to.default_content()
    browser.save_screenshot(str(shots / "report_html.png"))


# --- helpers -------------------------------------------------------------------------------------

def _open(driver, url: str) -> None:
    """A fresh page load: the UI picks the artifact to show from the route only when it mounts, so
    a hash change within an open UI would keep the previous artifact."""
    driver.get("about:blank")
    driver.get(url)


def _first(driver, css: str):
    found = driver.find_elements("css selector", css)
    return found[0] if found else None


def _wait(driver, get, what: str, until=lambda v: bool(v), timeout: float = WAIT_S):
    """Poll ``get(driver)`` until ``until(value)``: the UI renders after its API calls return."""
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = get(driver)
        except Exception:
            value = None
        if until(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not render within {timeout:.0f} s (last: {str(value)[:300]!r})")


def _wait_images(driver, scope, minimum: int):
    """Every <img> loaded with a real size (a broken image has naturalWidth 0)."""
    def loaded(d):
        imgs = scope.find_elements("css selector", "img")
        states = [d.execute_script("return [arguments[0].complete, arguments[0].naturalWidth]", i) for i in imgs]
        return imgs if len(imgs) >= minimum and all(c and w > 0 for c, w in states) else None

    try:
        return _wait(driver, loaded, f"at least {minimum} loaded images")
    except AssertionError:
        imgs = scope.find_elements("css selector", "img")
        broken = [i.get_attribute("alt") or (i.get_attribute("src") or "")[:60] for i in imgs
                  if not driver.execute_script("return arguments[0].naturalWidth", i)]
        raise AssertionError(f"{len(imgs)} images, broken: {broken}") from None


def _expand_description(driver) -> None:
    """Click the description's "Show more" (MLflow folds long descriptions) when there is one."""
    for el in driver.find_elements("xpath", "//*[normalize-space(text())='Show more']"):
        try:
            el.click()
            time.sleep(0.5)
        except Exception:
            pass


def _description_text(driver) -> str:
    """The rendered run description (the part uft writes), from its decision line to its report link."""
    text = driver.find_element("tag name", "body").text
    start = text.find("Decision:")
    end = text.find("(this run's Artifacts tab)", start)
    return text[start:end] if start >= 0 and end > start else text


def _full_page_shot(driver, path: Path) -> None:
    """The artifact viewer scrolls inside the page: a tall window shows more of the report."""
    h = driver.execute_script("return Math.max(document.body.scrollHeight, 2000)")
    size = driver.get_window_size()
    driver.set_window_size(size["width"], min(int(h), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    import selectors

    out, deadline = "", time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline and marker not in out:
        if proc.poll() is not None and not sel.select(0):
            break
        if sel.select(1):
            line = proc.stdout.readline()
            out += line
    if marker not in out:
        raise AssertionError(f"`uft ui` did not print {marker!r} within {timeout:.0f} s:\n{out}")
    # keep draining its output so the UI never blocks on a full pipe
    import threading

    threading.Thread(target=lambda: shutil.copyfileobj(proc.stdout, open(os.devnull, "w")), daemon=True).start()
    return out


def _wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"MLflow UI did not answer on {url} within {timeout:.0f} s")

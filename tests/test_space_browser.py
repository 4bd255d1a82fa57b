"""The Gradio Space in a real browser: Playwright drives Debian's headless Chromium against space/app.py on 127.0.0.1.

Needs the `space` and `test` extras and /usr/bin/chromium (`.ci/run` installs all three)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "space"))
from app import EXAMPLES  # noqa: E402

NEW_TOKENS = 64
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def space_url():
    """The app as a user starts it: the default target and the shipped drafter (model_cards/, the Hub offline)."""
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1")
    env.pop("DSPARK_DRAFTER", None)
    log = open(ROOT / ".pytest-space.log", "w")  # noqa: SIM115 (closed below)
    app = subprocess.Popen([sys.executable, str(ROOT / "space" / "app.py")], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if app.poll() is not None or time.monotonic() > deadline:
                app.kill()
                log.close()
                pytest.fail(f"the Space did not start:\n{(ROOT / '.pytest-space.log').read_text()[-3000:]}")
            time.sleep(1)
    yield url
    app.terminate()
    app.wait(timeout=30)
    log.close()


def test_side_by_side_greedy_outputs_are_identical_in_the_browser(space_url, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(space_url)
        page.locator("#run").wait_for()

        page.locator("#run").click()  # empty prompt: a message, not a crash
        playwright.expect(page.locator("#summary")).to_contain_text("Enter a prompt", timeout=30_000)

        for category, title, _ in EXAMPLES:  # labelled buttons, not cut-off prompt texts
            playwright.expect(page.get_by_text(f"{category} · {title}")).to_be_visible()
        category, title, code_prompt = next(example for example in EXAMPLES if example[0] == "Code")
        page.get_by_text(f"{category} · {title}").click()
        playwright.expect(page.locator("#prompt textarea")).to_have_value(code_prompt)
        slider = page.locator("#max-new-tokens input[type=number]")
        slider.fill(str(NEW_TOKENS))
        slider.press("Enter")
        playwright.expect(slider).to_have_value(str(NEW_TOKENS))
        page.locator("#run").click()
        playwright.expect(page.locator("#summary")).to_contain_text("Speed-up", timeout=240_000)

        summary = page.locator("#summary").inner_text()
        assert "×" in summary and "tokens identical: yes" in summary and "untrained" not in summary, summary
        plain_pane, dspark_pane = page.locator("#plain-output .generated"), page.locator("#dspark-output .generated")
        plain, dspark = plain_pane.inner_text(), dspark_pane.inner_text()
        # the same text with the same layout: line breaks, indentation and words as the target wrote them
        assert plain.strip() and dspark == plain, (plain, dspark)
        assert plain_pane.bounding_box()["height"] == dspark_pane.bounding_box()["height"]
        # text the target accepted from drafts is marked inside it by its position in the round; the rest is plain
        marks = dspark_pane.locator("mark")
        sources = marks.evaluate_all("marks => marks.map(m => m.dataset.source)")
        assert sources and all(s == "lookup" or s.startswith("draft ") for s in sources), sources
        assert len("".join(marks.all_inner_texts())) < len(dspark)
        padding = marks.evaluate_all("marks => marks.map(m => getComputedStyle(m).paddingLeft)")
        assert set(padding) == {"0px"}  # marks add no space: a word split by a mark still reads as one
        playwright.expect(page.locator("#plot")).to_contain_text("Accepted drafts per round")
        # the committed picture (docs/space.png) is refreshed on purpose, by copying this one: the suite leaves the
        # checkout as it found it
        page.screenshot(path=str(tmp_path / "space.png"), full_page=True)
        assert (tmp_path / "space.png").stat().st_size > 10_000
        if os.environ.get("DSPARK_SCREENSHOT"):
            page.screenshot(path=os.environ["DSPARK_SCREENSHOT"], full_page=True)
        browser.close()

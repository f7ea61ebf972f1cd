"""The demo in a real browser: the app on the shipped shapes model, served on localhost and driven in Debian's Chromium
through Playwright. It draws a picture, asks about it, edits it (checking the pixels' colours with the shapes
checker), runs interleaved generation, and uploads a file that is not a picture. It writes docs/figures/demo.png.

Skipped only when /usr/bin/chromium is missing (`apt-get install chromium`; .ci/run installs it). gradio and
playwright are dev dependencies: their absence is a failure, not a skip.
"""

import io
import os
import socket
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio  # noqa: F401,E402  (a dev dependency: missing -> the test fails)
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from examples.shapes.checker import by_colour, detect  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "figures" / "demo.png"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # per wait; a run takes well under a second, but the machine may be busy

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no browser: {CHROMIUM} is missing (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    from diffusers_llada_uni.demo import build_app, launch, load_pipeline

    app = build_app(load_pipeline(), frame_delay=0.02)
    url = launch(app, host="127.0.0.1", port=_free_port(), block=False)
    try:
        yield url
    finally:
        app.close()


@pytest.fixture(scope="module")
def page(served, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS,
            viewport={"width": 1400, "height": 680})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(served)
            page.locator("#t2i-prompt textarea").wait_for()
            yield page
        finally:
            context.close()


def _done(page, status_id: str):
    """Wait for the run's summary line; an error message in the page instead fails with its text."""
    finished = page.locator(f"#{status_id}:has-text('done in'), .toast-body")
    try:
        finished.first.wait_for(timeout=TIMEOUT_MS)
    except PlaywrightTimeout:
        raise AssertionError(f"no result in #{status_id} after {TIMEOUT_MS / 1000:.0f} s; the page says: "
                             f"{' '.join(page.locator('body').inner_text().split())[-800:]}") from None
    errors = page.locator(".toast-body")
    assert errors.count() == 0, f"the page shows an error: {errors.first.inner_text()}"


def _picture(page, element_id: str) -> Image.Image:
    """The full-resolution picture an output field shows (fetched from the app, not a screenshot)."""
    source = page.locator(f"#{element_id} img").first.get_attribute("src")
    if source.startswith("data:"):
        import base64

        data = base64.b64decode(source.partition(",")[2])
    else:
        data = page.request.get(source).body()
    return Image.open(io.BytesIO(data)).convert("RGB")


def _tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def test_draw_ask_edit_interleave_and_refuse_a_bad_upload(page, tmp_path):
    started = time.perf_counter()

    # Text to image (the README's first prompt): a red circle on the left, a blue square at the top; the token canvas
    # and the summary show up.
    page.locator("#t2i-prompt textarea").fill("a red circle on the left and a blue square at the top")
    page.locator("#t2i-run").click()
    _done(page, "t2i-status")
    expect(page.locator("#t2i-status")).to_contain_text("LLM denoising step")
    drawn = by_colour(detect(_picture(page, "t2i-image")))
    assert "red" in drawn and drawn["red"].shape == "circle" and drawn["red"].position == "left", drawn
    assert "blue" in drawn and drawn["blue"].shape == "square" and drawn["blue"].position == "top", drawn
    expect(page.locator("#t2i-canvas img")).to_have_count(1)
    page.wait_for_function("() => ['#t2i-canvas img', '#t2i-image img'].every(s => { const i = "
                           "document.querySelector(s); return i && i.complete && i.naturalWidth > 0; })")
    page.wait_for_timeout(500)  # gradio fades a new picture in
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Understanding: the picture goes over with the button; the answer names the colour.
    page.locator("#t2i-to-ask").click()
    page.locator("#ask-question textarea").fill("What colour is the square?")
    page.locator("#ask-run").click()
    _done(page, "ask-status")
    expect(page.locator("#ask-answer textarea")).to_have_value("blue")

    # Editing: the circle turns green (no red left), the square stays blue.
    _tab(page, "Text to image")
    page.locator("#t2i-to-edit").click()
    page.locator("#edit-instruction textarea").fill("make the circle green")
    page.locator("#edit-run").click()
    _done(page, "edit-status")
    edited = by_colour(detect(_picture(page, "edit-image")))
    assert "green" in edited and "blue" in edited and "red" not in edited, edited

    # Interleaved: an ordered list of text / image segments (the shapes model is not trained for this mode, so the
    # structure is checked, not the content).
    _tab(page, "Interleaved")
    page.locator("#inter-prompt textarea").fill("a red circle on the left")
    page.locator("#inter-run").click()
    _done(page, "inter-status")
    container = page.locator("#inter-output .llada-segments")
    expect(container).to_have_count(1)
    count = int(container.get_attribute("data-count"))
    segments = page.locator("#inter-output .llada-segment")
    expect(segments).to_have_count(count)
    for index in range(count):
        item = segments.nth(index)
        assert item.get_attribute("data-index") == str(index)
        assert item.get_attribute("data-kind") in ("text", "image")

    # A text file named .png: a message in the page, naming the field.
    fake = tmp_path / "not-a-picture.png"
    fake.write_text("this is text, not a picture\n")
    _tab(page, "Understanding")
    page.locator("#ask-image-a input[type=file]").set_input_files(str(fake))
    page.locator("#ask-run").click()
    message = page.locator(".toast-body").filter(has_text="is not a picture this app can read")
    expect(message.first).to_be_visible()
    expect(message.first).to_contain_text("first picture")

    print(f"browser session: {time.perf_counter() - started:.1f} s")

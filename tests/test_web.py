"""The web page in a real browser: Playwright for Python driving Debian's headless Chromium."""

from __future__ import annotations

import shutil

import pytest
from conftest import API_KEY
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make test installs Debian's package)")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module: Playwright's sync API allows one running instance per thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page.goto(server + "/")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")  # the page reloads the model list with the key
    page.wait_for_function("document.querySelectorAll('#model option').length === 3")
    yield page
    page.close()


def test_typed_prompt_streams_text_into_the_page(page, tmp_path):
    page.select_option("#model", "text")
    page.fill("#prompt", "明月")
    page.fill("#max_tokens", "60")
    page.fill("#seed", "4")
    # record every length the output takes while the answer arrives
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => window.lengths.push(document.getElementById('output').textContent.length))
            .observe(document.getElementById('output'), {childList: true, characterData: true, subtree: true});
    }""")
    page.click("#generate")
    page.wait_for_function("document.getElementById('text-stats').textContent.includes('tokens in')", timeout=60_000)
    output = page.text_content("#output")
    lengths = page.evaluate("window.lengths")
    assert output.startswith("明月") and len(output) > len("明月")
    assert len(set(lengths)) >= 3, f"the text arrived in {len(set(lengths))} updates, expected a stream"
    assert page.text_content("#status") == ""
    page.screenshot(path=str(tmp_path / "text.png"))


def test_a_poem_form_writes_a_poem_that_keeps_the_rules(browser, tmp_path):
    from conftest import start_server

    from aigc.data.poetry import check

    proc, url = start_server({"tang-base": "tang-base"})
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 1")
        assert page.is_visible("#poem-row")  # a character model of poems offers the forms
        page.select_option("#poem-form", "五言绝句")
        assert page.text_content("#prompt-label").startswith("Theme")
        page.fill("#prompt", "明月")
        page.fill("#acrostic", "明月")
        page.fill("#seed", "2")
        page.click("#generate")
        page.wait_for_function("document.getElementById('text-stats').textContent.includes('checker:')",
                               timeout=60_000)
        poem = page.text_content("#output")
        assert poem.startswith("明月\n") and check(poem, "五绝").ok, poem
        assert poem.split("\n")[1].startswith("明") and "keeps the rules" in page.text_content("#text-stats")
        page.screenshot(path=str(tmp_path / "poem.png"))
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_chat_model_keeps_the_conversation(page):
    page.select_option("#model", "chat")
    assert page.is_visible("#system") and page.is_visible("#clear")
    page.fill("#prompt", "春风")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#history .turn').length >= 1 && "
                           "!document.getElementById('generate').disabled", timeout=60_000)
    turns = page.locator("#history .turn")
    assert turns.nth(0).text_content() == "春风"
    page.click("#clear")
    assert page.locator("#history .turn").count() == 0


def test_image_model_shows_a_grid_and_downloads_it(page, tmp_path):
    page.select_option("#model", "images")
    assert page.is_visible("#image-panel") and not page.is_visible("#text-panel")
    page.select_option("#class", "Trouser")
    page.fill("#n-images", "12")
    page.select_option("#size", "56x56")
    page.click("#img-generate")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 12", timeout=60_000)
    widths = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths == [56] * 12
    assert set(page.eval_on_selector_all("#grid figcaption", "c => c.map(x => x.textContent)")) == {"Trouser"}
    with page.expect_download() as info:
        page.click("#download")
    path = tmp_path / "grid.png"
    info.value.save_as(path)
    grid = Image.open(path)
    assert grid.size == (10 * 58 + 2, 2 * 58 + 2)  # 10 per row, 2 px gaps, two rows
    page.select_option("#class", "")
    page.fill("#n-images", "500")
    page.click("#img-generate")
    page.wait_for_function("document.getElementById('status').textContent.includes('error')")
    assert "n = 500: expected 1 to 64" in page.text_content("#status")


@pytest.fixture(scope="module")
def t2i_page(tmp_path_factory, browser):
    """A page on a server of its own holding one tiny, randomly initialised text-to-image model."""
    import torch

    from aigc.data.captions import caption_tokenizer
    from aigc.formats.model_folder import save_model_folder
    from aigc.models.ddpm import DDPM, DDPMConfig
    from conftest import start_server

    folder = tmp_path_factory.mktemp("t2i") / "t2i"
    tok = caption_tokenizer(["a red dress", "红色的连衣裙"])
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(image_size=8, channels=3, base_channels=8, channel_mults=[1, 2], blocks_per_level=1,
                            heads=2, groups=4, timesteps=20, conditioning="text", vocab_size=tok.vocab_size,
                            text_len=16, text_width=16, text_layers=1))
    save_model_folder(folder, model, tok, {"n": 4, "nrow": 4, "sampler": "ddim", "steps": 5, "guidance_scale": 3.0,
                                           "eta": 0.0, "spacing": "trailing"})
    proc, url = start_server({"t2i": folder})
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 1")
        yield page
    finally:
        page.close()
        proc.terminate()
        proc.wait(timeout=20)


def test_a_text_to_image_model_takes_a_prompt_and_shows_progress(t2i_page):
    page = t2i_page
    assert page.is_visible("#img-prompt") and not page.is_visible("#class")
    assert page.input_value("#img-steps") == "5" and page.input_value("#img-guidance") == "3"
    page.evaluate("""() => {
        window.progress = [];
        new MutationObserver(() => window.progress.push(document.getElementById('status').textContent))
            .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
    }""")
    page.fill("#img-prompt", "红色的连衣裙")
    page.fill("#n-images", "3")
    page.click("#img-generate")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 3", timeout=60_000)
    captions = page.eval_on_selector_all("#grid figcaption", "c => c.map(x => x.textContent)")
    assert captions == ["红色的连衣裙"] * 3
    assert "denoising: step 5 of 5" in page.evaluate("window.progress")
    assert page.text_content("#status") == "" and not page.is_visible("#img-progress")
    page.fill("#img-prompt", "a red ☃")  # a character the model never read: the server's message
    page.click("#img-generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('error')", timeout=30_000)
    assert "U+2603" in page.text_content("#status")


def test_the_api_docs_work_without_internet(server, browser):
    """/docs draws the API from files the server holds: every request off this server is refused."""
    from urllib.parse import urlparse

    page = browser.new_page()
    outside = []

    def only_here(route):
        if urlparse(route.request.url).netloc == urlparse(server).netloc or route.request.url.startswith("data:"):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", only_here)
    try:
        page.goto(server + "/docs")
        page.wait_for_selector("[data-path=\"/v1/chat/completions\"]", timeout=30_000)
        assert outside == [] and "aigc" in page.title()
    finally:
        page.close()


def test_the_browser_draws_chinese_characters_not_boxes(page):
    """make chromium installs a CJK font: 秋 and 落 are drawn as two different glyphs, not one empty box."""
    drawn = page.evaluate("""() => {
        const draw = ch => {
            const canvas = document.createElement('canvas');
            canvas.width = canvas.height = 32;
            const ctx = canvas.getContext('2d');
            ctx.font = '24px sans-serif';
            ctx.fillText(ch, 2, 26);
            return Array.from(ctx.getImageData(0, 0, 32, 32).data).join(',');
        };
        return [draw('秋'), draw('落'), draw('\\ue000')];
    }""")
    autumn, fall, private_use = drawn
    assert autumn != fall and autumn != private_use and fall != private_use

"""Screenshots of the web page (docs/web-text.png, docs/web-images.png) with real trained models.

Starts `aigc serve` on a loopback port with a text run and an image run, drives
Debian's Chromium through Playwright (type a prompt, stream a poem; generate a
grid of every class), and saves the two screenshots.

    .venv/bin/python scripts/web_screenshot.py runs/bench-gpt-30min runs/bench-dcgan-60cpumin
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from aigc.serve.process import start_server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text_run")
    ap.add_argument("image_run")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--prompt", default="明月")
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no chromium: sudo apt-get install chromium")
    server, url = start_server([f"tang-poems-gpt={args.text_run}", f"fashion-dcgan={args.image_run}"],
                               "--log-level", "warning")
    out = Path(args.out)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1000, "height": 760}, device_scale_factor=1)
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 2")
            page.select_option("#model", "tang-poems-gpt")
            page.fill("#prompt", args.prompt)
            page.fill("#seed", "3")
            page.click("#generate")
            page.wait_for_function("document.getElementById('text-stats').textContent.includes('tokens in')",
                                   timeout=120_000)
            page.screenshot(path=str(out / "web-text.png"))
            page.select_option("#model", "fashion-dcgan")
            page.fill("#n-images", "40")
            page.select_option("#size", "84x84")
            page.fill("#img-seed", "0")
            page.click("#img-generate")
            page.wait_for_function("document.querySelectorAll('#grid img').length === 40", timeout=120_000)
            page.wait_for_timeout(300)
            page.screenshot(path=str(out / "web-images.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {out / 'web-text.png'} and {out / 'web-images.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The README's screenshot of the playground: WORKER_MODE=http on the tiny model (tests/support), one
synthesis played in headless Chromium (tests/support/browser.py), the page saved as a PNG.

    .venv/bin/python -m tools.playground_screenshot docs/playground.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import chromium
from tests.support.tiny_models import build_tiny_cache, tiny_cache_env
from tests.support.worker_process import HttpWorkerProcess

TEXT = ("Hello! This voice was cloned by F5-TTS, and you are hearing it while the rest is still being made. "
        "Every sentence after the first arrives as its own chunk of audio, streamed over HTTP as it is synthesized.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        build_tiny_cache(home / "hub")
        (home / "tmp").mkdir()
        worker = HttpWorkerProcess(tiny_cache_env(home), home / "tmp", home / "worker.log")
        browser = chromium()
        try:
            worker.wait_ready()
            browser.get(f"{worker.url}/")
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#voices option"))
            for element_id, value in (("text", TEXT), ("nfe-step", "8"), ("seed", "42")):
                field = browser.find_element(By.ID, element_id)
                field.clear()
                field.send_keys(value)
            browser.find_element(By.ID, "speak").click()
            WebDriverWait(browser, 600).until(
                lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            WebDriverWait(browser, 30).until(lambda b: b.execute_script(
                "return document.getElementById('player').readyState"))
            args.output.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.output))
            print(f"wrote {args.output}: {browser.find_element(By.ID, 'status').text}")
        finally:
            browser.quit()
            worker.stop()


if __name__ == "__main__":
    main()

"""Chromium from the system's packages (``chromium`` and ``chromedriver``, which setup.sh installs), headless,
driven by Selenium: the playground's browser test and ``tools/playground_screenshot.py``."""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

WINDOW = (960, 1080)


def chromium() -> webdriver.Chrome:
    """A headless Chromium that may start audio without a user's gesture (no sound card needed)."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise RuntimeError("chromium and chromedriver are missing: run setup.sh, which installs them")
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--autoplay-policy=no-user-gesture-required", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))

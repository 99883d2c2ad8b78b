"""The playground page at ``/`` in a real headless browser (Chromium from the system's packages, driven by
Selenium) against WORKER_MODE=http as a real process on the tiny model, with HTTP_API_KEY set."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import chromium
from tests.support.tiny_models import TINY_ENV
from tests.support.worker_process import HttpWorkerProcess

pytestmark = pytest.mark.process

KEY = "sk-playground-test"
TEXT = " ".join(f"Sentence number {i} is here." for i in range(12))  # several chunks (numbers written out)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[HttpWorkerProcess]:
    tmp = tmp_path_factory.mktemp("playground")
    (tmp / "tmp").mkdir()
    worker = HttpWorkerProcess({**TINY_ENV, "HTTP_API_KEY": KEY}, tmp / "tmp", tmp / "worker.log")
    worker.wait_ready()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: WebDriver, server: HttpWorkerProcess) -> WebDriver:
    """The page, loaded, with the API key entered (the voices then load)."""
    browser.get(f"{server.url}/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#voices option"))
    return browser


def fill(page: WebDriver, element_id: str, value: str) -> None:
    field = page.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def speak(page: WebDriver) -> str:
    """Click Speak and wait for the page to finish; its state, ``done`` or ``error``."""
    page.find_element(By.ID, "speak").click()
    WebDriverWait(page, 600).until(lambda p: p.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                   in ("done", "error"))
    return page.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def test_the_page_loads_asks_for_the_key_and_lists_the_voices(browser, server):
    browser.get(f"{server.url}/")
    assert browser.title == "F5-TTS playground"
    WebDriverWait(browser, 30).until(lambda b: "Voices:" in b.find_element(By.ID, "status").text)
    assert "missing or wrong API key" in browser.find_element(By.ID, "status").text  # the key is needed
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#voices option"))
    assert [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#voices option")] == ["default"]
    assert browser.find_element(By.ID, "status").text == "1 voice available."
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
                and "v1/audio/voices" not in entry["message"]]  # nothing failed but the keyless listing


def test_a_synthesis_plays_as_it_streams_and_is_offered_as_the_file(page, server, tmp_path):
    fill(page, "text", TEXT)
    fill(page, "nfe-step", "4")
    fill(page, "seed", "3")
    assert speak(page) == "done", page.find_element(By.ID, "error").text
    WebDriverWait(page, 30).until(lambda p: p.execute_script("return document.getElementById('player').readyState"))
    played = page.execute_script("""const p = window.playground;
        return {pieces: p.pieces, samples: p.samples, first: p.firstAudioAt, done: p.doneAt,
                state: p.context.state, clock: p.context.currentTime, scheduled: p.nextTime,
                duration: document.getElementById('player').duration, seed: p.seed};""")
    assert played["pieces"] >= 2 and played["first"] < played["done"]  # playing began before the stream ended
    assert played["state"] == "running" and played["clock"] > 0 and played["scheduled"] > 0  # the audio clock ran
    assert played["duration"] == pytest.approx(played["samples"] / 24_000, abs=0.01) and played["seed"] == "3"
    assert "seed 3" in page.find_element(By.ID, "status").text
    assert page.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
    wav = base64.b64decode(page.execute_async_script("""const done = arguments[arguments.length - 1];
        fetch(document.getElementById('player').src).then((r) => r.blob()).then((blob) => {
          const reader = new FileReader(); reader.onload = () => done(reader.result.split(',')[1]);
          reader.readAsDataURL(blob); });"""))
    pcm = requests.post(f"{server.url}/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"},
                        json={"model": "f5-tts", "input": TEXT, "voice": "default", "response_format": "pcm",
                              "nfe_step": 4, "seed": 3, "speed": 1}).content
    assert wav[:4] == b"RIFF" and wav[44:] == pcm  # the downloadable file is the audio that played
    page.save_screenshot(str(tmp_path / "playground.png"))


def test_an_unknown_voice_is_shown_to_the_user(page):
    fill(page, "voice", "nobody")
    fill(page, "text", "Hello.")
    assert speak(page) == "error"
    error = page.find_element(By.ID, "error")
    assert error.is_displayed() and error.text == "voice 'nobody' needs a bucket, and BUCKET_NAME is not set"
    assert not page.find_element(By.ID, "result").is_displayed()

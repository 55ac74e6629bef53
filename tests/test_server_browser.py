"""The web page in headless Chromium: record from a (fake) microphone fed with a real dev
utterance, register the speaker through the page, recognise them, and see them listed; and diarize a
meeting recording picked as a file and see its timeline.
Skips when Chromium, chromedriver or selenium is missing (scripts/test.sh installs them under CI)."""
import shutil

import numpy as np
import pytest
import soundfile as sf

from predict_helpers import dev_files, make_model_dir
from server_helpers import ServerProcess

pytestmark = pytest.mark.integration

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
KEY = "browser-test-key"
RECORD_SECONDS = 2
TIMEOUT = 30


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    # The fake microphone plays a real utterance (as 16-bit WAV, what Chromium reads), looped.
    wav, rate = sf.read(dev_files(1)[0], dtype="float32")
    speech = tmp_path / "speech.wav"
    sf.write(speech, np.tile(wav, 3), rate, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={speech}",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, element_id, words):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shows(d):
        text = d.find_element(By.ID, element_id).text
        return text if any(word in text for word in words) else False

    return WebDriverWait(driver, TIMEOUT).until(shows, message=f"#{element_id} never showed any of {words}")


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.browser
def test_register_and_recognise_from_the_microphone(browser, tmp_path):
    from selenium.webdriver.common.by import By

    model_dir = make_model_dir(tmp_path / "model")
    with ServerProcess(["--model_dir", model_dir, "--audio_db_path", tmp_path / "db"],
                       tmp_path / "server.log", api_key=KEY) as server:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        seconds = browser.find_element(By.ID, "seconds")
        seconds.clear()
        seconds.send_keys(str(RECORD_SECONDS))

        def record():
            browser.find_element(By.ID, "record").click()
            status = wait_for_text(browser, "recording-status", ["Recorded", "Cannot record"])
            assert status.startswith("Recorded"), status
            return status

        status = record()
        assert "audio/webm" in status or "audio/ogg" in status  # a compressed MediaRecorder upload
        browser.find_element(By.ID, "name").send_keys("Alice")
        browser.find_element(By.ID, "register").click()
        result = wait_for_text(browser, "result", ["Registered:", "Not registered"])
        assert result.startswith("Registered: Alice"), result + "\n" + server.log()
        wait_for_text(browser, "users", ["Alice"])

        record()
        browser.find_element(By.ID, "recognize").click()
        result = wait_for_text(browser, "result", ["Recognised:", "Not recognised", "failed"])
        assert result.startswith("Recognised: Alice"), result
        assert "threshold 0.5000" in result
        assert browser.execute_script("return sessionStorage.getItem('mvector-api-key')") == KEY

        screenshot = tmp_path / "server_page.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0
        print(f"screenshot: {screenshot}")


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.browser
def test_diarize_a_meeting_file_and_see_its_timeline(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from predict_helpers import DATA

    meeting = DATA / "diarization" / "ami" / "dev00.flac"
    with ServerProcess(["--audio_db_path", tmp_path / "db"], tmp_path / "server.log") as server:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "file").send_keys(str(meeting))
        wait_for_text(browser, "recording-status", ["Using dev00.flac"])
        browser.find_element(By.ID, "diarize").click()
        status = wait_for_text(browser, "diarize-status", ["speaker(s)", "failed", "No speech"])
        assert "segment(s)" in status, status + "\n" + server.log()
        speakers = int(status.split()[0])
        rows = browser.find_elements(By.CSS_SELECTOR, "#timeline .timeline-row")
        assert len(rows) == speakers >= 1
        assert rows[0].find_element(By.CLASS_NAME, "timeline-name").text == "speaker-1"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline .timeline-bar")) == int(status.split()[2])
        screenshot = tmp_path / "diarize_page.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0
        print(f"screenshot: {screenshot}")

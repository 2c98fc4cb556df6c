"""`stream-r1 serve` end to end in a real headless browser: the system's Chromium (Debian's
``chromium`` + ``chromium-driver``, installed by .ci/run), driven with Selenium, nothing
downloaded. Types a prompt, sees frames arrive, switches the prompt mid-stream, checks the
figures, refuses an out-of-vocabulary prompt on the page, and takes a screenshot that must
not be blank."""

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(f"no system Chromium ({CHROMIUM}) / chromedriver ({CHROMEDRIVER}): "
                "apt-get install chromium chromium-driver (.ci/run does)", allow_module_level=True)
pytest.importorskip("selenium")

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from stream_r1_fast.serve.app import create_app  # noqa: E402
from stream_r1_fast.serve.backend import toy_backend  # noqa: E402
from stream_r1_fast.serve.local import LocalServer  # noqa: E402

A = "a large red circle moving right slow on a black background"
B = "a large yellow square moving down fast on a purple gradient background"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    profile = tempfile.mkdtemp(prefix="stream-r1-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver, cond, what, timeout=30):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d), message=what)


def text(driver, id_):
    return driver.find_element(By.ID, id_).text


def test_type_prompt_watch_switch_screenshot(browser, tmp_path):
    app = create_app(toy_backend(), max_streams=2, fps=16)  # paced to real time, as served
    with LocalServer(app) as srv:
        d = browser
        d.get(srv.url + "/")
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "1", "the page's hello")
        assert "toy world" in text(d, "model")
        assert "OBJECT" in text(d, "help")  # the grammar and examples are on the page
        box = d.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys(A)
        d.find_element(By.ID, "start").click()
        wait(d, lambda d: int(text(d, "frames-shown")) >= 10, "frames on screen")
        assert text(d, "cur-prompt") == A
        assert text(d, "ttff").endswith(" ms") and text(d, "seed-used") == "0"
        # switch mid-stream: typing a new prompt and Enter while streaming switches
        box.clear()
        box.send_keys(B + Keys.ENTER)
        wait(d, lambda d: text(d, "cur-prompt") == B, "the switched prompt on screen")
        switched = d.find_elements(By.CSS_SELECTOR, "#log li.switched")
        assert len(switched) == 1 and B in switched[0].text and "switched here" in switched[0].text
        k = int(switched[0].get_attribute("data-index"))
        assert k >= 1
        log = {int(li.get_attribute("data-index")): li.get_attribute("data-prompt")
               for li in d.find_elements(By.CSS_SELECTOR, "#log li")}
        assert all(p == (A if i < k else B) for i, p in log.items()), log
        wait(d, lambda d: text(d, "fps").endswith(" fps"), "sustained FPS figure")
        wait(d, lambda d: int(text(d, "chunk")) > k + 1, "a later chunk on screen")
        assert text(d, "status") == f"streaming: the new prompt took effect at chunk {k}"
        if os.environ.get("STREAM_R1_SCREENSHOT"):  # docs/serve.png is taken this way
            Path(os.environ["STREAM_R1_SCREENSHOT"]).write_bytes(d.get_screenshot_as_png())
        # an out-of-vocabulary prompt: a clear message on the page, the stream goes on
        box.clear()
        box.send_keys("a large red dragon moving right slow on a black background" + Keys.ENTER)
        wait(d, lambda d: "unknown shape 'dragon'" in text(d, "error"), "the refusal on the page")
        shown = int(text(d, "frames-shown"))
        wait(d, lambda d: int(text(d, "frames-shown")) > shown + 5, "the stream still playing")
        assert text(d, "cur-prompt") == B

        video = Image.open(io.BytesIO(d.find_element(By.ID, "video").screenshot_as_png)).convert("RGB")
        page_png = d.get_screenshot_as_png()
        (tmp_path / "serve.png").write_bytes(page_png)

        # pause holds the picture, resume goes on, stop ends
        d.find_element(By.ID, "pause").click()
        wait(d, lambda d: text(d, "status") == "paused", "paused")
        held = int(text(d, "frames-shown"))
        time.sleep(0.5)
        assert int(text(d, "frames-shown")) == held
        d.find_element(By.ID, "pause").click()
        wait(d, lambda d: int(text(d, "frames-shown")) > held, "resumed")
        d.find_element(By.ID, "stop").click()
        wait(d, lambda d: text(d, "status").startswith("stopped"), "stopped")
    # the screenshot of the video is not blank: a 32x32 frame upscaled, with a coloured shape on it
    v = np.asarray(video).astype(np.float32)
    assert v.shape[0] >= 300 and v.shape[1] >= 300
    assert v.std() > 20, v.std()
    colours = {tuple(c) for c in (v[::8, ::8] // 32).reshape(-1, 3).astype(int)}
    assert len(colours) >= 3
    page = np.asarray(Image.open(io.BytesIO(page_png)).convert("RGB")).astype(np.float32)
    assert page.std() > 10

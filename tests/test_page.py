"""End to end: uvicorn on a free localhost port, the page driven in headless Chromium (selenium), checked against
the API. Skipped when selenium, chromium or chromedriver is missing; .ci/run installs them."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from facerec.inference.load import load  # noqa: E402
from facerec.serve.app import create_app  # noqa: E402
from test_export import make_tiny_checkpoint, photos  # noqa: E402
from test_serve import FakeGallery  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A real uvicorn server in a thread, on a port the OS picked (bound before the thread starts: no race)."""
    tmp = tmp_path_factory.mktemp("page")
    model = load(make_tiny_checkpoint(tmp / "best.pt", image_size=32))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(model, gallery=FakeGallery()), log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(200):
        if srv.started:
            break
        threading.Event().wait(0.05)
    assert srv.started, "uvicorn did not start"
    yield url
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def browser(tmp_path: Path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--disable-extensions",
        "--window-size=1000,1200",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_compares_two_photos_like_the_api(server, browser, tmp_path):
    files = photos(tmp_path / "img", 2, size=64)
    api = httpx.post(
        f"{server}/api/verify",
        timeout=30,
        files={
            "image_a": ("a.jpg", files[0].read_bytes(), "image/jpeg"),
            "image_b": ("b.jpg", files[1].read_bytes(), "image/jpeg"),
        },
    ).json()

    browser.get(server + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "tiny_cnn" in d.find_element(By.ID, "model-info").text)
    assert "photos resized whole, not aligned (--no-align)" in browser.find_element(By.ID, "model-info").text
    browser.find_element(By.ID, "file-a").send_keys(str(files[0].resolve()))
    browser.find_element(By.ID, "file-b").send_keys(str(files[1].resolve()))
    browser.find_element(By.ID, "compare").click()
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed() or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "score").text == f"{api['score']:.4f}"
    decision = browser.find_element(By.ID, "decision").text
    assert decision == ("same person" if api["same"] else "different people")
    widths = browser.execute_script(
        "return [document.getElementById('crop-a').naturalWidth, document.getElementById('crop-b').naturalWidth]"
    )
    assert widths == [32, 32]  # the 32x32 crops the model saw, rendered from the base64 PNGs
    if os.environ.get("FACEREC_SCREENSHOT"):
        browser.save_screenshot(os.environ["FACEREC_SCREENSHOT"])


def test_page_shows_the_api_error_for_a_non_image(server, browser, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture" * 10)
    good = photos(tmp_path / "img", 1)[0]
    browser.get(server + "/")
    browser.find_element(By.ID, "file-a").send_keys(str(bad.resolve()))
    browser.find_element(By.ID, "file-b").send_keys(str(good.resolve()))
    browser.find_element(By.ID, "compare").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text.startswith("400: image_a")
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_page_enrolls_identifies_and_deletes(server, browser, tmp_path):
    files = photos(tmp_path / "img", 2, size=64, seed=5)
    browser.get(server + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "gallery-section").is_displayed())
    browser.find_element(By.ID, "identity").send_keys("ann")
    browser.find_element(By.ID, "file-e").send_keys(str(files[0].resolve()))
    browser.find_element(By.ID, "enroll").click()
    wait.until(lambda d: "ann: 1 added" in d.find_element(By.ID, "enroll-status").text)
    browser.find_element(By.ID, "file-q").send_keys(str(files[0].resolve()))
    browser.find_element(By.ID, "identify").click()
    wait.until(lambda d: "best guess" in d.find_element(By.ID, "matches").text)
    assert browser.find_element(By.ID, "matches").text.splitlines()[:2] == ["best guess: ann", "ann 1.0000"]
    browser.find_element(By.CSS_SELECTOR, "#identities li button").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#identities li"))
    assert httpx.get(f"{server}/api/identities").json() == {"identities": []}

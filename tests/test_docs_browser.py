"""/docs in a real browser: headless Chromium (Debian's chromium and chromium-driver)
renders the Swagger UI page from trimail's own assets, offline."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .serving import Service, start

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extras")
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no headless browser: install Debian's chromium and chromium-driver (.ci/run does)",
)
#: Seconds the page may take to load and render (Swagger UI is 1.5 MB of JavaScript).
RENDER_SECONDS = 60


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,2000"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_docs_render_the_send_operation_with_its_fields_and_an_example(
    services: list[Service], tmp_path: Path, browser: Any
) -> None:
    url = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0",
                "--smtp-check", "false").wait_ready()  # fmt: skip
    browser.get(f"{url}/docs")
    wait = WebDriverWait(browser, RENDER_SECONDS)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.get_attribute("data-path") for e in
             browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}  # fmt: skip
    assert {"/email/send", "/email/batch", "/email/{job_id}", "/healthz"} <= paths

    send = browser.find_element(By.CSS_SELECTOR, "[id$='-send_email']")
    send.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda d: "Idempotency-Key" in send.text and "Request body" in send.text)
    example = wait.until(lambda d: send.find_element(By.CSS_SELECTOR, ".body-param__example"))
    assert '"subject"' in example.text
    assert '"to"' in example.text
    send.find_element(By.CSS_SELECTOR, '[data-name="model"]').click()  # the Schema tab
    wait.until(lambda d: "attachments" in send.find_element(By.CSS_SELECTOR, ".model-box").text)
    schema = send.find_element(By.CSS_SELECTOR, ".model-box").text
    for field in ("from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers"):
        assert field in schema
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded
    assert all(name.startswith(url) for name in loaded)  # nothing from elsewhere

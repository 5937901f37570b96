"""The dashboard in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, which .ci/run installs): what a person on call does.

With PGDURABLE_SCREENSHOTS=docs/images the pages are saved there (the
docs show them); PGDURABLE_REQUIRE_BROWSER=1 (set by .ci/run) fails
instead of skipping where Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import receipt_story, wait_until

from pgdurable import Durable
from pgdurable.dashboard import create_app

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("PGDURABLE_REQUIRE_BROWSER"):
        raise RuntimeError("chromium and chromedriver are needed: apt-get install chromium "
                           "chromium-driver")
    pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def served(app: Durable) -> Iterator[str]:
    """The dashboard (actions on) of the receipt story's app, served on a
    free local port; its base URL."""
    receipt_story(app)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(app, allow_actions=True), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "the dashboard to listen")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                     "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def shot(browser: webdriver.Chrome, name: str) -> None:
    folder = os.environ.get("PGDURABLE_SCREENSHOTS")
    if folder:
        browser.save_screenshot(str(Path(folder) / f"dashboard-{name}.png"))


def until(browser: webdriver.Chrome, condition: Any, timeout: float = 20) -> Any:
    """Poll `condition`; an element it read may go stale as the page
    refreshes itself (a running run's page does): that poll just failed."""
    return WebDriverWait(browser, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException]).until(condition)


def test_on_call_in_a_real_browser(served: str, browser: webdriver.Chrome) -> None:
    browser.get(served + "/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert "no total in the text" in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, "overview")

    for page, heading in (("functions", "Functions"), ("workers", "Workers")):
        browser.get(f"{served}/{page}")
        assert browser.find_element(By.TAG_NAME, "h1").text == heading
        assert "receipt" in browser.find_element(By.TAG_NAME, "main").text
        shot(browser, page)

    # filter the runs: only the failed one is left
    browser.get(served + "/runs")
    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("failed")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    until(browser, lambda b: "status=failed" in b.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
    assert len(rows) == 1 and "failed" in rows[0].text
    shot(browser, "runs")

    # open the failed run and read its story
    rows[0].find_element(By.CSS_SELECTOR, "td.id a").click()
    until(browser, lambda b: "/runs/" in b.current_url)
    story = browser.find_element(By.CSS_SELECTOR, "p.story").text
    assert "failed at step total" in story
    failed_step = browser.find_element(By.CSS_SELECTOR, "details.step.failed")
    assert failed_step.get_attribute("open") is not None  # opened for the reader
    assert "ValueError: no total in the text" in failed_step.text
    shot(browser, "run")
    failed_url = browser.current_url
    browser.find_element(By.CSS_SELECTOR, "dl.facts a").click()  # its event
    until(browser, lambda b: "/events/" in b.current_url)
    assert "b.png" in browser.find_element(By.CSS_SELECTOR, "pre.json").text
    shot(browser, "event")
    browser.get(failed_url)

    # fork it from the failed step, with data that mends it
    Select(browser.find_element(By.NAME, "from_step")).select_by_visible_text("total")
    browser.find_element(By.NAME, "data").send_keys('{"key": "b.png", "broken": true, "fixed": true}')
    browser.find_element(By.CSS_SELECTOR, "form.fork button").click()
    until(browser, lambda b: b.current_url.split("?")[0] != failed_url)
    assert "forked from" in browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    until(browser, lambda b: "completed" in b.find_element(By.CSS_SELECTOR, "h1 .status").text)
    shot(browser, "fork")

    # cancel the sleeping run (accepting the confirmation) and see it change
    browser.get(served + "/runs?status=sleeping")
    browser.find_element(By.CSS_SELECTOR, "table.runs td.id a").click()
    until(browser, lambda b: "sleeping" in b.find_element(By.CSS_SELECTOR, "h1 .status").text)
    assert "nap" in browser.find_element(By.CSS_SELECTOR, ".waterfall").text
    browser.find_element(By.CSS_SELECTOR, "button.danger").click()
    until(browser, lambda b: b.switch_to.alert).accept()
    until(browser, lambda b: "cancelled" in b.find_element(By.CSS_SELECTOR, "h1 .status").text)
    assert "cancel requested" in browser.find_element(By.CSS_SELECTOR, ".notice").text

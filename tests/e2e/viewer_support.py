"""Shared pieces of the viewer's browser tests (this module holds no tests).

A viewer session is one stack (tests/e2e/test_api_support.py: a fresh database, a topic and a
`course-audit run` process) with the events below stored through Kafka, a token, and one
headless chromium (Debian's, through its chromedriver) driven by Selenium. Every wait polls
(WebDriverWait) with a deadline; screenshots go to test-artifacts/.

The browser runs in America/Denver, so the times it shows (the browser's zone) differ from the
API's (UTC); the expected ones are computed here with zoneinfo.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from test_api_support import (
    Stack,
    make_event,
    produce,
    recent,
    stack,
    wait_stored,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOC_SCREENSHOT = ROOT / "docs" / "images" / "viewer.png"
ZONE_NAME = "America/Denver"
ZONE = ZoneInfo(ZONE_NAME)
WAIT_S = 30
LAPTOP = (1280, 900)
PHONE = (390, 844)
# Canvas's course event types, written out here (docs/messages.md#event-types).
CANVAS_TYPES = [
    "created", "updated", "concluded", "unconcluded", "published", "unpublished", "claimed",
    "deleted", "restored", "copied_from", "copied_to", "reset_from", "reset_to",
]  # fmt: skip

ADA = {"id": 7001, "name": "Ada Lovelace", "login_id": "ada@example.edu"}
GRACE = {"id": 7002, "name": "Grace Hopper", "login_id": "grace@example.edu"}
BIOLOGY = {"id": 4001, "account_id": 400, "root_account_id": 1, "name": "Biology 101",
           "sis_course_id": "SIS-4001", "course_code": "BIO-101"}  # fmt: skip
COPY = {"id": 4002, "account_id": 400, "root_account_id": 1, "name": "Biology 101 (copy)",
        "sis_course_id": "SIS-4002", "course_code": "BIO-101C"}  # fmt: skip
ELSEWHERE = {"id": 4003, "account_id": 401, "root_account_id": 1, "name": "Chemistry 200"}
HOSTILE = "<img src=x onerror=alert(1)>"
CYCLE = ["updated", "updated", "published", "updated", "unpublished", "concluded"]

T = TypeVar("T")


@dataclass
class Data:
    biology: list[dict[str, Any]]
    copy: list[dict[str, Any]]
    elsewhere: list[dict[str, Any]]
    diff: dict[str, Any]
    copied_to: dict[str, Any]


def events() -> Data:
    start = recent(7)
    biology = []
    for i in range(24):
        kind = CYCLE[i % len(CYCLE)]
        biology.append(
            make_event(
                kind,
                start + timedelta(hours=6 * i),
                BIOLOGY,
                user=ADA if i % 2 == 0 else GRACE,
                source="api" if i % 3 else "manual",
                changes={"name": [f"Biology v{i}", f"Biology v{i + 1}"]},
            )
        )
    diff = make_event(
        "updated",
        start + timedelta(hours=6 * 24),
        BIOLOGY,
        user=ADA,
        source="manual",
        changes={
            "name": [HOSTILE, "Biology 101"],
            "is_public": [False, True],
            "syllabus_body": [None, "Welcome & read this"],
        },
    )
    copied_to = make_event(
        "copied_to", start + timedelta(hours=6 * 25), BIOLOGY, user=GRACE, related=COPY
    )
    biology += [diff, copied_to]
    copy = [
        make_event(
            "created",
            start + timedelta(hours=6 * 25, minutes=1),
            COPY,
            user=GRACE,
            changes={"name": [None, "Biology 101 (copy)"]},
            created_source="course_copy",
        ),
        make_event(
            "copied_from",
            start + timedelta(hours=6 * 25, minutes=2),
            COPY,
            user=GRACE,
            related=BIOLOGY,
        ),
    ]
    elsewhere = [make_event("published", start + timedelta(hours=1), ELSEWHERE, user=ADA)]
    return Data(biology, copy, elsewhere, diff, copied_to)


@dataclass
class Viewer:
    stack: Stack
    token: str
    data: Data
    driver: WebDriver
    url: str


def chromium_driver() -> WebDriver:
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(
            "chromium and chromedriver are needed: `make test` installs them "
            "(deploy/local/provision.sh browser; Debian: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root, chromium refuses to start with its sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--lang=en-US",
        f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
    ):
        options.add_argument(arg)
    service = Service(
        executable_path=chromedriver,
        env={**os.environ, "TZ": ZONE_NAME, "LANG": "en_US.UTF-8", "SE_OFFLINE": "true"},
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_window_size(*LAPTOP)
    return driver


@contextlib.asynccontextmanager
async def viewer_session(
    server_url: str, template: str, kafka: str, log_dir: Path
) -> AsyncIterator[Viewer]:
    """A stack holding `events()`, a token for root account 1 and a browser."""
    ARTIFACTS.mkdir(exist_ok=True)
    data = events()
    async with stack(server_url, template, kafka, log_dir) as s:
        everything = data.biology + data.copy + data.elsewhere
        await produce(kafka, s.topic, everything)
        await wait_stored(s.db_url, [e["event_id"] for e in everything])
        token = await s.token("viewer", [1])
        driver = chromium_driver()
        try:
            yield Viewer(s, token, data, driver, f"{s.service.base_url}/viewer/")
        finally:
            driver.quit()


def viewer_fixture(folder: str) -> Any:
    """A test module's `viewer` fixture: a session of its own (module scope; its logs under
    `folder`), so that one module's events never change another's expectations."""

    @pytest.fixture(scope="module")
    async def viewer(
        server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
    ) -> AsyncIterator[Viewer]:
        log_dir: Path = tmp_path_factory.mktemp(folder)
        async with viewer_session(server_url, migrated_template, kafka_bootstrap, log_dir) as v:
            yield v

    return viewer


# ------------------------------------------------------------------ page helpers


def wait_for(driver: WebDriver, what: str, probe: Callable[[WebDriver], T]) -> T:
    """Poll `probe` until it returns something truthy (re-reading a re-rendered element)."""

    def attempt(d: WebDriver) -> T | bool:
        try:
            return probe(d)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(attempt, f"waiting for {what}")


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"viewer-{name}.png"))


def open_page(v: Viewer, size: tuple[int, int] = LAPTOP) -> WebDriver:
    d = v.driver
    d.set_window_size(*size)
    d.get(v.url)
    ready = "return document.documentElement.dataset.ready"
    wait_for(d, "the page's script", lambda d: d.execute_script(ready))
    return d


def enter_token(d: WebDriver, token: str) -> None:
    field = by_id(d, "token")
    field.clear()
    field.send_keys(token)


def look_up(d: WebDriver, kind: str, target: str, per_page: int = 10) -> None:
    d.find_element(By.CSS_SELECTOR, f"#kind option[value={kind}]").click()
    field = by_id(d, "target")
    field.clear()
    field.send_keys(target)
    d.find_element(By.CSS_SELECTOR, f"#per-page option[value='{per_page}']").click()
    by_id(d, "show").click()


def set_date(d: WebDriver, element_id: str, value: str) -> None:
    # Typing into a date input depends on the browser's locale; set its value as a picker would.
    d.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        by_id(d, element_id),
        value,
    )


def row_ids(d: WebDriver) -> list[str]:
    return [r.get_attribute("data-id") or "" for r in d.find_elements(By.CSS_SELECTOR, "#rows tr")]


def rows_are(d: WebDriver, n: int) -> list[str] | None:
    ids = row_ids(d)
    return ids if len(ids) == n else None


def status_says(d: WebDriver, pattern: str) -> bool:
    return re.search(pattern, by_id(d, "status").text) is not None


def row(d: WebDriver, event_id: str) -> WebElement:
    return d.find_element(By.CSS_SELECTOR, f"#rows tr[data-id='{event_id}']")


def row_cells(d: WebDriver, event_id: str) -> dict[str, str]:
    return {
        td.get_attribute("data-label") or "": td.text
        for td in row(d, event_id).find_elements(By.CSS_SELECTOR, "td")
    }


def local(at: str) -> str:
    """What the page must show for an ISO time: the browser's zone (America/Denver)."""
    when = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(ZONE)
    return when.strftime("%Y-%m-%d %H:%M:%S ") + (when.tzname() or "")


def who(obj: dict[str, Any]) -> str:
    user = obj["user"]
    return f"{user['name']} ({user['login_id']})"


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]


def enabled(d: WebDriver, element_id: str) -> WebElement | None:
    element = by_id(d, element_id)
    usable = element.is_displayed() and element.is_enabled()
    return element if usable and element.get_attribute("aria-disabled") != "true" else None

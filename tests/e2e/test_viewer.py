"""The course-activity viewer in a real headless browser (Debian's chromium via chromedriver).

The real service (`course-audit run`) with real Kafka and PostgreSQL serves the page and the API;
events go in through Kafka. Selenium drives the page the way a person would: paste the token,
look a course up, page, filter, open an event's changes, follow a copy link. Every wait polls
(WebDriverWait) with a deadline. A screenshot of each state is kept in test-artifacts/;
`AUDIT_UPDATE_SCREENSHOT=1` also rewrites docs/images/viewer.png.

The browser runs in America/Denver, so the times it shows (the browser's zone) differ from the
API's (UTC); the expected ones are computed here with zoneinfo.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from test_api_support import (
    Stack,
    make_event,
    newest_first,
    produce,
    recent,
    stack,
    wait_stored,
)

pytestmark = pytest.mark.e2e

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


@pytest.fixture(scope="module")
async def viewer(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[Viewer]:
    log_dir: Path = tmp_path_factory.mktemp("viewer")
    ARTIFACTS.mkdir(exist_ok=True)
    data = events()
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir) as s:
        everything = data.biology + data.copy + data.elsewhere
        await produce(kafka_bootstrap, s.topic, everything)
        await wait_stored(s.db_url, [e["event_id"] for e in everything])
        token = await s.token("viewer", [1])
        driver = chromium_driver()
        try:
            yield Viewer(s, token, data, driver, f"{s.service.base_url}/viewer/")
        finally:
            driver.quit()


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
    return element if element.is_displayed() and element.is_enabled() else None


# ------------------------------------------------------------------ the page itself


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_handlers: list[str] = []
        self._in_script = False
        self.inline_code = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inline_handlers += [name for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_code += data.strip()


async def test_viewer_is_served_with_strict_headers(viewer: Viewer) -> None:
    base = viewer.stack.service.base_url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/viewer", allow_redirects=False) as resp:
            assert resp.status == 301
            assert resp.headers["Location"] == "viewer/"
        for name, media_type in (
            ("", "text/html"),
            ("index.html", "text/html"),
            ("viewer.js", "text/javascript"),
            ("viewer.css", "text/css"),
        ):
            async with http.get(f"{base}/viewer/{name}") as resp:
                body = await resp.read()
                assert resp.status == 200, name
                assert resp.content_type == media_type
                assert resp.charset == "utf-8"
                csp = [p.strip() for p in resp.headers["Content-Security-Policy"].split(";")]
                assert "default-src 'self'" in csp
                assert "script-src 'self'" in csp
                assert "frame-ancestors 'none'" in csp
                assert not [p for p in csp if "unsafe" in p]
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert resp.headers["Cache-Control"] == "no-cache"
                etag = resp.headers["ETag"]
            async with http.get(f"{base}/viewer/{name}", headers={"If-None-Match": etag}) as resp:
                assert resp.status == 304
                assert await resp.read() == b""
                assert resp.headers["ETag"] == etag
            assert body
        # Only the viewer's own files; no directory walking, no other methods.
        for name in ("nope.js", "..%2Fapi%2F__init__.py", "static/index.html"):
            async with http.get(f"{base}/viewer/{name}") as resp:
                assert resp.status == 404, name
                assert (await resp.json())["errors"][0]["message"]
        async with http.post(f"{base}/viewer/") as resp:
            assert resp.status == 405
        async with http.get(f"{base}/viewer/") as resp:
            page = await resp.text()
    parsed = _Scripts()
    parsed.feed(page)
    # No inline script or handler: the policy would refuse them (script-src 'self').
    assert parsed.scripts == [{"type": "module", "src": "viewer.js"}]
    assert parsed.inline_code == ""
    assert parsed.inline_handlers == []


async def test_event_type_choices_are_canvas_course_event_types(viewer: Viewer) -> None:
    d = open_page(viewer)
    boxes = d.find_elements(By.CSS_SELECTOR, "#types input[type=checkbox]")
    assert [b.get_attribute("value") for b in boxes] == CANVAS_TYPES
    # Every control is labelled.
    for control in d.find_elements(By.CSS_SELECTOR, "input, select"):
        labelled = d.execute_script("return arguments[0].labels.length", control)
        assert labelled > 0, control.get_attribute("outerHTML")


# ------------------------------------------------------------------ token, look-up, paging


async def test_token_course_lookup_and_paging(viewer: Viewer) -> None:
    d = open_page(viewer)
    shot(d, "1-loaded")
    enter_token(d, viewer.token)
    look_up(d, "course", "4001", per_page=10)
    expected = newest_first(viewer.data.biology)
    first = wait_for(d, "the first page", lambda d: rows_are(d, 10))
    assert first == ids(expected[:10])
    assert by_id(d, "results-title").text == "Events of Course 4001"
    shot(d, "2-first-page")

    # The columns: local time, type, who, source, what changed.
    for obj in expected[:10]:
        cells = row_cells(d, obj["event_id"])
        assert cells["Time"] == local(obj["created_at"])
        assert cells["Type"] == obj["event_type"]
        assert cells["Who"] == who(obj)
        assert cells["Source"] == obj["event_source"]
    copied = row_cells(d, viewer.data.copied_to["event_id"])
    assert copied["What changed"] == "copied to course 4002 (Biology 101 (copy))"
    diff = row_cells(d, viewer.data.diff["event_id"])
    assert set(diff["What changed"].split(", ")) == {"name", "is_public", "syllabus_body"}
    plain = next(e for e in expected if e["event_type"] == "updated" and e is not viewer.data.diff)
    assert row_cells(d, plain["event_id"])["What changed"] == "name"
    published = next(e for e in expected[:10] if e["event_type"] == "published")
    assert row_cells(d, published["event_id"])["What changed"] == "—"

    # "Load more" follows the Link header's next URL until there is none.
    by_id(d, "more").click()
    assert wait_for(d, "the second page", lambda d: rows_are(d, 20)) == ids(expected[:20])
    wait_for(d, "Load more to be ready", lambda d: enabled(d, "more"))
    by_id(d, "more").click()
    assert wait_for(d, "the last page", lambda d: rows_are(d, 26)) == ids(expected)
    wait_for(d, "no more pages", lambda d: not by_id(d, "more").is_displayed())
    assert by_id(d, "status").text == "26 events shown."
    shot(d, "3-all-pages")

    # The token is in this tab's sessionStorage only, and is forgotten on request.
    stored = "return sessionStorage.getItem('course-audit.token')"
    assert d.execute_script(stored) == viewer.token
    assert d.execute_script("return localStorage.length") == 0
    assert d.get_cookies() == []
    d.refresh()
    wait_for(
        d, "the token back", lambda d: by_id(d, "token").get_attribute("value") == viewer.token
    )
    assert by_id(d, "token").get_attribute("type") == "password"
    by_id(d, "forget").click()
    assert d.execute_script(stored) is None
    assert by_id(d, "token").get_attribute("value") == ""


async def test_sis_id_account_and_date_range(viewer: Viewer) -> None:
    d = open_page(viewer)
    enter_token(d, viewer.token)
    look_up(d, "sis", "SIS-4001", per_page=100)
    everything = newest_first(viewer.data.biology)
    assert wait_for(d, "the course by SIS id", lambda d: rows_are(d, 26)) == ids(everything)
    assert not by_id(d, "more").is_displayed()

    # An account: the courses directly in it (4001 and 4002), not 4003 in account 401.
    look_up(d, "account", "400", per_page=100)
    account = newest_first(viewer.data.biology + viewer.data.copy)
    got = wait_for(d, "the account's events", lambda d: rows_are(d, len(account)))
    assert sorted(got) == sorted(ids(account))
    assert by_id(d, "results-title").text == "Events of Account 400"

    # From and To are days in the browser's zone, both whole days included.
    first_day = datetime.fromisoformat(everything[-1]["created_at"]).astimezone(ZONE).date()
    since, until = first_day + timedelta(days=2), first_day + timedelta(days=3)

    def inside(obj: dict[str, Any]) -> bool:
        day = datetime.fromisoformat(obj["created_at"]).astimezone(ZONE).date()
        return since <= day <= until

    window = [e for e in everything if inside(e)]
    assert 0 < len(window) < len(everything)
    set_date(d, "start", since.isoformat())
    set_date(d, "end", until.isoformat())
    look_up(d, "course", "4001", per_page=100)
    assert wait_for(d, "the date range", lambda d: rows_are(d, len(window))) == ids(window)
    shot(d, "4-date-range")


async def test_errors_are_shown(viewer: Viewer) -> None:
    d = open_page(viewer)
    by_id(d, "forget").click()
    look_up(d, "course", "4001")
    alert = by_id(d, "error")
    assert alert.get_attribute("role") == "alert"
    wait_for(d, "the missing token", lambda d: "Enter an API token first." in alert.text)
    enter_token(d, "x" * 43)
    look_up(d, "course", "4001")
    wait_for(d, "the 401", lambda d: alert.text == "Course 4001: Invalid access token.")
    enter_token(d, viewer.token)
    look_up(d, "course", "999999")
    wait_for(
        d,
        "the 404",
        lambda d: alert.text == "Course 999999: The specified resource does not exist.",
    )
    shot(d, "5-error")
    look_up(d, "course", "4001")
    wait_for(d, "the error cleared", lambda d: rows_are(d, 10) and alert.text == "")


# ------------------------------------------------------------------ detail, copy link


async def test_event_detail_shows_each_change_old_to_new(viewer: Viewer) -> None:
    d = open_page(viewer)
    enter_token(d, viewer.token)
    look_up(d, "course", "4001", per_page=10)
    wait_for(d, "the first page", lambda d: rows_are(d, 10))
    diff_id = viewer.data.diff["event_id"]
    diff_row = row(d, diff_id)

    # Keyboard: the row takes focus and Enter opens the dialog, focused on its close button.
    d.execute_script("arguments[0].focus()", diff_row)
    diff_row.send_keys(Keys.ENTER)
    dialog = by_id(d, "detail")
    wait_for(d, "the dialog", lambda d: dialog.get_attribute("open") is not None)
    assert d.switch_to.active_element == by_id(d, "detail-close")
    changes = {
        tr.find_element(By.TAG_NAME, "th").text: (
            tr.find_element(By.CSS_SELECTOR, "td.old").text,
            tr.find_element(By.CSS_SELECTOR, "td.new").text,
        )
        for tr in d.find_elements(By.CSS_SELECTOR, "#detail-rows tr")
    }
    assert changes == {
        "name": (HOSTILE, "Biology 101"),
        "is_public": ("false", "true"),
        "syllabus_body": ("(none)", "Welcome & read this"),
    }
    # The data is text: the hostile name made no element.
    assert d.find_elements(By.CSS_SELECTOR, "#detail img, #rows img") == []
    facts = by_id(d, "detail-facts").text
    assert viewer.data.diff["event_id"] in facts
    assert local(viewer.data.diff["created_at"]) in facts
    assert "Ada Lovelace (ada@example.edu)" in facts
    shot(d, "6-detail")

    # Escape closes it and gives focus back to the row.
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_for(d, "the dialog to close", lambda d: dialog.get_attribute("open") is None)
    assert d.switch_to.active_element.get_attribute("data-id") == diff_id

    # A click opens it too; Close closes it.
    diff_row.click()
    wait_for(d, "the dialog again", lambda d: dialog.get_attribute("open") is not None)
    by_id(d, "detail-close").click()
    wait_for(d, "the dialog to close again", lambda d: dialog.get_attribute("open") is None)


async def test_copy_event_links_to_the_other_course(viewer: Viewer) -> None:
    d = open_page(viewer)
    enter_token(d, viewer.token)
    look_up(d, "course", "4001", per_page=10)
    wait_for(d, "the first page", lambda d: rows_are(d, 10))
    row(d, viewer.data.copied_to["event_id"]).click()
    dialog = by_id(d, "detail")
    wait_for(d, "the dialog", lambda d: dialog.get_attribute("open") is not None)
    assert "This event records no attribute changes." in dialog.text
    link = d.find_element(By.CSS_SELECTOR, "#detail-related button")
    assert link.text == "Show course 4002's events"
    link.click()
    copy = newest_first(viewer.data.copy)
    assert wait_for(d, "course 4002", lambda d: rows_are(d, len(copy))) == ids(copy)
    assert dialog.get_attribute("open") is None
    assert by_id(d, "results-title").text == "Events of Course 4002"
    assert by_id(d, "target").get_attribute("value") == "4002"
    created = row_cells(d, viewer.data.copy[0]["event_id"])
    assert created["What changed"] == "name; from course_copy"
    back = row_cells(d, viewer.data.copy[1]["event_id"])
    assert back["What changed"] == "copied from course 4001 (Biology 101)"
    shot(d, "7-copied-course")


# ------------------------------------------------------------------ make run's demo


async def test_make_run_demo_prints_the_viewer_url(viewer: Viewer) -> None:
    """deploy/local/demo.sh (what `make run` runs once the service is up) against this stack:
    it prints the viewer's URL next to the curl lines, and that page shows the demo events."""
    s = viewer.stack
    env = {
        **os.environ,
        "AUDIT_HTTP_PORT": str(s.service.port),
        "AUDIT_DATABASE_URL": s.db_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": s.kafka,
        "AUDIT_KAFKA_TOPICS": s.topic,
    }
    demo = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "deploy" / "local" / "demo.sh"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(demo.communicate(), 300)
    assert demo.returncode == 0, err.decode()[-3000:]
    text = out.decode()
    assert re.search(r"^\s+curl -s .*/api/v1/audit/course/courses/1000\?per_page=5\"$", text, re.M)
    shown = re.search(r"^\s+(http://\S+/viewer/)$", text, re.M)
    assert shown is not None, text
    assert shown.group(1) == f"http://127.0.0.1:{s.service.port}/viewer/"
    token = re.search(r"export TOKEN=(\S+)$", text, re.M)
    assert token is not None, text

    d = viewer.driver
    d.get(shown.group(1))
    ready = "return document.documentElement.dataset.ready"
    wait_for(d, "the page's script", lambda d: d.execute_script(ready))
    enter_token(d, token.group(1))
    look_up(d, "course", "1000", per_page=25)
    # The demo gives course 1000 a burst of 12 events of its own, besides its share of the rest.
    wait_for(d, "the demo course's events", lambda d: len(row_ids(d)) >= 12)
    assert by_id(d, "results-title").text == "Events of Course 1000"
    shot(d, "0-demo")
    if os.environ.get("AUDIT_UPDATE_SCREENSHOT") == "1":
        # The README's picture: laptop width, tall enough for a screenful of events.
        d.set_window_size(LAPTOP[0], 1150)
        DOC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(DOC_SCREENSHOT))


# ------------------------------------------------------------------ phone width


async def test_phone_width_shows_cards(viewer: Viewer) -> None:
    d = open_page(viewer, PHONE)
    enter_token(d, viewer.token)
    look_up(d, "course", "4001", per_page=10)
    wait_for(d, "the first page", lambda d: rows_are(d, 10))
    first = d.find_element(By.CSS_SELECTOR, "#rows tr")
    display = "return getComputedStyle(arguments[0]).display"
    assert d.execute_script(display, first) == "block"
    # Nothing wider than the screen: no sideways scrolling.
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= d.execute_script("return window.innerWidth")
    d.execute_script("arguments[0].scrollIntoView()", by_id(d, "results"))
    shot(d, "8-phone")
    d.set_window_size(*LAPTOP)


@pytest.fixture(autouse=True)
def _fresh_window(viewer: Viewer) -> Iterator[None]:
    yield
    viewer.driver.set_window_size(*LAPTOP)

"""The course-activity viewer in a real headless browser (Debian's chromium via chromedriver).

The real service (`course-audit run`) with real Kafka and PostgreSQL serves the page and the API;
events go in through Kafka. Selenium drives the page the way a person would: paste the token,
look a course up, page, pick dates, open an event's changes, follow a copy link, and `make
run`'s demo. A screenshot of each state is kept in test-artifacts/;
`AUDIT_UPDATE_SCREENSHOT=1` also rewrites docs/images/viewer.png. Shared pieces:
viewer_support.py.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from test_api_support import newest_first
from viewer_support import (
    CANVAS_TYPES,
    DOC_SCREENSHOT,
    HOSTILE,
    LAPTOP,
    PHONE,
    ROOT,
    ZONE,
    Viewer,
    by_id,
    enabled,
    enter_token,
    ids,
    local,
    look_up,
    open_page,
    row,
    row_cells,
    row_ids,
    rows_are,
    set_date,
    shot,
    viewer_fixture,
    wait_for,
    who,
)

pytestmark = pytest.mark.e2e


viewer = viewer_fixture("viewer")


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
            assert resp.headers["Allow"] == "GET,HEAD"
        async with http.head(f"{base}/viewer/") as resp:
            assert resp.status == 200
            assert await resp.read() == b""
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
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
    # Focus was on the button that went away: it moves to the first row of the last page.
    assert d.switch_to.active_element.get_attribute("data-id") == expected[20]["event_id"]
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
    # Checked before anything is sent: a user id is digits.
    by_id(d, "user").send_keys("ada")
    look_up(d, "course", "4001")
    wait_for(d, "the user id", lambda d: alert.text == "A user id is a number, e.g. 5004.")
    by_id(d, "user").clear()
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
    # One row at a time is in the tab order; the arrow keys move between rows.
    d.switch_to.active_element.send_keys(Keys.ARROW_UP)
    newest = viewer.data.copied_to["event_id"]
    assert d.switch_to.active_element.get_attribute("data-id") == newest
    in_tab_order = d.find_elements(By.CSS_SELECTOR, "#rows tr[tabindex='0']")
    assert [r.get_attribute("data-id") for r in in_tab_order] == [newest]
    d.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
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

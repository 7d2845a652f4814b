"""The viewer's live tail in headless chromium: the SSE stream read with fetch() (EventSource
cannot send the Authorization header), resumed after the newest event shown (Last-Event-ID),
new events prepended as they are stored.

Same stack, data and helpers as test_viewer.py (viewer_support.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from test_api_support import make_event, produce, wait_stored
from viewer_support import (
    ADA,
    BIOLOGY,
    GRACE,
    Viewer,
    by_id,
    enter_token,
    ids,
    local,
    look_up,
    open_page,
    row,
    row_cells,
    rows_are,
    shot,
    viewer_fixture,
    wait_for,
    who,
)

pytestmark = pytest.mark.e2e


viewer = viewer_fixture("viewer-live")


async def test_live_tail_prepends_new_events(viewer: Viewer) -> None:
    d = open_page(viewer)
    enter_token(d, viewer.token)
    look_up(d, "course", "4001", per_page=10)
    first = wait_for(d, "the first page", lambda d: rows_are(d, 10))
    s = viewer.stack

    # Stored after the page was read and before Live is on: the stream resumes after the newest
    # event shown (Last-Event-ID), so this one comes first.
    between = make_event(
        "updated",
        datetime.now(UTC).replace(microsecond=0),
        BIOLOGY,
        user=GRACE,
        changes={"name": ["Biology 101", "Biology 101 (Spring)"]},
    )
    await produce(s.kafka, s.topic, [between])
    await wait_stored(s.db_url, [between["event_id"]])
    live = by_id(d, "live")
    live.click()
    assert live.get_attribute("aria-pressed") == "true"
    wait_for(d, "the event stored meanwhile", lambda d: row_ids_head(d, 1) == [between["event_id"]])

    # A new event, stored while the stream is open, arrives on top.
    new = make_event(
        "published", datetime.now(UTC).replace(microsecond=0), BIOLOGY, user=ADA, source="api"
    )
    await produce(s.kafka, s.topic, [new])
    wait_for(d, "the live event", lambda d: row_ids_head(d, 2) == ids([new, between]))
    cells = row_cells(d, new["event_id"])
    assert cells["Time"] == local(new["created_at"])
    assert cells["Type"] == "published"
    assert cells["Who"] == who(new)
    assert "fresh" in (row(d, new["event_id"]).get_attribute("class") or "")
    assert row_ids_head(d, 12)[2:] == first
    shot(d, "10-live")

    live.click()
    assert live.get_attribute("aria-pressed") == "false"
    assert live.text == "Live: off"


def row_ids_head(d: Any, n: int) -> list[str]:
    rows = d.find_elements(By.CSS_SELECTOR, "#rows tr")[:n]
    return [r.get_attribute("data-id") or "" for r in rows]

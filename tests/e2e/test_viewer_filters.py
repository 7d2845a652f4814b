"""The viewer's event-type filter in headless chromium: ticked types go out as repeated
`event_type` parameters, and "Load more" keeps them (the `Link` URLs carry the filters).

Same stack, data and helpers as test_viewer.py (viewer_support.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from test_api_support import newest_first
from viewer_support import (
    GRACE,
    Viewer,
    by_id,
    enabled,
    enter_token,
    ids,
    look_up,
    open_page,
    rows_are,
    shot,
    viewer_fixture,
    wait_for,
)

pytestmark = pytest.mark.e2e


viewer = viewer_fixture("viewer-filters")


def tick(d: Any, *types: str) -> None:
    for event_type in types:
        d.find_element(By.CSS_SELECTOR, f"#types input[value={event_type}]").click()


async def test_filter_by_event_type(viewer: Viewer) -> None:
    d = open_page(viewer)
    enter_token(d, viewer.token)
    everything = newest_first(viewer.data.biology)

    tick(d, "published", "concluded")
    look_up(d, "course", "4001", per_page=100)
    picked = [e for e in everything if e["event_type"] in ("published", "concluded")]
    assert 0 < len(picked) < len(everything)
    assert wait_for(d, "the two types", lambda d: rows_are(d, len(picked))) == ids(picked)
    shot(d, "9-filtered")

    # One type over pages: "Load more" keeps the filter (the Link URLs carry it).
    tick(d, "published", "concluded", "updated")  # untick the two, tick `updated`
    look_up(d, "course", "4001", per_page=10)
    updated = [e for e in everything if e["event_type"] == "updated"]
    assert len(updated) > 10
    assert wait_for(d, "a page of updates", lambda d: rows_are(d, 10)) == ids(updated[:10])
    wait_for(d, "Load more", lambda d: enabled(d, "more")).click()
    got = wait_for(d, "the rest of the updates", lambda d: rows_are(d, len(updated)))
    assert got == ids(updated)
    wait_for(d, "no more pages", lambda d: not by_id(d, "more").is_displayed())


async def test_filter_by_user_and_source(viewer: Viewer) -> None:
    d = open_page(viewer)
    enter_token(d, viewer.token)
    everything = newest_first(viewer.data.biology)

    by_id(d, "user").send_keys(str(GRACE["id"]))
    look_up(d, "course", "4001", per_page=100)
    grace = [e for e in everything if e["user"] == GRACE]
    assert 0 < len(grace) < len(everything)
    assert wait_for(d, "Grace's events", lambda d: rows_are(d, len(grace))) == ids(grace)

    # With a source as well: both filters at once.
    by_id(d, "source").send_keys("manual")
    look_up(d, "course", "4001", per_page=100)
    both = [e for e in grace if e["event_source"] == "manual"]
    assert 0 < len(both) < len(grace)
    assert wait_for(d, "Grace's manual events", lambda d: rows_are(d, len(both))) == ids(both)

    # A source the store does not know is no error: nothing matches.
    by_id(d, "user").clear()
    by_id(d, "source").clear()
    by_id(d, "source").send_keys("carrier-pigeon")
    look_up(d, "course", "4001", per_page=100)
    wait_for(d, "no events", lambda d: by_id(d, "empty").is_displayed())
    assert rows_are(d, 0) == []
    shot(d, "9-filtered-source")

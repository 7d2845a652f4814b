"""An event_id re-sent with another created_at or content: the API shows the id once.

`course-audit run` as a process: the event is produced again with another timestamp (in
another month, so another partition) and again with other content; both are dead letters
naming the stored one, and the course's events list the id once.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_api_support import (
    at_of,
    course_path,
    iso_ms,
    make_event,
    produce,
    recent,
    stack,
    wait_stored,
)

from waits import eventually

pytestmark = pytest.mark.e2e

COURSE = {"id": 7001, "account_id": 700, "root_account_id": 1, "name": "Course 7001"}


async def test_an_id_resent_with_another_time_or_content_is_shown_once(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    first = make_event("updated", recent(40), COURSE, changes={"name": ["A", "B"]})
    other_time: dict[str, Any] = copy.deepcopy(first) | {"created_at": iso_ms(recent(1))}
    other_content: dict[str, Any] = copy.deepcopy(first) | {"event_source": "sis"}
    neighbour = make_event("published", recent(0.5), COURSE)
    async with stack(server_url, migrated_template, kafka_bootstrap, tmp_path) as s:
        await produce(kafka_bootstrap, s.topic, [first])
        await wait_stored(s.db_url, [first["event_id"]])
        await produce(kafka_bootstrap, s.topic, [other_time, other_content, first, neighbour])
        await wait_stored(s.db_url, [neighbour["event_id"]])
        conn = await asyncpg.connect(s.db_url)
        try:
            dead = await eventually(
                lambda: conn.fetch(
                    "SELECT error_code, error_message FROM course_audit_dead_letters"
                ),
                lambda rows: len(rows) == 2,
                60,
                "two conflicting_event_id dead letters",
            )
        finally:
            await conn.close()
        assert {d["error_code"] for d in dead} == {"conflicting_event_id"}
        assert all(
            f"already stored with created_at {iso_ms(at_of(first))}" in d["error_message"]
            for d in dead
        )

        token = await s.token("event-ids", [1])
        reply = await s.api.get(course_path(7001), token=token)
        assert reply.status == 200, reply.body
        shown = [(e["id"], e["event_source"]) for e in reply.json()["events"]]
        assert shown == [(neighbour["event_id"], "api"), (first["event_id"], "api")]

"""Linked snapshots stay exact while the API skips their version check
(docs/design.md#snapshot-caches): a renamed user shows at once, also while the API's LISTEN
connection for snapshot changes is gone, and the cache is trusted again once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_api_support import Stack, course_path, listen_pids, make_event, produce, recent, stack

from course_audit.api.listen import LISTEN_NAME
from waits import eventually

pytestmark = pytest.mark.e2e

COURSE_ID = 4100
TRUSTED = "course_audit_snapshot_cache_trusted_total"
LISTENING = "course_audit_snapshot_listening"
CONCURRENT_GETS = 16


def course() -> dict[str, Any]:
    return {"id": COURSE_ID, "account_id": 41, "root_account_id": 1, "name": "Chemistry"}


def user(name: str) -> dict[str, Any]:
    return {"id": 77, "name": name, "sortable_name": name, "short_name": name}


class World:
    def __init__(self, s: Stack, token: str) -> None:
        self.stack = s
        self.token = token
        self.at = recent(1)
        self.sent = 0

    async def rename(self, name: str) -> str:
        """Produce a newer event whose user carries `name`; its event id."""
        self.sent += 1
        event = make_event(
            "updated", self.at + timedelta(seconds=self.sent), course(), user=user(name)
        )
        await produce(self.stack.kafka, self.stack.topic, [event])
        return str(event["event_id"])

    async def page(self) -> dict[str, Any] | None:
        """The course's first page (None: 404, before its first event is stored)."""
        reply = await self.stack.api.get(
            course_path(COURSE_ID), token=self.token, params={"per_page": "5"}
        )
        if reply.status == 404 and self.sent == 1:
            return None
        assert reply.status == 200
        document: dict[str, Any] = reply.json()
        return document

    async def shows(self, event_id: str, name: str) -> int:
        """GET the page until it shows `event_id` first; every page that does must show the
        user as `name`. The number of GETs."""
        gets = 0

        def check(document: dict[str, Any] | None) -> bool:
            # (Empty: the first event committed between the page query and the 404 probe.)
            if document is None or not document["events"]:
                return False
            if document["events"][0]["id"] != event_id:
                return False
            users = {u["id"]: u["name"] for u in document["linked"]["users"]}
            assert users == {77: name}, f"the page with {event_id} shows {users}"
            return True

        async def probe() -> bool:
            # Several at once: the API is busy when the change commits, as under load, so
            # some pages are read before its announcement is applied.
            nonlocal gets
            gets += CONCURRENT_GETS
            pages = await asyncio.gather(*(self.page() for _ in range(CONCURRENT_GETS)))
            return any([check(document) for document in pages])

        await eventually(probe, bool, 60, f"the page showing {event_id}", interval=0.005)
        return gets

    async def trusted_page(self, name: str) -> None:
        """GET the page until one is served from the cache without a version check (the
        change last made applied); each must show the user as `name`."""

        async def probe() -> bool:
            before = await self.metric(TRUSTED)
            document = await self.page()
            assert document is not None
            assert [u["name"] for u in document["linked"]["users"]] == [name]
            return await self.metric(TRUSTED) > before

        await eventually(probe, bool, 30, "a page served from the cache unchecked")

    async def metric(self, name: str) -> float:
        value = await self.stack.api.metric(name)
        assert value is not None, name
        return value


@pytest.fixture(scope="module")
async def world(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[World]:
    log_dir: Path = tmp_path_factory.mktemp("api-snapshot-changes")
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir) as s:
        w = World(s, await s.token("snapshots", [1]))
        await eventually(lambda: w.metric(LISTENING), lambda v: v == 1, 30, "listening")
        yield w


async def test_a_renamed_user_shows_on_the_first_page_that_shows_the_event(world: World) -> None:
    await world.shows(await world.rename("Name 0"), "Name 0")
    trusted = await world.metric(TRUSTED)
    for i in range(1, 51):
        await world.shows(await world.rename(f"Name {i}"), f"Name {i}")
    # Pages came from the cache without a version check, and still do.
    assert await world.metric(TRUSTED) > trusted
    await world.trusted_page("Name 50")


async def test_without_its_listen_connection_the_api_checks_and_is_trusted_again_after(
    world: World,
) -> None:
    pids = await listen_pids(world.stack.db_url, LISTEN_NAME)
    assert len(pids) == 1, pids
    logged = len(world.stack.service.log_lines())
    conn = await asyncpg.connect(world.stack.db_url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pids[0])
        await world.stack.service.wait_log(
            "lost the LISTEN connection for snapshot changes", 30, after=logged
        )
        # Renames while it reconnects (and after): always the new name.
        for i in range(5):
            await world.shows(await world.rename(f"Again {i}"), f"Again {i}")
    finally:
        await conn.close()
    await eventually(
        lambda: listen_pids(world.stack.db_url, LISTEN_NAME),
        lambda found: len(found) == 1 and found != pids,
        30,
        "a new LISTEN connection",
    )
    await eventually(lambda: world.metric(LISTENING), lambda v: v == 1, 30, "listening again")
    await world.shows(await world.rename("Back"), "Back")
    await world.trusted_page("Back")

"""The filters end to end (docs/api.md#filters): event_type, user_id and event_source on both
endpoints of the real service, each alone and combined, paged through the Link header, bad
values answered with 400s, and tenancy as without filters.

The events are written out below with a label each; every expected answer is a list of
labels, written by hand from that table, newest first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from test_api_support import (
    ACCOUNT,
    Api,
    course_path,
    make_event,
    produce,
    recent,
    stack,
    wait_stored,
)

pytestmark = pytest.mark.e2e

NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
START = recent(3)

# label: (course, account, root, event type, user id or None, source, seconds after START)
TABLE: dict[str, tuple[int, int, int, str, int | None, str, int]] = {
    "a1": (4001, 400, 1, "created", 11, "manual", 0),
    "a2": (4001, 400, 1, "updated", 11, "api", 10),
    "a3": (4001, 400, 1, "published", 12, "api", 20),
    "a4": (4001, 400, 1, "updated", 12, "sis", 30),
    "a5": (4001, 400, 1, "concluded", 11, "sis", 40),
    "a6": (4001, 400, 1, "updated", None, "sis", 50),
    "a7": (4001, 400, 1, "unconcluded", 12, "manual", 60),
    "a8": (4001, 400, 1, "updated", 11, "api", 70),
    "a9": (4001, 400, 1, "published", 11, "manual", 80),
    "a10": (4001, 400, 1, "claimed", 12, "api", 90),
    "a11": (4001, 400, 1, "updated", 11, "api_in_app", 100),
    "a12": (4001, 400, 1, "deleted", 13, "api", 110),
    "b1": (4002, 400, 1, "updated", 11, "api", 15),
    "b2": (4002, 400, 1, "published", 11, "sis", 45),
    "b3": (4002, 400, 1, "updated", 14, "sis", 75),
    "c1": (4003, 401, 1, "updated", 11, "api", 5),
    # Root account 2's events under the same course and account ids, and a course of its own.
    "x1": (4001, 400, 2, "updated", 11, "api", 35),
    "x2": (4001, 400, 2, "published", 11, "sis", 65),
    "y1": (4005, 405, 2, "published", 11, "sis", 12),
}


def _event(label: str) -> dict[str, Any]:
    cid, account, root, kind, user, source, offset = TABLE[label]
    course = {"id": cid, "account_id": account, "root_account_id": root, "name": f"C{cid}"}
    return make_event(
        kind,
        START + timedelta(seconds=offset),
        course,
        user=None if user is None else {"id": user, "name": f"User {user}"},
        source=source,
    )


@dataclass
class World:
    api: Api
    tokens: dict[str, str]
    ids: dict[str, str]  # event id -> label


@pytest.fixture(scope="module")
async def world(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[World]:
    log_dir: Path = tmp_path_factory.mktemp("api-filters")
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir) as s:
        events = {label: _event(label) for label in TABLE}
        # Root account 1's events first, then root account 2's claims of the same ids.
        for root in (1, 2):
            batch = [e for label, e in events.items() if TABLE[label][2] == root]
            await produce(kafka_bootstrap, s.topic, batch)
            await wait_stored(s.db_url, [e["event_id"] for e in batch])
        tokens = {
            "root1": await s.token("root 1", [1]),
            "root2": await s.token("root 2", [2]),
            "both": await s.token("both", [1, 2]),
        }
        yield World(s.api, tokens, {e["event_id"]: label for label, e in events.items()})


async def labels(
    world: World, target: str, params: list[tuple[str, str]], token: str = "root1"
) -> list[str]:
    reply = await world.api.get(target, token=world.tokens[token], params=params)
    assert reply.status == 200, reply.body
    return [world.ids[e["id"]] for e in reply.json()["events"]]


COURSE = course_path(4001)
ACCOUNT_400 = f"{ACCOUNT}400"
A = [("per_page", "100")]


@pytest.mark.parametrize(
    ("target", "params", "expected"),
    [
        # Each filter alone, on the course.
        (COURSE, [("event_type", "updated")], ["a11", "a8", "a6", "a4", "a2"]),
        (COURSE, [("user_id", "11")], ["a11", "a9", "a8", "a5", "a2", "a1"]),
        (COURSE, [("event_source", "sis")], ["a6", "a5", "a4"]),
        (COURSE, [("event_source", "api_in_app")], ["a11"]),
        # Several types; the Rails array form; duplicates.
        (
            COURSE,
            [("event_type", "updated"), ("event_type", "published")],
            ["a11", "a9", "a8", "a6", "a4", "a3", "a2"],
        ),
        (
            COURSE,
            [("event_type[]", "concluded"), ("event_type[]", "created"), ("event_type", "created")],
            ["a5", "a1"],
        ),
        # Combined.
        (COURSE, [("event_type", "updated"), ("user_id", "11")], ["a11", "a8", "a2"]),
        (
            COURSE,
            [("event_type", "published"), ("event_type", "updated"), ("event_source", "api")],
            ["a8", "a3", "a2"],
        ),
        (COURSE, [("user_id", "11"), ("event_source", "sis")], ["a5"]),
        (
            COURSE,
            [
                ("event_type", "updated"),
                ("event_type", "concluded"),
                ("user_id", "11"),
                ("event_source", "sis"),
            ],
            ["a5"],
        ),
        (
            COURSE,
            [("user_id", "12"), ("event_type", "claimed"), ("event_type", "unconcluded")],
            ["a10", "a7"],
        ),
        # With a time window: 20 s to 80 s after the first event.
        (
            COURSE,
            [
                ("start_time", (START + timedelta(seconds=20)).isoformat()),
                ("end_time", (START + timedelta(seconds=80)).isoformat()),
                ("user_id", "11"),
            ],
            ["a9", "a8", "a5"],
        ),
        # Nothing matches: an empty page, not a 404.
        (COURSE, [("user_id", "14")], []),
        (COURSE, [("event_type", "reset_to")], []),
        # The account: its courses' events, not another account's (c1).
        (ACCOUNT_400, [("user_id", "11")], ["a11", "a9", "a8", "b2", "a5", "b1", "a2", "a1"]),
        (ACCOUNT_400, [("event_source", "sis")], ["b3", "a6", "b2", "a5", "a4"]),
        (ACCOUNT_400, [("event_type", "published")], ["a9", "b2", "a3"]),
        (
            ACCOUNT_400,
            [("event_type", "published"), ("event_type", "updated"), ("event_source", "sis")],
            ["b3", "a6", "b2", "a4"],
        ),
        (
            ACCOUNT_400,
            [("event_type", "updated"), ("user_id", "11"), ("event_source", "api")],
            ["a8", "b1", "a2"],
        ),
    ],
)
async def test_filters_select_exactly_these_events(
    world: World, target: str, params: list[tuple[str, str]], expected: list[str]
) -> None:
    assert await labels(world, target, params + A) == expected


async def test_tenancy_is_unchanged_by_filters(world: World) -> None:
    # Root account 2 sees its own events of course 4001 and account 400, root 1 its own; a
    # token for both sees both, merged in order.
    user = [("user_id", "11")]
    assert await labels(world, COURSE, user, "root2") == ["x2", "x1"]
    assert await labels(world, ACCOUNT_400, [("event_type", "published")], "root2") == ["x2"]
    published = [("event_type", "published")]
    assert await labels(world, COURSE, published, "both") == ["a9", "x2", "a3"]
    both_types = [("event_type", "published"), ("event_type", "updated"), *A]
    assert await labels(world, COURSE, both_types, "both") == [
        *("a11", "a9", "a8", "x2", "a6", "x1", "a4", "a3", "a2")
    ]
    # Root 2's own course is unknown to root 1, filtered or not; so is a course nobody has.
    for target in (course_path(4005), course_path(987654), f"{ACCOUNT}405"):
        for params in ([], [("user_id", "11")], [("event_type", "published")]):
            reply = await world.api.get(target, token=world.tokens["root1"], params=params)
            assert reply.status == 404 and reply.json() == NOT_FOUND, (target, params)
    assert await labels(world, course_path(4005), [("event_source", "sis")], "root2") == ["y1"]


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


@pytest.mark.parametrize(
    ("target", "params", "expected", "kept"),
    [
        (
            COURSE,
            [
                ("user_id", "0011"),
                ("event_type", "updated"),
                ("event_type", "published"),
                ("event_type", "updated"),
                ("per_page", "2"),
            ],
            ["a11", "a9", "a8", "a2"],
            [("event_type", "published"), ("event_type", "updated"), ("user_id", "11")],
        ),
        (
            ACCOUNT_400,
            [
                ("event_source", "sis"),
                ("event_type[]", "updated"),
                ("event_type[]", "concluded"),
                ("per_page", "1"),
            ],
            ["b3", "a6", "a5", "a4"],
            [("event_type", "concluded"), ("event_type", "updated"), ("event_source", "sis")],
        ),
    ],
)
async def test_paging_through_link_keeps_the_filters(
    world: World,
    target: str,
    params: list[tuple[str, str]],
    expected: list[str],
    kept: list[tuple[str, str]],
) -> None:
    per_page = int(dict(params)["per_page"])
    reply = await world.api.get(target, token=world.tokens["root1"], params=params)
    seen: list[str] = []
    pages = 0
    while True:
        assert reply.status == 200, reply.body
        pages += 1
        seen.extend(world.ids[e["id"]] for e in reply.json()["events"])
        links = reply.links()
        for rel, url in links.items():
            # The filters in canonical form, after the window and before page and per_page.
            query = _query(url)
            assert query[:-2] == kept, (rel, url)
            assert [k for k, _ in query[-2:]] == ["page", "per_page"]
            assert query[-1] == ("per_page", str(per_page))
        if "next" not in links:
            break
        reply = await world.api.get(links["next"], token=world.tokens["root1"])
    assert seen == expected
    assert pages == -(-len(expected) // per_page)


async def test_a_source_with_reserved_characters_survives_the_link(world: World) -> None:
    reply = await world.api.get(
        COURSE, token=world.tokens["root1"], params=[("event_source", "a&b=c, d>e")]
    )
    assert reply.status == 200 and reply.json()["events"] == []
    current = reply.links()["current"]
    assert "event_source=a%26b%3Dc%2C%20d%3Ee&page=first" in current
    again = await world.api.get(current, token=world.tokens["root1"])
    assert again.status == 200 and again.links()["current"] == current


@pytest.mark.parametrize("target", [COURSE, ACCOUNT_400])
@pytest.mark.parametrize(
    ("params", "start"),
    [
        ([("event_type", "renamed")], "event_type: 'renamed' is not an event type (use one of "),
        ([("event_type", "updated"), ("event_type", "")], "event_type: '' is not an event type"),
        ([("event_type[]", "Published")], "event_type: 'Published' is not an event type"),
        ([("event_type", "updated")] * 14, "event_type: 14 values; give at most 13"),
        ([("user_id", "abc")], "user_id: 'abc' is not a user id (digits only"),
        ([("user_id", "-3")], "user_id: '-3' is not a user id"),
        ([("user_id", "0")], "user_id: '0' is out of range (use 1 to 9223372036854775807)"),
        ([("user_id", "9223372036854775808")], "user_id: '9223372036854775808' is out of range"),
        ([("event_source", "")], "event_source: empty; give a source such as api, api_in_app"),
        ([("event_source", "x" * 300)], "event_source: 'xxxx"),
    ],
)
async def test_bad_filter_values_are_400s_naming_the_parameter(
    world: World, target: str, params: list[tuple[str, str]], start: str
) -> None:
    reply = await world.api.get(target, token=world.tokens["root1"], params=params)
    assert reply.status == 400, reply.body
    body = reply.json()
    assert list(body) == ["errors"] and len(body["errors"]) == 1
    assert body["errors"][0]["message"].startswith(start), body
    if params[0][0].startswith("event_type") and len(params) < 14:
        # The allowed values are listed.
        allowed = (
            "claimed, concluded, copied_from, copied_to, created, deleted, published,"
            " reset_from, reset_to, restored, unconcluded, unpublished, updated)"
        )
        assert allowed in body["errors"][0]["message"]

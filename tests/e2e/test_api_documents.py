"""The two endpoints end to end: documents, auth, tenancy, parameters, errors, OpenAPI.

One `course-audit run` process and one data load (produced through the real Kafka) serve
every test of this module; a second process (`course-audit serve`, another time zone, a
trusted proxy) reads the same store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from jsonschema import ValidationError
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import (
    ACCOUNT,
    COURSE,
    Api,
    Stack,
    assert_same_document,
    base_of,
    course_path,
    expected_document,
    make_event,
    newest_first,
    produce,
    recent,
    shown_time,
    stack,
    wait_stored,
)

from course_audit.api.auth import TOKEN_TTL_S
from course_audit.store.tokens import lookup_token, revoke_token
from service_process import ServiceProcess
from waits import eventually, within

pytestmark = pytest.mark.e2e

DENVER = ZoneInfo("America/Denver")
NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
UNAUTHENTICATED = {
    "status": "unauthenticated",
    "errors": [{"message": "user authorization required"}],
}
INVALID = {"errors": [{"message": "Invalid access token."}]}
REVOKED = {"errors": [{"message": "Revoked access token."}]}


def course(cid: int, account: int, root: int, **fields: Any) -> dict[str, Any]:
    record = {
        "id": cid,
        "account_id": account,
        "root_account_id": root,
        "name": f"Course {cid}",
        "course_code": f"C-{cid}",
        "uuid": f"uuid{cid:012d}",
        "workflow_state": "available",
        "sis_course_id": f"SIS-{cid}",
        "enrollment_term_id": 7,
        "start_at": "2026-08-24T06:00:00Z",
        "is_public": False,
        "time_zone": "America/Denver",
        "default_view": "modules",
        "license": "private",
    }
    record.update(fields)
    return record


def user(uid: int, name: str) -> dict[str, Any]:
    first, last = name.split(" ", 1)
    return {
        "id": uid,
        "name": name,
        "sortable_name": f"{last}, {first}",
        "short_name": first,
        "sis_user_id": f"u{uid}",
        "login_id": f"{first.lower()}@example.edu",
        "created_at": "2020-08-01T12:00:00Z",
    }


def page_view(n: int, course_id: int) -> dict[str, Any]:
    return {
        "id": f"0b2f3c1e-0000-4000-8000-{n:012d}",
        "url": f"https://canvas.example.edu/courses/{course_id}/settings",
        "context_type": "Course",
        "controller": "courses",
        "action": "update",
        "interaction_seconds": 12.5,
        "created_at": "2026-03-01T10:00:00Z",
        "user_request": True,
        "render_time": 0.25,
        "user_agent": "Mozilla/5.0",
        "participated": False,
        "http_method": "put",
        "remote_ip": "10.0.0.1",
    }


@dataclass
class Data:
    """What was produced, by purpose."""

    main: list[dict[str, Any]]  # course 1001: one event of every type, and more
    moved: list[dict[str, Any]]  # course 1002: account 100, then 101
    deleted: list[dict[str, Any]]  # course 1009
    other_root: list[dict[str, Any]]  # course 2001 (root 2) and 1008 (root 1), same SIS id
    window: list[dict[str, Any]]  # course 1010: instants at the edges of windows
    day: datetime  # a UTC midnight (the date the window course's date events are about)

    @property
    def everything(self) -> list[dict[str, Any]]:
        return self.main + self.moved + self.deleted + self.other_root + self.window


def build_data() -> Data:
    t = recent(3)
    a1, a2 = user(5001, "Ada Lovelace"), user(5002, "Alan Turing")
    a2_renamed = dict(a2, name="Alan M. Turing")
    c1 = course(1001, 100, 1, sis_course_id="SIS 1001/A")
    c3, c4 = course(1003, 100, 1), course(1004, 100, 1)
    long_text = "x" * 1500

    def ms(seconds: float) -> datetime:
        return t + timedelta(seconds=seconds)

    main = [
        make_event(
            "created",
            ms(0.123),
            dict(c1, workflow_state="claimed"),
            user=a1,
            page_view=page_view(1, 1001),
            source="manual",
            created_source="manual",
            changes={
                "name": [None, "Course 1001"],
                "workflow_state": [None, "claimed"],
                "conclude_at": [None, None],
                "is_public": [False, False],
            },
        ),
        make_event(
            "updated",
            ms(10.999),
            c1,
            user=a1,
            page_view=page_view(2, 1001),
            changes={
                "name": ["Course 1001", "Biology 101"],
                "is_public": [False, True],
                "syllabus_body": ["", long_text],
                "tab_configuration": [[], [1, 2]],
                "storage_quota": [500, 1000],
                "grade_ratio": [0.5, 0.75],
            },
        ),
        make_event("published", ms(20), c1, user=a2, source="sis", sis_batch_id=42),
        make_event("unpublished", ms(30.5), c1),
        make_event("claimed", ms(40), c1, user=a1, source="api_in_app"),
        make_event("concluded", ms(50), c1, user=a1, page_view=page_view(3, 1001)),
        make_event("unconcluded", ms(60), c1, user=a1),
        make_event("copied_from", ms(70), c1, user=a1, page_view=page_view(4, 1001), related=c3),
        make_event("copied_to", ms(80), c1, user=a2, related=c4),
        make_event("reset_from", ms(90), c1, user=a1, related=dict(c3, name="Course 1003 v2")),
        make_event("reset_to", ms(100), c1, user=a1, related=c4),
        make_event("deleted", ms(110), dict(c1, workflow_state="deleted"), user=a1),
        make_event("restored", ms(120), c1, user=a1),
        make_event(
            "updated",
            ms(130),
            dict(c1, name="Biology 102"),
            user=a2_renamed,
            page_view=page_view(5, 1001),
            changes={"name": ["Biology 101", "Biology 102"]},
        ),
    ]
    c2 = course(1002, 100, 1)
    moved = [
        make_event("updated", ms(200), c2, user=a1),
        make_event("published", ms(210), c2, user=a1),
        make_event(
            "updated",
            ms(220),
            dict(c2, account_id=101),
            user=a1,
            changes={"account_id": [100, 101]},
        ),
        make_event("concluded", ms(230), dict(c2, account_id=101), user=a1),
    ]
    c9 = course(1009, 100, 1)
    deleted = [
        make_event("created", ms(300), c9, user=a1, changes={"name": [None, "Course 1009"]}),
        make_event("deleted", ms(310), dict(c9, workflow_state="deleted"), user=a1),
    ]
    other_root = [
        make_event("created", ms(400), course(2001, 200, 2, sis_course_id="SHARED")),
        make_event("updated", ms(410), course(2001, 200, 2, sis_course_id="SHARED")),
        make_event("updated", ms(420), course(1008, 102, 1, sis_course_id="SHARED")),
    ]
    day = (t - timedelta(days=2)).replace(hour=0, minute=0)
    denver_midnight = datetime(day.year, day.month, day.day, tzinfo=DENVER).astimezone(UTC)
    w = ms(1000)
    c10 = course(1010, 103, 1)
    window = [
        make_event("updated", at, c10)
        for at in [
            day,
            day + timedelta(hours=12),
            day + timedelta(days=1),
            denver_midnight - timedelta(seconds=1),
            denver_midnight,
            w,
            w + timedelta(milliseconds=500),
            w + timedelta(seconds=1),
            w + timedelta(milliseconds=2999),
            w + timedelta(seconds=3),
        ]
    ]
    return Data(main, moved, deleted, other_root, window, day)


@dataclass
class World:
    stack: Stack
    api: Api
    data: Data
    tokens: dict[str, str]
    denver: Api
    denver_service: ServiceProcess

    @property
    def base(self) -> str:
        return self.stack.service.base_url


@pytest.fixture(scope="module")
async def world(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[World]:
    log_dir: Path = tmp_path_factory.mktemp("api-documents")
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir) as s:
        data = build_data()
        await produce(kafka_bootstrap, s.topic, data.everything)
        await wait_stored(s.db_url, [e["event_id"] for e in data.everything])
        tokens = {
            "root1": await s.token("root 1", [1]),
            "root2": await s.token("root 2", [2]),
            "both": await s.token("both", [1, 2]),
        }
        # A second, stateless replica: another time zone, behind a trusted proxy.
        denver_service = ServiceProcess(
            "serve",
            {
                "AUDIT_DATABASE_URL": s.db_url,
                "AUDIT_TIME_ZONE": "America/Denver",
                "AUDIT_TRUST_PROXY": "true",
            },
            log_dir / "serve.log",
        )
        denver_service.start()
        denver: Api | None = None
        try:
            await denver_service.wait_ready()
            denver = Api(denver_service.base_url)
            await denver.load_document()
            yield World(s, s.api, data, tokens, denver, denver_service)
        finally:
            if denver is not None:
                await denver.close()
            denver_service.stop()


# ------------------------------------------------------------------ documents


async def test_every_event_type_is_rendered_exactly(world: World) -> None:
    reply = await world.api.get(
        course_path(1001), token=world.tokens["root1"], params={"per_page": "100"}
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    data = world.data
    expected = expected_document(newest_first(data.main), data.everything, world.base)
    assert_same_document(reply.json(), expected)
    types = {e["event_type"] for e in reply.json()["events"]}
    assert len(types) == 13
    body = reply.json()
    updated = next(e for e in body["events"] if "syllabus_body" in e["event_data"])
    # Blank pairs dropped, long strings cut to 1000 characters, arrays as JSON text.
    assert len(updated["event_data"]["syllabus_body"][1]) == 1000
    assert updated["event_data"]["tab_configuration"] == ["[]", "[1,2]"]
    created = body["events"][-1]
    assert created["event_data"] == {
        "name": [None, "Course 1001"],
        "workflow_state": [None, "claimed"],
        "created_source": "manual",
    }
    # The raw body is compact JSON (no spaces between tokens).
    assert b'{"links":{"events.course":"' in reply.body and b'": ' not in reply.body


async def test_copy_and_reset_links_and_linked_snapshots(world: World) -> None:
    reply = await world.api.get(
        course_path(1001), token=world.tokens["root1"], params={"per_page": "100"}
    )
    body = reply.json()
    by_type = {e["event_type"]: e for e in body["events"]}
    assert list(by_type["copied_from"]["links"]) == [
        "copied_from",
        "course",
        "page_view",
        "user",
        "sis_batch",
    ]
    assert by_type["copied_from"]["links"]["copied_from"] == 1003
    assert by_type["copied_to"]["links"]["copied_to"] == 1004
    assert by_type["reset_from"]["links"]["reset_from"] == 1003
    assert by_type["reset_to"]["links"]["reset_to"] == 1004
    assert by_type["published"]["links"]["sis_batch"] == 42
    courses = {c["id"]: c for c in body["linked"]["courses"]}
    assert sorted(courses) == [1001, 1003, 1004]  # each once, copy/reset targets included
    assert courses[1001]["name"] == "Biology 102"  # the latest snapshot
    assert courses[1003]["name"] == "Course 1003 v2"
    users = {u["id"]: u for u in body["linked"]["users"]}
    assert users[5002]["name"] == "Alan M. Turing"
    assert len(body["linked"]["page_views"]) == 5


async def test_pages_carry_only_their_own_linked_objects(world: World) -> None:
    ordered = newest_first(world.data.main)
    url: str | None = course_path(1001) + "?per_page=5"
    pages = 0
    while url is not None:
        reply = await world.api.get(url, token=world.tokens["root1"])
        chunk = ordered[pages * 5 : pages * 5 + 5]
        expected = expected_document(chunk, world.data.everything, world.base)
        assert_same_document(reply.json(), expected)
        url = reply.links().get("next")
        pages += 1
    assert pages == 3


async def test_empty_results_are_complete_documents(world: World) -> None:
    empty = {
        "links": {
            "events.course": f"{world.base}/api/v1/courses/{{events.course}}",
            "events.user": None,
            "events.sis_batch": None,
        },
        "events": [],
        "linked": {"page_views": [], "courses": [], "users": []},
    }
    # Course 1003 is known only as a copy source: no events of its own.
    reply = await world.api.get(course_path(1003), token=world.tokens["root1"])
    assert reply.status == 200
    assert_same_document(reply.json(), empty)
    assert list(reply.links()) == ["current", "first"]
    far_past = await world.api.get(
        course_path(1001), token=world.tokens["root1"], params={"end_time": "2001-01-01"}
    )
    assert far_past.status == 200
    assert_same_document(far_past.json(), empty)


async def test_string_ids(world: World) -> None:
    reply = await world.api.get(
        course_path(1001),
        token=world.tokens["root1"],
        params={"per_page": "100"},
        headers={"Accept": "application/json+canvas-string-ids"},
    )
    body = reply.json()
    course_1001 = next(c for c in body["linked"]["courses"] if c["id"] == "1001")
    assert course_1001["account_id"] == "100" and course_1001["root_account_id"] == "1"
    assert course_1001["enrollment_term_id"] == "7"
    assert {u["id"] for u in body["linked"]["users"]} == {"5001", "5002"}
    assert all(isinstance(e["links"]["course"], int) for e in body["events"])


async def test_head_is_like_get_without_a_body(world: World) -> None:
    get = await world.api.get(course_path(1001), token=world.tokens["root1"])
    head = await world.api.get(course_path(1001), token=world.tokens["root1"], method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Link"] == get.headers["Link"]
    assert head.headers["Content-Type"] == get.headers["Content-Type"]


# ------------------------------------------------------------------ accounts


async def test_account_endpoint_has_only_direct_account_events(world: World) -> None:
    data = world.data
    in_100 = data.main + data.moved[:2] + data.deleted
    reply = await world.api.get(
        ACCOUNT + "100", token=world.tokens["root1"], params={"per_page": "100"}
    )
    assert reply.status == 200
    expected = expected_document(newest_first(in_100), data.everything, world.base)
    assert_same_document(reply.json(), expected)
    # The moved course shows its latest snapshot (now in account 101) in linked.
    moved = next(c for c in reply.json()["linked"]["courses"] if c["id"] == 1002)
    assert moved["account_id"] == 101

    after_move = await world.api.get(ACCOUNT + "101", token=world.tokens["root1"])
    expected = expected_document(newest_first(data.moved[2:]), data.everything, world.base)
    assert_same_document(after_move.json(), expected)
    link = after_move.links()["current"]
    assert link == f"{world.base}{ACCOUNT}101?page=first&per_page=10"


async def test_account_of_another_root_or_unknown_is_404(world: World) -> None:
    for account, token in [
        ("200", "root1"),
        ("100", "root2"),
        ("999", "both"),
        ("abc", "both"),
        ("99999999999999999999", "both"),
        ("-1", "both"),
    ]:
        reply = await world.api.get(ACCOUNT + account, token=world.tokens[token])
        assert (reply.status, reply.json()) == (404, NOT_FOUND), account
        assert reply.headers["Cache-Control"] == "no-store"
    ok = await world.api.get(ACCOUNT + "200", token=world.tokens["root2"])
    assert ok.status == 200 and len(ok.json()["events"]) == 2


# ------------------------------------------------------------------ auth and tenancy


async def test_missing_token(world: World) -> None:
    for path in (course_path(1001), ACCOUNT + "100", course_path(424242)):
        reply = await world.api.get(path)
        assert (reply.status, reply.json()) == (401, UNAUTHENTICATED)
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="course-audit"'
        assert reply.headers["Cache-Control"] == "no-store"
    basic = await world.api.get(course_path(1001), headers={"Authorization": "Basic dTpw"})
    assert (basic.status, basic.json()) == (401, UNAUTHENTICATED)


async def test_unknown_token(world: World) -> None:
    by_header = await world.api.get(course_path(1001), token="not-a-token")
    by_param = await world.api.get(course_path(1001), params={"access_token": "nope"})
    for reply in (by_header, by_param):
        assert (reply.status, reply.json()) == (401, INVALID)
        assert reply.headers["WWW-Authenticate"].startswith('Bearer realm="course-audit"')
        assert reply.headers["Cache-Control"] == "no-store"


async def test_revoked_token_stops_working_within_seconds(world: World) -> None:
    token = await world.stack.token("soon revoked", [1])
    assert (await world.api.get(course_path(1001), token=token)).status == 200  # now cached
    # The service cached the token before it answered; the cache entry is gone TOKEN_TTL_S
    # after that on the same (system-wide monotonic) clock.
    cached_by = time.monotonic()
    conn = await asyncpg.connect(world.stack.db_url)
    try:
        info = await lookup_token(conn, token)
        assert info is not None
        assert await revoke_token(conn, info.id)
    finally:
        await conn.close()
    # A revocation takes effect within TOKEN_TTL_S: polled until refused, by then at the latest
    # (1 s more for the requests themselves).
    reply = await eventually(
        lambda: world.api.get(course_path(1001), token=token),
        lambda r: r.status != 200,
        max(0.0, cached_by + TOKEN_TTL_S - time.monotonic()) + 1.0,
        "the revoked token to be refused",
    )
    assert reply.status == 401
    assert reply.json() == REVOKED
    assert reply.headers["WWW-Authenticate"].startswith('Bearer realm="course-audit"')
    assert reply.headers["Cache-Control"] == "no-store"


async def test_access_token_parameter_works_and_is_never_echoed(world: World) -> None:
    token = world.tokens["root1"]
    reply = await world.api.get(course_path(1001), params={"access_token": token, "per_page": "2"})
    assert reply.status == 200
    assert "access_token" not in reply.headers["Link"] and token not in reply.headers["Link"]
    assert "access_token" not in reply.body.decode()


async def test_another_tenants_course_is_404_like_an_unknown_one(world: World) -> None:
    cases = [
        (course_path(1001), "root2"),
        (course_path(2001), "root1"),
        (course_path(424242), "both"),
        (course_path("abc"), "both"),
        (course_path("sis_course_id:"), "both"),
        (course_path(0), "both"),
        (course_path("99999999999999999999"), "both"),
        (course_path("sis_course_id:SIS 1001/A"), "root2"),
    ]
    for path, token in cases:
        reply = await world.api.get(path, token=world.tokens[token])
        assert (reply.status, reply.json()) == (404, NOT_FOUND), path
        assert reply.headers["Cache-Control"] == "no-store"


async def test_a_deleted_course_is_still_served(world: World) -> None:
    reply = await world.api.get(course_path(1009), token=world.tokens["root1"])
    assert reply.status == 200
    expected = expected_document(
        newest_first(world.data.deleted), world.data.everything, world.base
    )
    assert_same_document(reply.json(), expected)
    assert reply.json()["events"][0]["event_type"] == "deleted"


async def test_sis_course_id_lookups(world: World) -> None:
    by_sis = await world.api.get(
        course_path("sis_course_id:SIS 1001/A"),
        token=world.tokens["root1"],
        params={"per_page": "3"},
    )
    by_id = await world.api.get(
        course_path(1001), token=world.tokens["root1"], params={"per_page": "3"}
    )
    assert by_sis.status == 200 and by_sis.body == by_id.body
    # Link URLs use the numeric id.
    assert by_sis.headers["Link"] == by_id.headers["Link"]
    assert by_sis.links()["current"].startswith(f"{world.base}{COURSE}1001?")
    # The same SIS id in two root accounts: each token sees its own course.
    for token, expected in [("root1", 1008), ("root2", 2001), ("both", 1008)]:
        reply = await world.api.get(course_path("sis_course_id:SHARED"), token=world.tokens[token])
        assert reply.status == 200
        assert {e["links"]["course"] for e in reply.json()["events"]} == {expected}
        assert reply.links()["first"] == f"{world.base}{COURSE}{expected}?page=first&per_page=10"
    missing = await world.api.get(course_path("sis_course_id:NO-SUCH"), token=world.tokens["both"])
    assert (missing.status, missing.json()) == (404, NOT_FOUND)


# ------------------------------------------------------------------ parameters


async def window_ids(api: Api, token: str, **params: str) -> list[str]:
    reply = await api.get(course_path(1010), token=token, params={"per_page": "100", **params})
    assert reply.status == 200, reply.body
    return [e["id"] for e in reply.json()["events"]]


def ids(events: list[dict[str, Any]], *indexes: int) -> list[str]:
    return [e["event_id"] for e in newest_first([events[i] for i in indexes])]


async def test_start_and_end_are_inclusive_with_and_without_offsets(world: World) -> None:
    w_events = world.data.window
    token = world.tokens["root1"]
    w = datetime.fromisoformat(w_events[5]["created_at"].replace("Z", "+00:00"))
    w_text = shown_time(w)
    plus2 = w.astimezone(ZoneInfo("Etc/GMT-2")).isoformat()  # the same instant at +02:00
    minus5 = (w + timedelta(seconds=1)).astimezone(ZoneInfo("Etc/GMT+5")).isoformat()
    assert plus2.endswith("+02:00") and minus5.endswith("-05:00")
    # [w, w+1s]: w, w+0.5 s (shown as w) and w+1 s; not w+2.999 s.
    assert await window_ids(
        world.api, token, start_time=w_text, end_time=shown_time(w + timedelta(seconds=1))
    ) == ids(w_events, 5, 6, 7)
    assert await window_ids(world.api, token, start_time=plus2, end_time=minus5) == ids(
        w_events, 5, 6, 7
    )
    # A single second: both events shown at that second.
    assert await window_ids(world.api, token, start_time=w_text, end_time=w_text) == ids(
        w_events, 5, 6
    )
    assert await window_ids(
        world.api,
        token,
        start_time=shown_time(w + timedelta(seconds=2)),
        end_time=shown_time(w + timedelta(seconds=3)),
    ) == ids(w_events, 8, 9)
    # Offset-less date-time: read in the service's zone (UTC here).
    naive = w.replace(tzinfo=None).isoformat()
    assert await window_ids(world.api, token, start_time=naive, end_time=naive) == ids(
        w_events, 5, 6
    )


async def test_date_only_parameters(world: World) -> None:
    events, day = world.data.window, world.data.day
    token = world.tokens["root1"]
    d0, d1 = day.date().isoformat(), (day + timedelta(days=1)).date().isoformat()
    # A date is its midnight: end_time=D includes only the events of D's midnight second.
    assert await window_ids(world.api, token, start_time=d0, end_time=d0) == ids(events, 0)
    assert await window_ids(world.api, token, start_time=d0, end_time=d1) == ids(
        events, 0, 1, 2, 3, 4
    )
    assert await window_ids(world.api, token, start_time=d1, end_time=d1) == ids(events, 2)


async def test_zone_of_the_service_reads_and_renders_times(world: World) -> None:
    events, day = world.data.window, world.data.day
    token = world.tokens["root1"]
    d0 = day.date().isoformat()
    # In Denver, the date means Denver's midnight: only the event at that instant.
    got = await window_ids(world.denver, token, start_time=d0, end_time=d0)
    assert got == ids(events, 4)
    reply = await world.denver.get(
        course_path(1010), token=token, params={"start_time": d0, "end_time": d0}
    )
    offset = datetime(day.year, day.month, day.day, tzinfo=DENVER).isoformat()[-6:]
    assert reply.json()["events"][0]["created_at"] == f"{d0}T00:00:00{offset}"
    # Every created_at is whole seconds in Denver time.
    for obj, event in zip(
        newest_first(events),
        (await world.denver.get(course_path(1010), token=token, params={"per_page": "100"})).json()[
            "events"
        ],
        strict=True,
    ):
        at = datetime.fromisoformat(obj["created_at"].replace("Z", "+00:00"))
        assert event["created_at"] == shown_time(at, DENVER)


async def test_start_after_end_is_an_empty_200(world: World) -> None:
    reply = await world.api.get(
        course_path(1001),
        token=world.tokens["root1"],
        params={"start_time": "2026-03-02", "end_time": "2026-03-01"},
    )
    assert reply.status == 200 and reply.json()["events"] == []
    assert list(reply.links()) == ["current", "first"]
    assert reply.links()["current"] == (
        f"{world.base}{COURSE}1001?start_time=2026-03-02&end_time=2026-03-01&page=first&per_page=10"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("start_time", "yesterday"),
        ("start_time", "2026-13-01"),
        ("end_time", "2026-02-30"),
        ("end_time", ""),
        ("per_page", "0"),
        ("per_page", "-3"),
        ("per_page", "ten"),
        ("per_page", "2.5"),
        ("page", "2"),
        ("page", "last"),
        ("page", "bookmark:!!"),
        ("page", "bookmark:e30"),
    ],
)
async def test_malformed_parameters_are_400s_naming_them(
    world: World, name: str, value: str
) -> None:
    for path in (course_path(1001), ACCOUNT + "100"):
        reply = await world.api.get(path, token=world.tokens["root1"], params={name: value})
        assert reply.status == 400, (name, value)
        body = reply.json()
        assert list(body) == ["errors"] and len(body["errors"]) == 1
        assert body["errors"][0]["message"].startswith(f"{name}: ")
        assert reply.headers["Cache-Control"] == "no-store"


async def test_link_header(world: World) -> None:
    token = world.tokens["root1"]
    params = {
        "start_time": "2000-01-01T00:00:00+00:00",
        "end_time": "2100-01-01",
        "per_page": "4",
        "access_token": token,
    }
    first = await world.api.get(course_path("sis_course_id:SIS 1001/A"), params=params)
    links = first.links()
    prefix = f"{world.base}{COURSE}1001?start_time=2000-01-01T00:00:00%2B00:00&end_time=2100-01-01"
    assert links["current"] == f"{prefix}&page=first&per_page=4"
    assert links["first"] == f"{prefix}&page=first&per_page=4"
    assert links["next"].startswith(f"{prefix}&page=bookmark:")
    assert links["next"].endswith("&per_page=4")
    second = await world.api.get(links["next"], token=token)
    assert second.links()["current"] == links["next"]
    assert (
        second.json()["events"]
        == (await world.api.get(course_path(1001), token=token, params={"per_page": "8"})).json()[
            "events"
        ][4:]
    )
    capped = await world.api.get(course_path(1001), token=token, params={"per_page": "500"})
    assert capped.links()["current"].endswith("page=first&per_page=100")
    assert len(capped.json()["events"]) == len(world.data.main)
    assert "next" not in capped.links()


async def test_forwarded_headers_only_behind_a_trusted_proxy(world: World) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "audit.example.edu"}
    trusted = await world.denver.get(
        course_path(1001), token=world.tokens["root1"], headers=headers
    )
    assert trusted.links()["first"] == (
        f"https://audit.example.edu{COURSE}1001?page=first&per_page=10"
    )
    assert trusted.json()["links"]["events.course"] == (
        "https://audit.example.edu/api/v1/courses/{events.course}"
    )
    untrusted = await world.api.get(course_path(1001), token=world.tokens["root1"], headers=headers)
    assert base_of(untrusted.links()["first"]) == world.base


# ------------------------------------------------------------------ errors and OpenAPI


async def test_unknown_routes_and_methods_answer_json(world: World) -> None:
    for path in ("/nope", "/api/v1/audit/course/courses", COURSE + "1001/", "/api/v1/courses/1"):
        reply = await world.api.get(path, token=world.tokens["root1"])
        assert (reply.status, reply.json()) == (404, NOT_FOUND), path
        assert reply.headers["Cache-Control"] == "no-store"
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        reply = await world.api.get(course_path(1001), token=world.tokens["root1"], method=method)
        assert reply.status == 405, method
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
        assert reply.json()["errors"][0]["message"]
        assert reply.headers["Cache-Control"] == "no-store"
        assert set(reply.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_odd_input_never_gets_html_or_a_traceback(world: World) -> None:
    token = world.tokens["root1"]
    for path in (
        COURSE + "%ff%fe",
        COURSE + "1001?start_time=%ff",
        COURSE + "1001?per_page=%00",
        COURSE + "sis_course_id:%00",
        "/%2e%2e/%2e%2e/etc/passwd",
    ):
        reply = await world.api.get(path, token=token, headers={"Accept": "text/html"})
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8", path
        assert reply.status in (200, 400, 404), path
        assert b"Traceback" not in reply.body and b"<html" not in reply.body.lower()
    # Malformed HTTP is answered before any handler: JSON all the same.
    reader, writer = await asyncio.open_connection("127.0.0.1", world.stack.service.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    raw = await within(reader.read(), 30, "the answer to a request that is not HTTP")
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    assert b"application/json" in head and body.startswith(b'{"errors":[{"message":')


async def test_openapi_document_is_valid(world: World) -> None:
    reply = await world.api.get("/openapi.json")
    document = reply.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": world.base}]
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert (await world.api.get(path)).status == 200


async def request_counts(api: Api) -> dict[tuple[str, str], float]:
    """course_audit_http_requests_total by (route, status), as /metrics shows it now."""
    text = (await api.get("/metrics")).body.decode()
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "course_audit_http_requests_total"
    }


async def test_metrics_count_api_requests(world: World) -> None:
    course_route = COURSE + "{course_id}"
    before = await request_counts(world.api)
    await world.api.get(course_path(1001), token=world.tokens["root1"])
    await world.api.get(course_path(1001))
    await world.api.get(course_path(1001))
    await world.api.get("/nope")
    after = await request_counts(world.api)
    added = {key: after[key] - before.get(key, 0.0) for key in after}
    # This test's requests, the first /metrics read included; nothing else asks this process.
    assert {key: n for key, n in added.items() if n} == {
        (course_route, "200"): 1,
        (course_route, "401"): 2,
        ("unmatched", "404"): 1,
        ("/metrics", "200"): 1,
    }


async def test_every_response_is_checked_against_the_openapi_document(world: World) -> None:
    token = world.tokens["root1"]
    requests: list[tuple[str, dict[str, Any]]] = [
        (course_path(1001), {"token": token}),
        (course_path(1001), {"token": token, "method": "HEAD"}),
        (course_path(1001), {}),
        (course_path(1001), {"token": "not-a-token"}),
        (course_path(1001), {"token": token, "params": {"per_page": "0"}}),
        (course_path(424242), {"token": token}),
        (course_path(1001), {"token": token, "method": "POST"}),
        (ACCOUNT + "100", {"token": token}),
        ("/nope", {}),
        ("/health/live", {}),
        ("/metrics", {}),
    ]
    statuses = []
    for base in (world.base, world.denver_service.base_url):
        api = Api(base)
        try:
            await api.load_document()
            for path, kw in requests:
                statuses.append((await api.get(path, **kw)).status)
            # The document itself, then each response of this test: every one was checked.
            assert api.checker is not None and api.checker.checked == 1 + len(requests)
        finally:
            await api.close()
    assert statuses == 2 * [200, 200, 401, 401, 400, 404, 405, 200, 404, 200, 200]

    # And a check can fail: a body off the schema, a status the document does not list.
    reply = await world.api.get(course_path(1001), token=token)
    checker = world.api.checker
    assert checker is not None
    broken = reply.body.replace(b'"events":[', b'"events":7,"x":[', 1)
    with pytest.raises(ValidationError):
        checker.check("GET", course_path(1001), 200, reply.headers, broken)
    with pytest.raises(AssertionError, match="418 is not documented"):
        checker.check("GET", course_path(1001), 418, reply.headers, reply.body)

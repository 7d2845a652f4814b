"""Tenancy against producer data, end to end (docs/api.md#tenancy, docs/store.md#tenant-scope).

Producers that disagree about a course's root account, a user acting in two root accounts
with a login in each, a copy between root accounts: produced through the real Kafka into a
real `course-audit run`, read back through the API with one token per root account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import (
    ACCOUNT,
    Api,
    Stack,
    course_path,
    make_event,
    produce,
    stack,
    wait_stored,
)

pytestmark = pytest.mark.e2e

NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def course(cid: int, account: int, root: int, name: str) -> dict[str, Any]:
    return {
        "id": cid,
        "account_id": account,
        "root_account_id": root,
        "name": name,
        "sis_course_id": f"SIS-{cid}-{root}",
    }


def user(login: str, sis: str) -> dict[str, Any]:
    return {"id": 7, "name": "Ann Lee", "login_id": login, "sis_user_id": sis}


@dataclass
class World:
    stack: Stack
    api: Api
    tokens: dict[str, str]
    ids: dict[str, str]


@pytest.fixture(scope="module")
async def world(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[World]:
    log_dir: Path = tmp_path_factory.mktemp("api-tenancy")
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir) as s:
        # Root 1's course 950 and its history; then one newer event that claims course 950
        # (and account 100) for root 2, carrying root 2's view of user 7.
        history = [
            make_event(
                "updated",
                T0 + timedelta(minutes=i),
                course(950, 100, 1, "Biology"),
                user=user("ann@one.edu", "one-7"),
                changes={"name": [f"B{i}", f"B{i + 1}"]},
            )
            for i in range(3)
        ]
        claim = make_event(
            "updated",
            T0 + timedelta(hours=1),
            course(950, 100, 2, "Hijacked"),
            user=user("ann@two.edu", "two-7"),
        )
        # A copy from root 1's course 951 to root 2's course 2951: root 1 links it by id only.
        copy = make_event(
            "copied_to",
            T0 + timedelta(hours=2),
            course(951, 100, 1, "Chemistry"),
            related=course(2951, 200, 2, "Their chemistry"),
        )
        # Root 2's own course, which nobody else claims.
        theirs = make_event("updated", T0 + timedelta(hours=3), course(2000, 200, 2, "Art"))
        # The history is stored first, so that the claim is the second root account's
        # (claims first made in one batch are reported for each root account).
        await produce(kafka_bootstrap, s.topic, history)
        await wait_stored(s.db_url, [e["event_id"] for e in history])
        produced = [claim, copy, theirs]
        await produce(kafka_bootstrap, s.topic, produced)
        await wait_stored(s.db_url, [e["event_id"] for e in produced])
        tokens = {
            "root1": await s.token("root 1", [1]),
            "root2": await s.token("root 2", [2]),
            "both": await s.token("both", [1, 2]),
        }
        ids = {
            "claim": claim["event_id"],
            "copy": copy["event_id"],
            "theirs": theirs["event_id"],
            **{f"history{i}": e["event_id"] for i, e in enumerate(history)},
        }
        yield World(s, s.api, tokens, ids)


def event_ids(reply_json: dict[str, Any]) -> list[str]:
    return [e["id"] for e in reply_json["events"]]


async def test_a_course_claimed_by_another_root_keeps_its_history_with_its_own_root(
    world: World,
) -> None:
    w = world
    mine = await w.api.get(course_path(950), token=w.tokens["root1"])
    assert mine.status == 200
    assert event_ids(mine.json()) == [w.ids["history2"], w.ids["history1"], w.ids["history0"]]
    assert [c["name"] for c in mine.json()["linked"]["courses"]] == ["Biology"]
    theirs = await w.api.get(course_path(950), token=w.tokens["root2"])
    assert theirs.status == 200
    assert event_ids(theirs.json()) == [w.ids["claim"]]
    assert [c["name"] for c in theirs.json()["linked"]["courses"]] == ["Hijacked"]
    both = await w.api.get(course_path(950), token=w.tokens["both"])
    assert event_ids(both.json()) == [
        w.ids["claim"],
        w.ids["history2"],
        w.ids["history1"],
        w.ids["history0"],
    ]


async def test_an_account_claimed_by_two_roots_shows_each_its_own_events(world: World) -> None:
    w = world
    mine = await w.api.get(ACCOUNT + "100", token=w.tokens["root1"])
    assert event_ids(mine.json()) == [
        w.ids["copy"],
        w.ids["history2"],
        w.ids["history1"],
        w.ids["history0"],
    ]
    theirs = await w.api.get(ACCOUNT + "100", token=w.tokens["root2"])
    assert event_ids(theirs.json()) == [w.ids["claim"]]


async def test_each_root_sees_the_login_ids_it_sent(world: World) -> None:
    w = world
    mine = await w.api.get(course_path(950), token=w.tokens["root1"])
    assert [(u["login_id"], u["sis_user_id"]) for u in mine.json()["linked"]["users"]] == [
        ("ann@one.edu", "one-7")
    ]
    theirs = await w.api.get(course_path(950), token=w.tokens["root2"])
    assert [(u["login_id"], u["sis_user_id"]) for u in theirs.json()["linked"]["users"]] == [
        ("ann@two.edu", "two-7")
    ]


async def test_a_copy_to_another_root_is_linked_by_id_only(world: World) -> None:
    w = world
    for token in ("root1", "both"):
        reply = await w.api.get(course_path(951), token=w.tokens[token])
        document = reply.json()
        (event,) = document["events"]
        assert event["links"]["copied_to"] == 2951
        assert [c["id"] for c in document["linked"]["courses"]] == [951]
    # Root 2's course 2951 was only ever named by root 1's producer: root 2 has no events of
    # it and no snapshot from root 1, so it is not known to root 2 either.
    assert (await w.api.get(course_path(2951), token=w.tokens["root2"])).status == 404


async def test_another_tenants_course_is_answered_as_an_unknown_one(world: World) -> None:
    w = world
    for path in (course_path(2000), course_path(2951), ACCOUNT + "200"):
        foreign = await w.api.get(path, token=w.tokens["root1"])
        unknown = await w.api.get(path + "999", token=w.tokens["root1"])
        assert (foreign.status, foreign.json()) == (404, NOT_FOUND), path
        assert (unknown.status, unknown.json()) == (404, NOT_FOUND), path
        assert foreign.headers.get("Content-Type") == unknown.headers.get("Content-Type")
    own = await w.api.get(course_path(2000), token=w.tokens["root2"])
    assert event_ids(own.json()) == [w.ids["theirs"]]
    # The same through a SIS id: root 2's course is not root 1's.
    by_sis = await w.api.get(course_path("sis_course_id:SIS-2000-2"), token=w.tokens["root1"])
    assert (by_sis.status, by_sis.json()) == (404, NOT_FOUND)


async def test_the_producer_data_that_claimed_a_course_is_reported(world: World) -> None:
    w = world
    lines = await w.stack.service.wait_log("course stored under a second root account", 30)
    assert any('"id": 950' in line or '"id":950' in line for line in lines), lines
    assert any("root_account_id" in line and "[1]" in line for line in lines), lines
    await w.stack.service.wait_log("account stored under a second root account", 30)
    reply = await w.api.get("/metrics")
    claims = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        if family.name == "course_audit_tenant_claims"
        for sample in family.samples
        if sample.name == "course_audit_tenant_claims_total"
    }
    assert claims == {"course": 1.0, "account": 1.0}

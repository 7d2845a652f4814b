"""Realistic sample events as JSON objects (the `produce` input format), for demos and tests.

The mix follows what a Canvas instance records: mostly updates, some publishes and
concludes, occasional copies and resets. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

#: Relative frequency of each event type in the generated stream.
MIX: dict[str, int] = {
    "updated": 50,
    "created": 8,
    "published": 8,
    "concluded": 5,
    "unconcluded": 2,
    "unpublished": 2,
    "claimed": 2,
    "deleted": 2,
    "restored": 1,
    "copied_from": 4,
    "copied_to": 4,
    "reset_from": 1,
    "reset_to": 1,
}
SOURCES = ["manual", "api", "sis", "api_in_app"]
SUBJECTS = ["Biology", "Chemistry", "Algebra", "History", "Literature", "Physics", "Art"]
NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov"]


@dataclass
class World:
    """Courses, accounts and users the events refer to."""

    rng: random.Random
    root_accounts: list[int]
    accounts: dict[int, int]  # account id -> root account id
    courses: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls, *, seed: int = 1, courses: int = 5, accounts: int = 2, roots: int = 2, users: int = 5
    ) -> World:
        rng = random.Random(seed)
        root_ids = [1 + i for i in range(roots)]
        account_ids = {100 + i: root_ids[i % roots] for i in range(accounts)}
        world = cls(rng, root_ids, account_ids)
        for i in range(users):
            name = NAMES[i % len(NAMES)]
            world.users.append(
                {
                    "id": 5000 + i,
                    "name": name,
                    "sortable_name": ", ".join(reversed(name.split(" ", 1))),
                    "short_name": name.split()[0],
                    "sis_user_id": f"u{5000 + i}",
                    "login_id": f"user{i}@example.edu",
                    "created_at": "2020-08-01T12:00:00Z",
                }
            )
        for i in range(courses):
            world.add_course(1000 + i, list(account_ids)[i % accounts])
        return world

    def add_course(self, course_id: int, account_id: int) -> dict[str, Any]:
        subject = SUBJECTS[course_id % len(SUBJECTS)]
        course = {
            "id": course_id,
            "account_id": account_id,
            "root_account_id": self.accounts.get(account_id, self.root_accounts[0]),
            "name": f"{subject} {100 + course_id % 300}",
            "course_code": f"{subject[:4].upper()}-{course_id}",
            "uuid": uuid.UUID(int=self.rng.getrandbits(128)).hex,
            "workflow_state": "available",
            "sis_course_id": f"SIS-{course_id}",
            "integration_id": None,
            "enrollment_term_id": 1,
            "start_at": "2026-08-24T06:00:00Z",
            "end_at": "2026-12-18T06:00:00Z",
            "created_at": "2026-07-01T15:30:00Z",
            "is_public": False,
            "time_zone": "America/Denver",
            "default_view": "modules",
            "license": "private",
        }
        self.courses[course_id] = course
        return course


def _event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def sample_event(
    world: World, event_type: str, created_at: datetime, course_id: int | None = None
) -> dict[str, Any]:
    """One event of `event_type` as a `produce` JSON object."""
    rng = world.rng
    cid = course_id if course_id is not None else rng.choice(list(world.courses))
    course = dict(world.courses[cid])
    user = rng.choice(world.users) if rng.random() < 0.9 else None
    source = rng.choice(SOURCES)
    event: dict[str, Any] = {
        "event_type": event_type,
        "event_id": _event_id(rng),
        "created_at": created_at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "event_source": source,
        "course": course,
        "user": user,
        "page_view": None,
        "sis_batch_id": rng.randint(1, 500) if source == "sis" else None,
    }
    if user is not None and source != "sis":
        event["page_view"] = {
            "id": _event_id(rng),
            "url": f"https://canvas.example.edu/courses/{cid}/settings",
            "context_type": "Course",
            "asset_type": None,
            "controller": "courses",
            "action": "update",
            "interaction_seconds": round(rng.random() * 30, 2),
            "created_at": created_at.astimezone(UTC).isoformat(timespec="seconds"),
            "user_request": True,
            "render_time": round(rng.random(), 3),
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "participated": False,
            "http_method": "put",
            "remote_ip": f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        }
    if event_type in ("created", "updated"):
        old_name = course["name"]
        # The term in parentheses is replaced, not appended: a name that grew with every
        # update would pass Canvas's 255 characters (docs/messages.md#field-sizes).
        base, _, term = old_name.partition(" (")
        terms = [t for t in ("Fall", "Spring", "Online") if f"{t})" != term]
        new_name = f"{base} ({rng.choice(terms)})"
        changes: dict[str, Any] = {"name": [old_name, new_name]}
        if rng.random() < 0.5:
            changes["is_public"] = [False, True]
        if rng.random() < 0.3:
            changes["start_at"] = ["2026-08-24T06:00:00Z", "2026-08-31T06:00:00Z"]
        if event_type == "created":
            changes = {"name": [None, old_name], "workflow_state": [None, "claimed"]}
            event["created_source"] = rng.choice(["manual", "api", "sis", None])
        else:
            world.courses[cid]["name"] = new_name
            course["name"] = new_name
        event["changes"] = changes
    if event_type in ("copied_from", "copied_to", "reset_from", "reset_to"):
        others = [c for c in world.courses if c != cid] or [cid]
        event[event_type] = dict(world.courses[rng.choice(others)])
    return event


def sample_stream(
    world: World, count: int, *, start: datetime | None = None, spacing_ms: int = 1500
) -> Iterator[dict[str, Any]]:
    """`count` events in time order with the realistic type mix."""
    rng = world.rng
    types, weights = zip(*MIX.items(), strict=True)
    at = start or datetime.now(UTC) - timedelta(milliseconds=spacing_ms * count)
    for _ in range(count):
        at += timedelta(milliseconds=rng.randint(0, 2 * spacing_ms))
        yield sample_event(world, rng.choices(types, weights)[0], at)

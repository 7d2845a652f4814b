"""The consumer against real Kafka and PostgreSQL: every type, duplicates, poison, evolution."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro

from course_audit.model import EVENT_RECORDS, RELATED_COURSE_TYPES
from course_audit.produce.encode import avro_binary
from course_audit.produce.sample import World, sample_event
from course_audit.wire.framing import frame_single_object
from course_audit.wire.schemas import BUILTIN_SCHEMA_DIR, builtin_catalog, schema_fingerprint
from pipeline import (
    ENCODER,
    count_dead,
    count_events,
    encode,
    fetch,
    produce,
    running_ingestor,
    settings_for,
)
from waits import eventually, within

NOW = datetime.now(UTC).replace(microsecond=0)


def _one_of_each() -> list[dict[str, Any]]:
    world = World.build(seed=7, courses=4)
    events = []
    for i, event_type in enumerate(EVENT_RECORDS):
        event = sample_event(world, event_type, NOW - timedelta(minutes=30 - i))
        events.append(event)
    # Make sure the optional parts appear at least once each with and without values.
    events[0]["user"] = None
    events[0]["page_view"] = None
    events[1]["event_source"] = "sis"
    events[1]["sis_batch_id"] = 4242
    return events


async def until_stored(db_url: str, n: int) -> None:
    """Wait until exactly `n` events are stored."""
    await eventually(lambda: count_events(db_url), lambda got: got == n, 30, f"{n} events stored")


async def until_dead_lettered(db_url: str, n: int) -> None:
    """Wait until exactly `n` dead letters are stored."""
    await eventually(lambda: count_dead(db_url), lambda got: got == n, 30, f"{n} dead letters")


def _ms(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


async def test_every_event_type_is_stored_with_every_field(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    events = _one_of_each()
    await produce(
        kafka_bootstrap,
        topic,
        [encode(e) for e in events],
        [str(e["course"]["id"]).encode() for e in events],
    )
    async with running_ingestor(settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)):
        await until_stored(migrated_db_url, len(events))

    rows = {
        str(r["event_id"]): r
        for r in await fetch(migrated_db_url, "SELECT * FROM course_audit_events")
    }
    seen_offsets = set()
    for e in events:
        row = rows[e["event_id"]]
        course = e["course"]
        assert row["created_at"] == _ms(e["created_at"])
        assert row["event_type"] == e["event_type"]
        assert row["event_source"] == e["event_source"]
        assert (row["course_id"], row["account_id"], row["root_account_id"]) == (
            course["id"],
            course["account_id"],
            course["root_account_id"],
        )
        assert row["user_id"] == (e["user"]["id"] if e["user"] else None)
        assert row["page_view_id"] == (e["page_view"]["id"] if e["page_view"] else None)
        assert row["sis_batch_id"] == e["sis_batch_id"]
        related = e.get(e["event_type"]) if e["event_type"] in RELATED_COURSE_TYPES else None
        assert row["related_course_id"] == (related["id"] if related else None)
        expected_data: dict[str, Any] = {}
        if e["event_type"] in ("created", "updated"):
            expected_data = {k: list(v) for k, v in e["changes"].items()}
            if e["event_type"] == "created" and e.get("created_source") is not None:
                expected_data["created_source"] = e["created_source"]
        assert json.loads(row["event_data"]) == expected_data
        assert row["topic"] == topic
        assert row["partition"] in (0, 1, 2)
        seen_offsets.add((row["partition"], row["offset"]))
        assert row["ingested_at"] is not None
    assert len(seen_offsets) == len(events)

    # Snapshots: the latest course state, every acting user and page view, related courses.
    courses = {
        r["id"]: json.loads(r["data"])
        for r in await fetch(migrated_db_url, "SELECT * FROM courses")
    }
    latest: dict[int, dict[str, Any]] = {}
    for e in events:  # events are in time order, so the last one carrying a course wins
        latest[e["course"]["id"]] = e["course"]
        if e["event_type"] in RELATED_COURSE_TYPES:
            latest.setdefault(e[e["event_type"]]["id"], e[e["event_type"]])
    assert set(courses) == set(latest)
    for cid, snap in latest.items():
        if any(e["course"]["id"] == cid for e in events):
            assert courses[cid]["name"] == snap["name"]
    users = {r["id"] for r in await fetch(migrated_db_url, "SELECT id FROM users")}
    assert users == {e["user"]["id"] for e in events if e["user"]}
    views = {r["id"] for r in await fetch(migrated_db_url, "SELECT id FROM page_views")}
    assert views == {e["page_view"]["id"] for e in events if e["page_view"]}


async def test_duplicates_in_one_batch_across_batches_and_on_replay(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    world = World.build(seed=3, courses=2)
    a = encode(sample_event(world, "published", NOW - timedelta(hours=1)))
    b = encode(sample_event(world, "updated", NOW - timedelta(hours=2)))
    # a twice back to back (one batch), b once.
    await produce(kafka_bootstrap, topic, [a, a, b], partition=0)
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings):
        await until_stored(migrated_db_url, 2)
        # Later deliveries of both, in a new batch.
        await produce(kafka_bootstrap, topic, [b, a], partition=1)
        marker = encode(sample_event(world, "concluded", NOW))
        await produce(kafka_bootstrap, topic, [marker], partition=1)
        await until_stored(migrated_db_url, 3)
    # Replay the whole topic from offset 0 with a new group: nothing changes.
    replay = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id + "-replay")
    async with running_ingestor(replay) as ingestor:
        await eventually(
            lambda: _committed_total(ingestor), lambda n: n == 6, 30, "6 offsets committed"
        )
    assert await count_events(migrated_db_url) == 3
    assert await count_dead(migrated_db_url) == 0


async def _committed_total(ingestor: Any) -> int:
    consumer = ingestor._consumer
    if consumer is None:
        return -1
    total = 0
    for tp in consumer.assignment():
        total += await consumer.committed(tp) or 0
    return total


def _datum(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ENCODER.event_from_json(event)


def _raw(record_name: str, datum: dict[str, Any]) -> bytes:
    """Encode a datum that the JSON front door would refuse (semantic violations)."""
    schema = builtin_catalog().schema(record_name)
    return frame_single_object(schema_fingerprint(schema), avro_binary(schema, datum))


def _poison(world: World) -> list[tuple[bytes | None, str]]:
    good_header = frame_single_object(
        schema_fingerprint(builtin_catalog().schema("course_audit.CoursePublished")), b""
    )
    name, valid = _datum(sample_event(world, "published", NOW))
    valid_bytes = _raw(name, valid)

    def variant(event_type: str, change: Any) -> bytes:
        rec, datum = _datum(sample_event(world, event_type, NOW - timedelta(minutes=5)))
        change(datum)
        return _raw(rec, datum)

    course_schema = builtin_catalog().schema("course_audit.Course")
    not_event = frame_single_object(
        schema_fingerprint(course_schema),
        avro_binary(course_schema, dict(next(iter(world.courses.values())))),
    )
    return [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"\x05hello", "unknown_magic_byte"),
        (b"\x00\x00\x00\x00\x07abc", "unknown_magic_byte"),  # Confluent, no registry
        (b"\xc3\x01\x12\x34", "truncated_header"),
        (b"\xc3\x01" + bytes(8) + valid_bytes[10:], "unknown_schema"),
        (good_header + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "avro_decode_error"),
        (valid_bytes[: len(valid_bytes) // 2], "avro_decode_error"),
        (valid_bytes + b"trailing", "avro_decode_error"),
        (not_event, "not_an_event_type"),
        (variant("published", lambda d: d.update(event_id="not-a-uuid")), "invalid_event_id"),
        (variant("published", lambda d: d["course"].update(id=0)), "invalid_course"),
        (variant("published", lambda d: d["course"].update(account_id=-4)), "invalid_course"),
        (variant("claimed", lambda d: d["course"].update(root_account_id=0)), "invalid_course"),
        (
            variant("published", lambda d: d.update(created_at=datetime(1999, 12, 31, tzinfo=UTC))),
            "invalid_created_at",
        ),
        (
            variant("published", lambda d: d.update(created_at=NOW + timedelta(days=2))),
            "invalid_created_at",
        ),
        (
            variant(
                "updated",
                lambda d: d.update(
                    changes={"name": {"old": None, "new": ""}, "x": {"old": False, "new": None}}
                ),
            ),
            "empty_changes",
        ),
        (variant("created", lambda d: d.update(changes={})), "empty_changes"),
        (
            variant("copied_from", lambda d: d["copied_from"].update(id=0)),
            "missing_related_course",
        ),
        # Valid Avro and valid semantics, but PostgreSQL refuses NUL in text: the database
        # rejects this row alone, and its batch neighbours are still stored.
        (
            variant("updated", lambda d: d["changes"].update(title={"old": None, "new": "a\x00b"})),
            "store_rejected",
        ),
    ]


async def test_poison_messages_become_dead_letters_and_neighbours_are_stored(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    world = World.build(seed=11, courses=3)
    poison = _poison(world)
    values: list[bytes | None] = []
    expected_codes: list[str] = []
    good = 0
    for value, code in poison:
        values.append(encode(sample_event(world, "updated", NOW - timedelta(minutes=10))))
        good += 1
        values.append(value)
        expected_codes.append(code)
    values.append(encode(sample_event(world, "concluded", NOW)))
    good += 1
    # One partition, so offsets order the dead letters like the list above.
    keys = [f"k{i}".encode() for i in range(len(values))]  # a tombstone needs a key
    await produce(kafka_bootstrap, topic, values, keys, partition=2)
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings) as ingestor:
        await until_dead_lettered(migrated_db_url, len(poison))
        await until_stored(migrated_db_url, good)
        # Still consuming after all that.
        await produce(kafka_bootstrap, topic, [encode(sample_event(world, "published", NOW))])
        await until_stored(migrated_db_url, good + 1)
        assert ingestor.health.subscribed is True
    rows = await fetch(
        migrated_db_url,
        'SELECT error_code, error_message, "offset", value, topic, "partition" '
        'FROM course_audit_dead_letters ORDER BY "offset"',
    )
    assert [r["error_code"] for r in rows] == expected_codes
    for row, (value, _) in zip(rows, poison, strict=True):
        assert row["topic"] == topic and row["partition"] == 2
        assert row["error_message"]
        assert row["value"] == (value if value is not None else None) or (
            value is None and row["value"] in (None, b"")
        )


def _newer_schema_dir(tmp: Path, extra_field: str) -> tuple[Path, dict[str, Any]]:
    """A copy of CourseUpdated with one more field (with a default) in its own directory."""
    base = json.loads((BUILTIN_SCHEMA_DIR / "course_audit.CourseUpdated.avsc").read_text())
    base["fields"].append(
        {"name": extra_field, "type": "string", "default": "", "doc": "added later"}
    )
    directory = tmp / extra_field
    directory.mkdir()
    (directory / "course_audit.CourseUpdated.avsc").write_text(json.dumps(base))
    return directory, base


def _write_with(directory: Path, datum: dict[str, Any]) -> bytes:
    """Encode as a producer holding the newer schema would (named types from the builtins)."""
    from course_audit.wire.schemas import SchemaCatalog

    work = directory.parent / f"{directory.name}-producer"
    shutil.copytree(BUILTIN_SCHEMA_DIR, work)
    shutil.copy(directory / "course_audit.CourseUpdated.avsc", work)
    schema = fastavro.schema.load_schema(str(work / "course_audit.CourseUpdated.avsc"))
    fp = schema_fingerprint(schema)
    assert SchemaCatalog((directory,)).writer(fp) is not None
    assert builtin_catalog().writer(fp) is None
    return frame_single_object(fp, avro_binary(schema, datum))


async def test_schema_evolution_and_replay_after_the_schema_is_added(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> None:
    world = World.build(seed=5, courses=2)
    known_dir, _ = _newer_schema_dir(tmp_path, "reason")
    unknown_dir, _ = _newer_schema_dir(tmp_path, "ticket")
    _, d1 = _datum(sample_event(world, "updated", NOW - timedelta(minutes=3)))
    _, d2 = _datum(sample_event(world, "updated", NOW - timedelta(minutes=2)))
    newer = _write_with(known_dir, {**d1, "reason": "term rollover"})
    unknown = _write_with(unknown_dir, {**d2, "ticket": "INC-1"})
    await produce(kafka_bootstrap, topic, [newer, unknown], partition=0)

    settings = settings_for(
        migrated_db_url, kafka_bootstrap, topic, group_id, schema_dirs=(known_dir,)
    )
    async with running_ingestor(settings):
        await until_stored(migrated_db_url, 1)
        await until_dead_lettered(migrated_db_url, 1)
    stored = await fetch(migrated_db_url, "SELECT event_id::text AS id FROM events")
    assert [r["id"] for r in stored] == [d1["event_id"]]
    dead = await fetch(migrated_db_url, "SELECT error_code FROM course_audit_dead_letters")
    assert [r["error_code"] for r in dead] == ["unknown_schema"]

    # Replay without the schema: still failing, still there.
    replay = await _cli(migrated_db_url, "dlq", "replay", schema_dirs=[known_dir])
    assert "stored 0, still failing 1" in replay
    # Add the schema and replay: stored, and the dead letter is marked replayed.
    replay = await _cli(migrated_db_url, "dlq", "replay", schema_dirs=[known_dir, unknown_dir])
    assert "stored 1, still failing 0" in replay
    ids = {r["id"] for r in await fetch(migrated_db_url, "SELECT event_id::text AS id FROM events")}
    assert ids == {d1["event_id"], d2["event_id"]}
    replayed = await fetch(migrated_db_url, "SELECT replayed_at FROM course_audit_dead_letters")
    assert replayed[0]["replayed_at"] is not None


async def _cli(db_url: str, *args: str, schema_dirs: list[Path], retention: str = "14") -> str:
    import asyncio
    import os
    import sys

    exe = Path(sys.executable).parent / "course-audit"
    proc = await asyncio.create_subprocess_exec(
        str(exe),
        *args,
        env={
            **os.environ,
            "AUDIT_DATABASE_URL": db_url,
            "AUDIT_SCHEMA_DIRS": ",".join(map(str, schema_dirs)),
            "AUDIT_RETENTION_MONTHS": retention,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await within(proc.communicate(), 60, f"`course-audit {' '.join(args)}` to exit")
    assert proc.returncode == 0, err.decode()
    return out.decode() + err.decode()


async def test_confluent_framing_through_a_registry(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    from course_audit.retry import Backoff
    from course_audit.wire.registry import RegistryClient
    from registry_stub import RegistryStub

    ids = {name: 40 + i for i, name in enumerate(EVENT_RECORDS.values())}
    async with RegistryStub() as stub:
        for name, schema_id in ids.items():
            stub.register(schema_id, ENCODER.schema_json(name))
        world = World.build(seed=9, courses=3)
        events = [sample_event(world, t, NOW - timedelta(minutes=20 - i)) for i, t in
                  enumerate(EVENT_RECORDS)]  # fmt: skip
        values = []
        for e in events:
            name, datum = ENCODER.event_from_json(e)
            values.append(ENCODER.encode_confluent(ids[name], name, datum))
        values.append(b"\x00\x00\x00\x03\xe7" + b"\x02")  # id 999: unknown to the registry
        await produce(kafka_bootstrap, topic, values, partition=1)
        settings = settings_for(
            migrated_db_url, kafka_bootstrap, topic, group_id, schema_registry_url=stub.url
        )
        async with (
            RegistryClient(stub.url, retry=Backoff(first=0.05, cap=0.2)) as registry,
            running_ingestor(settings, registry),
        ):
            await until_stored(migrated_db_url, 13)
            await until_dead_lettered(migrated_db_url, 1)
    ids_seen = {
        r["id"] for r in await fetch(migrated_db_url, "SELECT event_id::text AS id FROM events")
    }
    assert ids_seen == {e["event_id"] for e in events}
    dead = await fetch(migrated_db_url, "SELECT error_code FROM course_audit_dead_letters")
    assert [r["error_code"] for r in dead] == ["unknown_schema"]
    # Each schema fetched once (cached afterwards), and the unknown one once.
    assert sorted(stub.requests) == sorted([*ids.values(), 999])


async def test_dlq_replay_gives_up_on_an_unreachable_registry_and_says_so(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """An operator's command: it must end, not wait for the registry for ever (the consumer
    does wait: it holds messages it must not drop)."""
    import asyncio
    import os
    import sys

    import asyncpg

    from course_audit.model import DeadLetter, ErrorCode, Source
    from course_audit.store.writer import write_dead_letters
    from registry_stub import RegistryStub

    name = EVENT_RECORDS["published"]
    _, datum = ENCODER.event_from_json(
        sample_event(World.build(seed=21, courses=1), "published", NOW)
    )
    value = ENCODER.encode_confluent(77, name, datum)
    letter = DeadLetter(
        source=Source("t", 0, 5, None, value, ()),
        code=ErrorCode.UNKNOWN_SCHEMA,
        message="schema id 77 not found",
        failed_at=NOW,
    )
    conn = await asyncpg.connect(migrated_db_url)
    try:
        await write_dead_letters(conn, [letter])
    finally:
        await conn.close()

    async def replay(url: str) -> tuple[int | None, str]:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "course-audit"), "dlq", "replay",
            env={**os.environ, "AUDIT_DATABASE_URL": migrated_db_url,
                 "AUDIT_SCHEMA_REGISTRY_URL": url, "AUDIT_LOG_FORMAT": "text"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await within(proc.communicate(), 90, "`dlq replay` to end")
        return proc.returncode, out.decode() + err.decode()

    async with RegistryStub() as stub:
        stub.failures = 1000  # every answer a 503
        code, output = await replay(stub.url)
        assert code == 1, output
        assert (
            f"course-audit: schema registry {stub.url}: fetching schema id 77 failed: HTTP 503"
        ) in output
        assert "(gave up after 5 attempts); 0 of 1 dead letter(s) replayed before it" in output
        assert len(stub.requests) == 5
        rows = await fetch(
            migrated_db_url, "SELECT error_code, replayed_at FROM course_audit_dead_letters"
        )
        assert [(r["error_code"], r["replayed_at"]) for r in rows] == [("unknown_schema", None)]
        # Once it answers, the same command stores the event.
        stub.failures = 0
        stub.register(77, ENCODER.schema_json(name))
        code, output = await replay(stub.url)
        assert code == 0 and "stored 1, still failing 0" in output, output


async def test_retention_old_events_are_dead_lettered_and_expired_partitions_dropped(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    import asyncpg

    from course_audit.retention import month_of
    from course_audit.store.partitions import ensure_partition_for, list_partitions

    world = World.build(seed=13, courses=2)
    now = datetime.now(UTC)
    inside = sample_event(world, "published", now - timedelta(days=30 * 12))  # 12 months ago
    outside = sample_event(world, "published", now - timedelta(days=30 * 20))  # 20 months ago
    await produce(kafka_bootstrap, topic, [encode(inside), encode(outside)], partition=0)
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id, retention_months=14)
    async with running_ingestor(settings):
        await until_stored(migrated_db_url, 1)
        await until_dead_lettered(migrated_db_url, 1)
    stored = await fetch(migrated_db_url, "SELECT event_id::text AS id FROM events")
    assert [r["id"] for r in stored] == [inside["event_id"]]
    dead = await fetch(
        migrated_db_url, "SELECT error_code, error_message FROM course_audit_dead_letters"
    )
    assert dead[0]["error_code"] == "beyond_retention"
    assert "AUDIT_RETENTION_MONTHS" in dead[0]["error_message"]

    # The month of the stored old event got its partition on demand.
    conn = await asyncpg.connect(migrated_db_url)
    try:
        months = await list_partitions(conn)
        assert month_of(datetime.fromisoformat(inside["created_at"])) in months
        # An expired month (created by hand, as a restore would) is dropped by `retention`,
        # the months ahead exist afterwards.
        old = month_of(now - timedelta(days=30 * 24))
        await ensure_partition_for(conn, {old})
        assert old in await list_partitions(conn)
    finally:
        await conn.close()
    out = await _cli(migrated_db_url, "retention", schema_dirs=[])
    conn = await asyncpg.connect(migrated_db_url)
    try:
        months = await list_partitions(conn)
    finally:
        await conn.close()
    assert old not in months
    assert f"events_y{old.year}m{old.month:02d}" in out
    current = month_of(now)
    assert current in months
    assert len([m for m in months if m > current]) >= 3

    # Raising retention and replaying stores the dead-lettered event.
    replay = await _cli(migrated_db_url, "dlq", "replay", schema_dirs=[], retention="0")
    assert "stored 1, still failing 0" in replay
    assert await count_events(migrated_db_url) == 2

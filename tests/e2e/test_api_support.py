"""Shared pieces of the API end-to-end modules (this module holds no tests).

A stack is one fresh database, one topic and one `course-audit` process; `Api` is a real HTTP
client that checks every response it sees against the service's own OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from jsonschema import Draft202012Validator
from multidict import CIMultiDictProxy
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from course_audit.produce.encode import Encoder
from course_audit.store.tokens import create_token
from service_process import ServiceProcess
from waits import Deadline, eventually

#: Longest wait for one HTTP answer (a request that hangs fails naming itself).
REQUEST_TIMEOUT_S = 60
COURSE = "/api/v1/audit/course/courses/"
ACCOUNT = "/api/v1/audit/course/accounts/"
RELATED = ("copied_from", "copied_to", "reset_from", "reset_to")
LINK_ENTRY = re.compile(r'<([^>]*)>; rel="([a-z]+)"')
_ENCODER: Encoder | None = None

# Canvas's JSON field order for the linked objects (written out here, independently of the
# service's own lists).
CANVAS_COURSE_ORDER = [
    "id",
    "sis_course_id",
    "uuid",
    "integration_id",
    "name",
    "course_code",
    "workflow_state",
    "account_id",
    "root_account_id",
    "enrollment_term_id",
    "created_at",
    "start_at",
    "end_at",
    "default_view",
    "is_public",
    "license",
    "time_zone",
]
CANVAS_USER_ORDER = [
    "id",
    "name",
    "sortable_name",
    "short_name",
    "sis_user_id",
    "integration_id",
    "login_id",
    "created_at",
]
CANVAS_PAGE_VIEW_ORDER = [
    "id",
    "url",
    "context_type",
    "asset_type",
    "controller",
    "action",
    "interaction_seconds",
    "created_at",
    "user_request",
    "render_time",
    "user_agent",
    "participated",
    "http_method",
    "remote_ip",
]


def encoder() -> Encoder:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = Encoder()
    return _ENCODER


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


# ------------------------------------------------------------------ OpenAPI conformance


class OpenApiChecker:
    """Checks a response (status, headers, body) against the OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry = Registry().with_resource(
            "urn:api", Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self.routes = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"), template)
            for template in document["paths"]
        ]
        self.checked = 0

    def _resolve(self, node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
        while "$ref" in node:
            pointer = node["$ref"].removeprefix("#")
            node = self.document
            for part in pointer.strip("/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node, pointer

    def _response(self, method: str, path: str, status: int) -> tuple[dict[str, Any], str]:
        for regex, template in self.routes:
            if regex.match(path):
                item = self.document["paths"][template]
                op_method = "get" if method in ("GET", "HEAD") else method.lower()
                if op_method not in item:
                    assert status == 405, f"{method} {path}: expected 405, got {status}"
                    return self._resolve({"$ref": "#/components/responses/MethodNotAllowed"}, "")
                responses = item[op_method]["responses"]
                assert str(status) in responses, f"{method} {path}: {status} is not documented"
                base = "/paths/" + template.replace("~", "~0").replace("/", "~1")
                pointer = f"{base}/{op_method}/responses/{status}"
                return self._resolve(responses[str(status)], pointer)
        assert status == 404, f"{method} {path}: an unknown route answered {status}"
        return self._resolve({"$ref": "#/components/responses/NotFound"}, "")

    def check(
        self, method: str, path: str, status: int, headers: CIMultiDictProxy[str], body: bytes
    ) -> None:
        response, pointer = self._response(method, path, status)
        for name, header in response.get("headers", {}).items():
            header, _ = self._resolve(header, "")
            if header.get("required"):
                assert name in headers, f"{method} {path} {status}: no {name} header"
            if name in headers and "schema" in header:
                Draft202012Validator(header["schema"]).validate(headers[name])
        content = response.get("content")
        if method == "HEAD":
            assert body == b""
            self.checked += 1
            return
        assert content, f"{method} {path} {status}: the document describes no body"
        media_type = headers.get("Content-Type", "").split(";")[0].strip()
        assert media_type in content, f"{method} {path} {status}: {media_type} not documented"
        if media_type == "application/json":
            escaped = media_type.replace("/", "~1")
            schema_ref = f"urn:api#{pointer}/content/{escaped}/schema"
            validator = Draft202012Validator(
                {"$ref": schema_ref},
                registry=self.registry,
                format_checker=Draft202012Validator.FORMAT_CHECKER,
            )
            validator.validate(orjson.loads(body))
        self.checked += 1


# ------------------------------------------------------------------ HTTP client


@dataclass
class Reply:
    """One HTTP response, read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def links(self) -> dict[str, str]:
        """rel -> URL of the Link header, checking its exact shape on the way."""
        header = self.headers["Link"]
        entries = LINK_ENTRY.findall(header)
        assert header == ",".join(f'<{u}>; rel="{r}"' for u, r in entries), header
        rels = [r for _, r in entries]
        assert rels in (["current", "next", "first"], ["current", "first"]), rels
        return {r: u for u, r in entries}


class Api:
    """aiohttp client for one service; every response is checked against the OpenAPI doc."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        self.checker: OpenApiChecker | None = None
        self.answered = 0  # responses received

    async def load_document(self) -> dict[str, Any]:
        reply = await self.get("/openapi.json")
        assert reply.status == 200
        document: dict[str, Any] = reply.json()
        self.checker = OpenApiChecker(document)
        self.checker.check("GET", "/openapi.json", 200, reply.headers, reply.body)
        return document

    async def get(
        self,
        target: str,
        *,
        token: str | None = None,
        params: dict[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> Reply:
        """`target` is a path (maybe with a query) or an absolute URL from a Link header."""
        url = target if "://" in target else self.base_url + target
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        deadline = Deadline(REQUEST_TIMEOUT_S, f"the answer to {method} {url}")
        try:
            async with self.session.request(
                method,
                url,
                params=params,
                headers=all_headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=deadline.left()),
            ) as resp:
                body = await resp.read()
                reply = Reply(resp.status, resp.headers, body)
                path = resp.url.raw_path
        except TimeoutError:
            raise deadline.failure() from None
        self.answered += 1
        if self.checker is not None:
            self.checker.check(method, _decoded(path), reply.status, reply.headers, body)
        return reply

    async def metric(self, sample: str) -> float | None:
        """One sample of GET /metrics, named as Prometheus prints it (labels in declaration
        order, e.g. `x_total{format="csv",outcome="finished"}`); None when absent."""
        reply = await self.get("/metrics")
        assert reply.status == 200
        for line in reply.body.decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return None

    async def close(self) -> None:
        await self.session.close()


def _decoded(raw_path: str) -> str:
    # Route matching works on the path as the server decodes it ('%2F' stays one segment).
    return re.sub(r"%2[fF]", "_", raw_path)


def course_path(course: int | str) -> str:
    return COURSE + (quote(course, safe=":") if isinstance(course, str) else str(course))


# ------------------------------------------------------------------ the stack


async def create_database(server_url: str, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    finally:
        await conn.close()
    return name


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


@dataclass
class Stack:
    """A running service with its own database and topic."""

    db_url: str
    kafka: str
    topic: str
    service: ServiceProcess
    api: Api
    document: dict[str, Any]
    extra: list[ServiceProcess] = field(default_factory=list)

    async def token(self, name: str, roots: Iterable[int]) -> str:
        conn = await asyncpg.connect(self.db_url)
        try:
            return (await create_token(conn, name, list(roots))).token
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def stack(
    server_url: str, template: str, kafka: str, log_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    """Database + topic + `course-audit run`, torn down afterwards."""
    db_name = await create_database(server_url, template)
    db_url = with_database(server_url, db_name)
    topic = await create_topic(kafka)
    service = ServiceProcess(
        "run",
        {
            "AUDIT_DATABASE_URL": db_url,
            "AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka,
            "AUDIT_KAFKA_TOPICS": topic,
            "AUDIT_KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:12]}",
            "AUDIT_BATCH_MAX_LATENCY_MS": "50",
            **(env or {}),
        },
        log_dir / "service.log",
    )
    api: Api | None = None
    try:
        service.start()
        await service.wait_ready()
        api = Api(service.base_url)
        document = await api.load_document()
        yield Stack(db_url, kafka, topic, service, api, document)
    finally:
        if api is not None:
            await api.close()
        service.stop()
        await delete_topic(kafka, topic)
        await drop_database(server_url, db_name)


# ------------------------------------------------------------------ producing events


async def produce(kafka: str, topic: str, events: Sequence[dict[str, Any]]) -> None:
    """Publish `produce`-format JSON events as Avro single objects, keyed by course id."""
    enc = encoder()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        pending = []
        for obj in events:
            record, datum = enc.event_from_json(obj)
            value = enc.encode_single_object(record, datum)
            key = str(obj["course"]["id"]).encode()
            pending.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def wait_stored(db_url: str, event_ids: Sequence[str], timeout: float = 90) -> None:
    """Poll the store until every one of `event_ids` is there."""
    conn = await asyncpg.connect(db_url)
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", list(event_ids)
            ),
            lambda found: found == len(set(event_ids)),
            timeout,
            f"{len(set(event_ids))} produced events stored",
        )
    finally:
        await conn.close()


def iso_ms(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(
    event_type: str,
    at: datetime,
    course: dict[str, Any],
    *,
    user: dict[str, Any] | None = None,
    page_view: dict[str, Any] | None = None,
    source: str = "api",
    sis_batch_id: int | None = None,
    changes: dict[str, list[Any]] | None = None,
    created_source: str | None = None,
    related: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One event in the `course-audit produce` JSON format."""
    obj: dict[str, Any] = {
        "event_type": event_type,
        "event_id": str(uuid.uuid4()),
        "created_at": iso_ms(at),
        "event_source": source,
        "course": dict(course),
        "user": user,
        "page_view": page_view,
        "sis_batch_id": sis_batch_id,
    }
    if event_type in ("created", "updated"):
        obj["changes"] = changes or {"name": ["Old", "New"]}
    if event_type == "created":
        obj["created_source"] = created_source
    if event_type in RELATED:
        assert related is not None
        obj[event_type] = dict(related)
    return obj


# ------------------------------------------------------------------ expected documents


def at_of(obj: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(obj["created_at"].replace("Z", "+00:00"))


def shown_time(when: datetime, zone: tzinfo = UTC) -> str:
    local = when.astimezone(zone).replace(microsecond=0)
    text = local.isoformat()
    return text.replace("+00:00", "Z") if zone is UTC else text


def _blank(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, str) and not value.strip())


def _change_value(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        value = orjson.dumps(value).decode()
    if isinstance(value, str) and len(value) > 1000:
        return value[:997] + "..."
    return value


def expected_event(obj: dict[str, Any], zone: tzinfo = UTC) -> dict[str, Any]:
    """What the API must show for one produced event."""
    event_type = obj["event_type"]
    data: dict[str, Any] = {}
    if event_type in ("created", "updated"):
        for attr, (old, new) in obj["changes"].items():
            if not (_blank(old) and _blank(new)):
                data[attr] = [_change_value(old), _change_value(new)]
        if event_type == "created" and obj.get("created_source") is not None:
            data["created_source"] = obj["created_source"]
    links: dict[str, Any] = {}
    if event_type in RELATED:
        links[event_type] = obj[event_type]["id"]
    links["course"] = obj["course"]["id"]
    links["page_view"] = None if obj.get("page_view") is None else obj["page_view"]["id"]
    links["user"] = None if obj.get("user") is None else obj["user"]["id"]
    links["sis_batch"] = obj.get("sis_batch_id")
    return {
        "id": obj["event_id"],
        "created_at": shown_time(at_of(obj), zone),
        "event_type": event_type,
        "event_source": obj["event_source"],
        "event_data": data,
        "links": links,
    }


def newest_first(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The API's order: created_at, then arrival (produce order per course), descending."""
    indexed = list(enumerate(events))
    indexed.sort(key=lambda pair: (at_of(pair[1]), pair[0]), reverse=True)
    return [obj for _, obj in indexed]


def _full(record: dict[str, Any], order: list[str]) -> dict[str, Any]:
    # The store keeps every schema field (absent ones as null); Canvas's order.
    return {name: record.get(name) for name in order}


def latest_snapshots(
    events: Sequence[dict[str, Any]],
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Latest course, user and page view snapshots carried by `events`."""
    courses: dict[int, tuple[datetime, dict[str, Any]]] = {}
    users: dict[int, tuple[datetime, dict[str, Any]]] = {}
    views: dict[str, tuple[datetime, dict[str, Any]]] = {}

    def keep(
        table: dict[Any, tuple[datetime, dict[str, Any]]],
        key: Any,
        when: datetime,
        record: dict[str, Any],
    ) -> None:
        if key not in table or when >= table[key][0]:
            table[key] = (when, record)

    for obj in events:
        when = at_of(obj)
        keep(courses, obj["course"]["id"], when, obj["course"])
        for name in RELATED:
            if name in obj:
                keep(courses, obj[name]["id"], when, obj[name])
        if obj.get("user"):
            keep(users, obj["user"]["id"], when, obj["user"])
        if obj.get("page_view"):
            keep(views, obj["page_view"]["id"], when, obj["page_view"])
    return (
        {k: _full(v, CANVAS_COURSE_ORDER) for k, (_, v) in courses.items()},
        {k: _full(v, CANVAS_USER_ORDER) for k, (_, v) in users.items()},
        {k: _full(v, CANVAS_PAGE_VIEW_ORDER) for k, (_, v) in views.items()},
    )


def expected_document(
    page: Sequence[dict[str, Any]],
    everything: Sequence[dict[str, Any]],
    base: str,
    zone: tzinfo = UTC,
) -> dict[str, Any]:
    """The compound document for `page` (already in order), snapshots from `everything`."""
    courses, users, views = latest_snapshots(everything)
    course_ids: list[int] = []
    user_ids: list[int] = []
    view_ids: list[str] = []
    for obj in page:
        for cid in [obj["course"]["id"], *(obj[n]["id"] for n in RELATED if n in obj)]:
            if cid not in course_ids:
                course_ids.append(cid)
        if obj.get("user") and obj["user"]["id"] not in user_ids:
            user_ids.append(obj["user"]["id"])
        if obj.get("page_view") and obj["page_view"]["id"] not in view_ids:
            view_ids.append(obj["page_view"]["id"])
    return {
        "links": {
            "events.course": f"{base}/api/v1/courses/{{events.course}}",
            "events.user": None,
            "events.sis_batch": None,
        },
        "events": [expected_event(obj, zone) for obj in page],
        "linked": {
            "page_views": [views[i] for i in view_ids],
            "courses": [courses[i] for i in course_ids],
            "users": [users[i] for i in user_ids],
        },
    }


def assert_same_document(actual: Any, expected: dict[str, Any]) -> None:
    """Equal as JSON, and in key order wherever docs/api.md#response-document fixes one."""
    assert actual == expected
    assert list(actual) == ["links", "events", "linked"]
    assert list(actual["links"]) == ["events.course", "events.user", "events.sis_batch"]
    assert list(actual["linked"]) == ["page_views", "courses", "users"]
    for got, want in zip(actual["events"], expected["events"], strict=True):
        assert list(got) == [
            "id",
            "created_at",
            "event_type",
            "event_source",
            "event_data",
            "links",
        ]
        assert list(got["links"]) == list(want["links"])
    for kind in ("page_views", "courses", "users"):
        for got, want in zip(actual["linked"][kind], expected["linked"][kind], strict=True):
            assert list(got) == list(want)


def base_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def recent(days: float) -> datetime:
    """A whole minute `days` ago (UTC)."""
    return (datetime.now(UTC) - timedelta(days=days)).replace(second=0, microsecond=0)


async def listen_pids(db_url: str, application_name: str) -> list[int]:
    """Backend pids of the LISTEN connections an API process opened under that name."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
            " AND datname = current_database()",
            application_name,
        )
        return [r["pid"] for r in rows]
    finally:
        await conn.close()

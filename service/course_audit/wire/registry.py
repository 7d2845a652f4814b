"""A small Confluent schema registry client: writer schemas by id, one request per id at a time.

The client only talks to the registry; what an id resolved to is remembered by the decoder
(course_audit.ingest.decode), which knows which answers hold for good.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from course_audit.retry import REGISTRY_BACKOFF, Backoff
from course_audit.security import registry_session
from course_audit.wire.schema_bounds import MAX_JSON_DEPTH, MAX_SCHEMA_CHARS, json_depth_exceeds

if TYPE_CHECKING:
    from course_audit.config import Settings

log = logging.getLogger(__name__)

SessionFactory = Callable[[aiohttp.ClientTimeout], aiohttp.ClientSession]

#: Requests in flight to the registry at once, per client.
MAX_CONCURRENT_REQUESTS = 8
#: Largest answer read from the registry: the schema text, JSON-escaped, plus its envelope.
MAX_ANSWER_BYTES = 8 * MAX_SCHEMA_CHARS


class RegistryUnavailable(Exception):
    """The registry did not answer usefully (unreachable, timeout, 5xx, a garbled answer)."""


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """A schema as the registry holds it."""

    schema_id: int
    text: str  # the schema itself, JSON
    schema_type: str = "AVRO"  # the registry also holds PROTOBUF and JSON schemas
    #: Why the registry's answer for this id cannot be used at all (e.g. too large), or "".
    problem: str = ""


class RegistryClient:
    """Fetches writer schemas with `GET {url}/schemas/ids/{id}`.

    `fetch` makes one attempt; `get_schema` retries per the retry policy. Concurrent calls for
    one id share one request, and at most `max_concurrent` requests are in flight at once.
    """

    def __init__(
        self,
        url: str,
        *,
        retry: Backoff = REGISTRY_BACKOFF,
        request_timeout: float = 10.0,
        max_concurrent: int = MAX_CONCURRENT_REQUESTS,
        session: aiohttp.ClientSession | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self._url = URL(url.rstrip("/"))
        # The URL may carry basic-auth credentials; they never go into logs.
        self.display_url = str(self._url.with_user(None))
        self.retry = retry
        self.max_concurrent = max_concurrent
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session = session
        self._owns_session = session is None
        #: Makes the session when none was given (the registry's CA and credentials).
        self._session_factory = session_factory
        self._slots = asyncio.Semaphore(max_concurrent)
        self._inflight: dict[int, asyncio.Future[RegisteredSchema | None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> RegistryClient:
        """A client of AUDIT_SCHEMA_REGISTRY_URL with the registry's CA and credentials."""
        assert settings.schema_registry_url is not None
        return cls(
            settings.schema_registry_url,
            session_factory=lambda timeout: registry_session(settings, timeout),
            **options,
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel requests in flight; close the HTTP session if this client opened it."""
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def fetch(self, schema_id: int) -> RegisteredSchema | None:
        """The schema with this id, None if the registry does not know it (404).

        One attempt; raises RegistryUnavailable when it fails. Cancelling a caller does not
        cancel the request other callers wait for.
        """
        task = self._inflight.get(schema_id)
        if task is None:
            task = asyncio.ensure_future(self._fetch_limited(schema_id))
            self._inflight[schema_id] = task
            task.add_done_callback(lambda done: self._forget(schema_id, done))
        return await asyncio.shield(task)

    async def get_schema(self, schema_id: int) -> RegisteredSchema | None:
        """`fetch`, retried per the retry policy (by default for as long as it takes).

        Raises RegistryUnavailable only when a finite policy runs out.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.fetch(schema_id)
            except RegistryUnavailable as exc:
                if self.retry.gives_up_after(attempt):
                    raise RegistryUnavailable(f"{exc} (gave up after {attempt} attempts)") from exc
                delay = self.retry.delay(attempt)
                log.warning(
                    "%s (attempt %d); retrying in %.2fs",
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    def _forget(self, schema_id: int, task: asyncio.Future[RegisteredSchema | None]) -> None:
        if self._inflight.get(schema_id) is task:
            del self._inflight[schema_id]
        if not task.cancelled():
            # Waiters have seen any exception; this only keeps asyncio from warning about it.
            task.exception()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            factory = self._session_factory
            self._session = (
                aiohttp.ClientSession(timeout=self._timeout)
                if factory is None
                else factory(self._timeout)
            )
            self._owns_session = True
        return self._session

    async def _fetch_limited(self, schema_id: int) -> RegisteredSchema | None:
        async with self._slots:
            try:
                return await self._fetch(schema_id)
            except _Unusable as exc:
                raise RegistryUnavailable(
                    f"schema registry {self.display_url}: fetching schema id {schema_id} "
                    f"failed: {exc}"
                ) from exc

    async def _fetch(self, schema_id: int) -> RegisteredSchema | None:
        url = self._url / "schemas" / "ids" / str(schema_id)
        headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        try:
            async with self._get_session().get(url, headers=headers, timeout=self._timeout) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    body = (await resp.content.read(200)).decode("utf-8", "replace")
                    if resp.status in (401, 403):
                        raise _Unusable(
                            f"HTTP {resp.status}, the registry refused the credentials"
                            f" (AUDIT_SCHEMA_REGISTRY_USERNAME/PASSWORD): {body}"
                        )
                    raise _Unusable(f"HTTP {resp.status}: {body}")
                body_bytes = await _read_at_most(resp, MAX_ANSWER_BYTES)
        except _Unusable:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _Unusable(f"{type(exc).__name__}: {exc}") from exc
        if body_bytes is None:
            return RegisteredSchema(
                schema_id,
                "",
                problem=f"the registry's answer is larger than {MAX_ANSWER_BYTES} bytes",
            )
        text = body_bytes.decode("utf-8", "replace")
        # The answer is parsed before its schema is checked: it must not nest deeper than a
        # schema may (the schema itself is a string inside it).
        if json_depth_exceeds(text, MAX_JSON_DEPTH):
            return RegisteredSchema(
                schema_id, "", problem="the registry's answer nests too deep to be read"
            )
        try:
            payload: Any = json.loads(text)
        except ValueError as exc:
            raise _Unusable(f"the answer is not JSON: {exc}") from exc
        schema = payload.get("schema") if isinstance(payload, dict) else None
        if not isinstance(schema, str):
            raise _Unusable("the answer has no 'schema' string")
        return RegisteredSchema(schema_id, schema, str(payload.get("schemaType") or "AVRO"))


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The response body, or None if it is longer than `limit` bytes (not read further)."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class _Unusable(Exception):
    """A failed attempt (network error, 5xx, an unexpected answer): worth trying again."""

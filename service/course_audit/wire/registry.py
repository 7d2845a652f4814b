"""A small Confluent schema registry client: writer schemas by id, cached, retried."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from course_audit.cache import TtlCache
from course_audit.retry import REGISTRY_BACKOFF, Backoff

log = logging.getLogger(__name__)

#: Schema ids remembered, found and not found (each): far more than a deployment registers.
SCHEMA_CACHE_SIZE = 10_000


class RegistryUnavailable(Exception):
    """The registry could not be reached within the retry policy's attempts."""


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """A schema as the registry holds it."""

    schema_id: int
    text: str  # the schema itself, JSON
    schema_type: str = "AVRO"  # the registry also holds PROTOBUF and JSON schemas


class RegistryClient:
    """Fetches writer schemas (`GET {url}/schemas/ids/{id}`) and caches them by id.

    Schema ids are immutable in a Confluent registry, so a found schema is kept until the cache
    is full; "not found" is kept for `not_found_ttl` seconds so a bad producer cannot flood
    the registry with the same id.
    """

    def __init__(
        self,
        url: str,
        *,
        retry: Backoff = REGISTRY_BACKOFF,
        request_timeout: float = 10.0,
        not_found_ttl: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._url = URL(url.rstrip("/"))
        # The URL may carry basic-auth credentials; they never go into logs.
        self.display_url = str(self._url.with_user(None))
        self._retry = retry
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session = session
        self._owns_session = session is None
        self._found: TtlCache[int, RegisteredSchema] = TtlCache(SCHEMA_CACHE_SIZE)
        self._not_found: TtlCache[int, bool] = TtlCache(SCHEMA_CACHE_SIZE, not_found_ttl)
        self._inflight: dict[int, asyncio.Task[RegisteredSchema | None]] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it."""
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def get_schema(self, schema_id: int) -> RegisteredSchema | None:
        """The writer schema with this id, or None if the registry does not know it.

        Retries connection errors and other failures per the retry policy (by default forever);
        raises RegistryUnavailable only when a finite policy runs out.
        """
        found = self._found.get(schema_id)
        if found is not None:
            return found
        if self._not_found.get(schema_id):
            return None
        task = self._inflight.get(schema_id)
        if task is None:
            # One request per id, however many messages wait for it.
            task = asyncio.ensure_future(self._fetch_with_retry(schema_id))
            self._inflight[schema_id] = task
            task.add_done_callback(lambda done: self._forget(schema_id, done))
        return await asyncio.shield(task)

    def _forget(self, schema_id: int, task: asyncio.Task[RegisteredSchema | None]) -> None:
        self._inflight.pop(schema_id, None)
        if not task.cancelled():
            # Waiters have seen any exception; this only keeps asyncio from warning about it.
            task.exception()

    async def _fetch_with_retry(self, schema_id: int) -> RegisteredSchema | None:
        attempt = 0
        while True:
            attempt += 1
            try:
                found = await self._fetch(schema_id)
            except _Retryable as exc:
                if self._retry.gives_up_after(attempt):
                    raise RegistryUnavailable(
                        f"schema registry {self.display_url}: schema id {schema_id}: {exc} "
                        f"(gave up after {attempt} attempts)"
                    ) from exc
                delay = self._retry.delay(attempt)
                log.warning(
                    "schema registry %s: fetching schema id %d failed (attempt %d): %s; "
                    "retrying in %.2fs",
                    self.display_url,
                    schema_id,
                    attempt,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if found is None:
                self._not_found.put(schema_id, True)
            else:
                self._found.put(schema_id, found)
            return found

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def _fetch(self, schema_id: int) -> RegisteredSchema | None:
        url = self._url / "schemas" / "ids" / str(schema_id)
        headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        try:
            async with self._get_session().get(url, headers=headers, timeout=self._timeout) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    body = (await resp.text())[:200]
                    raise _Retryable(f"HTTP {resp.status}: {body}")
                payload: Any = await resp.json(content_type=None)
        except _Retryable:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        schema = payload.get("schema") if isinstance(payload, dict) else None
        if not isinstance(schema, str):
            raise _Retryable("the answer has no 'schema' string")
        return RegisteredSchema(schema_id, schema, str(payload.get("schemaType") or "AVRO"))


class _Retryable(Exception):
    """A failed attempt worth retrying (network error, 5xx, unexpected answer)."""

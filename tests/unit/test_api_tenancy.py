"""The root-account cache behind the tenancy check (pure logic, a stand-in connection)."""

from __future__ import annotations

from typing import Any

from course_audit.api.tenancy import RootCache, within
from course_audit.cache import TtlCache


class Store:
    """Answers the root-account queries from a dict and counts the round trips."""

    def __init__(self, roots: dict[int, int]) -> None:
        self.roots = roots
        self.queries = 0

    async def fetchval(self, sql: str, key: int) -> Any:
        self.queries += 1
        return self.roots.get(key)


def clocked(ttl_s: float = 60.0, size: int = 100) -> tuple[RootCache, list[float]]:
    now = [1000.0]
    return TtlCache(size, ttl_s, clock=lambda: now[0]), now


async def test_a_known_course_is_looked_up_once_within_the_ttl() -> None:
    store, (cache, now) = Store({10: 1}), clocked(ttl_s=60)
    assert await within(store, cache, "course", 10, [1])  # type: ignore[arg-type]
    assert await within(store, cache, "course", 10, [1, 2])  # type: ignore[arg-type]
    assert not await within(store, cache, "course", 10, [2])  # type: ignore[arg-type]
    assert store.queries == 1
    now[0] += 61
    assert await within(store, cache, "course", 10, [1])  # type: ignore[arg-type]
    assert store.queries == 2


async def test_unknown_ids_are_not_remembered() -> None:
    store, (cache, _) = Store({}), clocked()
    assert not await within(store, cache, "course", 11, [1])  # type: ignore[arg-type]
    store.roots[11] = 1  # the course's first event arrives
    assert await within(store, cache, "course", 11, [1])  # type: ignore[arg-type]
    assert store.queries == 2


async def test_out_of_range_ids_never_reach_the_store() -> None:
    store, (cache, _) = Store({}), clocked()
    for key in (0, -1, 2**63):
        assert not await within(store, cache, "course", key, [1])  # type: ignore[arg-type]
        assert not await within(store, cache, "account", key, [1])  # type: ignore[arg-type]
    assert store.queries == 0


async def test_courses_and_accounts_with_the_same_id_are_kept_apart() -> None:
    store, (cache, _) = Store({100: 1}), clocked()
    assert await within(store, cache, "account", 100, [1])  # type: ignore[arg-type]
    store.roots[100] = 2
    assert await within(store, cache, "course", 100, [2])  # type: ignore[arg-type]
    assert await within(store, cache, "account", 100, [1])  # type: ignore[arg-type]
    assert store.queries == 2

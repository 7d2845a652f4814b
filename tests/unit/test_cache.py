"""The one cache the service uses (tokens, tenancy, snapshots, schemas): pure logic."""

from __future__ import annotations

import pytest

from course_audit.cache import TtlCache


def clocked(size: int = 10, ttl_s: float | None = 2.0) -> tuple[TtlCache[str, int], list[float]]:
    now = [100.0]
    return TtlCache(size, ttl_s, clock=lambda: now[0]), now


def test_an_entry_expires_ttl_after_it_was_put() -> None:
    cache, now = clocked(ttl_s=2.0)
    cache.put("a", 1)
    assert cache.get("a") == 1
    now[0] = 101.9
    assert cache.get("a") == 1
    now[0] = 102.0
    assert cache.get("a") is None
    assert len(cache) == 0  # an expired entry is gone, not kept


def test_putting_again_renews_the_ttl() -> None:
    cache, now = clocked(ttl_s=2.0)
    cache.put("a", 1)
    now[0] = 101.5
    cache.put("a", 2)
    now[0] = 103.0
    assert cache.get("a") == 2


def test_without_a_ttl_entries_never_expire() -> None:
    cache, now = clocked(ttl_s=None)
    cache.put("a", 1)
    now[0] = 1e12
    assert cache.get("a") == 1


def test_when_full_the_entry_put_longest_ago_goes_first() -> None:
    cache, _ = clocked(size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # put again: now the newest
    cache.put("c", 4)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (3, 4)


def test_a_miss_is_none_and_a_cache_holds_at_least_one_entry() -> None:
    cache, _ = clocked()
    assert cache.get("nothing") is None
    with pytest.raises(ValueError, match="at least one"):
        TtlCache(0)


def test_get_many_answers_each_key_in_order_and_drops_the_expired() -> None:
    cache, now = clocked(ttl_s=2.0)
    cache.put("a", 1)
    now[0] = 101.0
    cache.put("b", 2)
    now[0] = 102.5  # "a" expired, "b" not
    assert cache.get_many(["b", "nothing", "a", "b"]) == [2, None, None, 2]
    assert len(cache) == 1
    forever, _ = clocked(ttl_s=None)
    forever.put("x", 9)
    assert forever.get_many(["x", "y"]) == [9, None]

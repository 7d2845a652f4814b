"""One small cache for the whole service: bounded, with an optional time to live.

Used for tokens, tenancy, snapshot texts and rendered snapshots in the API, and for schemas
in the registry client. Each user decides what it may keep (e.g. only ids the store knows);
this only bounds how many and for how long.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_FOREVER = float("inf")


class TtlCache(Generic[K, V]):
    """At most `size` entries, each forgotten `ttl_s` seconds after it was put (never, if
    None); when full, the entry put longest ago goes first."""

    __slots__ = ("_clock", "_entries", "size", "ttl_s")

    def __init__(
        self,
        size: int,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cache holds at least one entry, not {size}")
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value put under `key`, or None when there is none or it has expired."""
        return self.get_many((key,))[0]

    def get_many(self, keys: Iterable[K]) -> list[V | None]:
        """`get` of each key, in one call (for the loops that look up a whole page's ids)."""
        entries = self._entries
        found = entries.get
        if self.ttl_s is None:
            return [None if (entry := found(key)) is None else entry[1] for key in keys]
        now = self._clock()
        out: list[V | None] = []
        for key in keys:
            entry = found(key)
            if entry is not None and entry[0] <= now:
                del entries[key]
                entry = None
            out.append(None if entry is None else entry[1])
        return out

    def discard(self, key: K) -> None:
        """Forget `key`'s entry, if there is one."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def put(self, key: K, value: V) -> None:
        """Keep `value` under `key` (as the newest entry), dropping the oldest when full."""
        entries = self._entries
        expires = _FOREVER if self.ttl_s is None else self._clock() + self.ttl_s
        entries[key] = (expires, value)
        entries.move_to_end(key)
        if len(entries) > self.size:
            entries.popitem(last=False)

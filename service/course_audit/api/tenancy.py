"""Which root account a course or account belongs to, remembered for a short while.

Every API request checks its course or account against the token's root accounts (SPEC §4.2).
A course's root account never changes, and neither does an account's, so asking the store on
every request only repeated a round trip. Only known ids are kept: one that appears a moment
after a 404 is found at once. The TTL bounds how long an id the store forgot (retention
dropped every event of a course without a snapshot) still answers.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection

from course_audit.store.db import Conn
from course_audit.store.queries import account_root_account, course_root_account

ROOT_TTL_S = 60.0
ROOT_CACHE_SIZE = 50_000


class RootCache:
    """Root account ids of recently seen courses and accounts, for `ROOT_TTL_S` seconds."""

    def __init__(
        self,
        ttl_s: float = ROOT_TTL_S,
        size: int = ROOT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[tuple[str, int], tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, kind: str, key: int) -> int | None:
        """The cached root account of (`kind`, `key`), or None when absent or expired."""
        entry = self._entries.get((kind, key))
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[(kind, key)]
            return None
        return entry[1]

    def put(self, kind: str, key: int, root: int) -> None:
        self._entries[(kind, key)] = (self.clock() + self.ttl_s, root)
        self._entries.move_to_end((kind, key))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


_LOOKUPS: dict[str, Callable[[Conn, int], Awaitable[int | None]]] = {
    "course": course_root_account,
    "account": account_root_account,
}


async def _within(
    conn: Conn, cache: RootCache, kind: str, key: int, roots: Collection[int]
) -> bool:
    """True when the course/account is known and its root account is one of `roots`.

    Only known ids are cached, so an id that appears later is found on its next request.
    """
    root = cache.get(kind, key)
    if root is None:
        root = await _LOOKUPS[kind](conn, key)
        if root is not None:
            cache.put(kind, key, root)
    return root is not None and root in roots


async def course_within(
    conn: Conn, cache: RootCache, course_id: int, roots: Collection[int]
) -> bool:
    """True when the course is known and belongs to one of `roots`."""
    return await _within(conn, cache, "course", course_id, roots)


async def account_within(
    conn: Conn, cache: RootCache, account_id: int, roots: Collection[int]
) -> bool:
    """True when the account is known and belongs to one of `roots`."""
    return await _within(conn, cache, "account", account_id, roots)

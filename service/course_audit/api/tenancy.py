"""Which root account a course or account belongs to, remembered for a short while.

Every API request checks its course or account against the token's root accounts
(docs/api.md#tenancy). A course's root account never changes, and neither does an
account's, so asking the store on every request only repeated a round trip. Only known ids
are kept: one that appears a moment after a 404 is found at once. The TTL bounds how long an
id the store forgot (retention dropped every event of a course without a snapshot) still
answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from course_audit.cache import TtlCache
from course_audit.store.db import Conn
from course_audit.store.queries import account_root_account, course_root_account

ROOT_TTL_S = 60.0
ROOT_CACHE_SIZE = 50_000

#: Root account ids of recently seen courses and accounts, by ("course"|"account", id).
RootCache = TtlCache[tuple[str, int], int]


def root_cache() -> RootCache:
    """A cache of `ROOT_CACHE_SIZE` roots, each trusted for `ROOT_TTL_S` seconds."""
    return TtlCache(ROOT_CACHE_SIZE, ROOT_TTL_S)


_LOOKUPS: dict[str, Callable[[Conn, int], Awaitable[int | None]]] = {
    "course": course_root_account,
    "account": account_root_account,
}


async def within(conn: Conn, cache: RootCache, kind: str, key: int, roots: Collection[int]) -> bool:
    """True when the course or account (`kind`) is known and its root account is in `roots`.

    Only known ids are cached, so an id that appears later is found on its next request.
    """
    root = cache.get((kind, key))
    if root is None:
        root = await _LOOKUPS[kind](conn, key)
        if root is not None:
            cache.put((kind, key), root)
    return root is not None and root in roots

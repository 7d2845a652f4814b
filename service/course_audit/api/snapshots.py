"""The linked snapshots of a page: read from the store, or reused when unchanged since.

The same courses and users appear on page after page. Turning their jsonb into text and
shipping it was most of the cost of a page's snapshot query (in PostgreSQL and in asyncpg),
so the process keeps the texts it read with each row's version (`xmin`, which every change
to a row renews) and asks the store for versions first: only a snapshot this process has not
seen at its current version is read in full. A document therefore never shows an older
snapshot than the store holds when the page is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from course_audit.cache import TtlCache
from course_audit.model import Kind
from course_audit.store.db import Conn
from course_audit.store.queries import Linked, Refs, snapshot_rows, snapshot_versions

#: Snapshot texts kept per process: the snapshots of a few hundred busy pages, ~0.5 KB each.
SNAPSHOT_TEXTS_SIZE = 20_000
#: Read every snapshot again at least this often, so that a row version number seen long ago
#: can never be mistaken for a new one (transaction ids wrap around after 2**32).
SNAPSHOT_TTL_S = 600.0

_COURSE, _USER, _PAGE_VIEW = Kind.COURSE.value, Kind.USER.value, Kind.PAGE_VIEW.value


class SnapshotTexts:
    """Snapshot texts by kind and id, with the root account and row version they were read
    at (each root account keeps its own snapshot of an id: docs/api.md#tenancy)."""

    def __init__(
        self,
        ttl_s: float = SNAPSHOT_TTL_S,
        size: int = SNAPSHOT_TEXTS_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: TtlCache[tuple[str, Any], tuple[int, int, str]] = TtlCache(
            size, ttl_s, clock
        )

    def __len__(self) -> int:
        return len(self._entries)

    async def linked(self, conn: Conn, refs: Refs, roots: Collection[int]) -> Linked:
        """The latest snapshots of the given ids within `roots`: versions from the store,
        texts from here.

        One round trip when every snapshot is known at its current version, two otherwise.
        """
        linked = Linked()
        missing = Refs()
        # By the kind's text as the query returns it (an enum member would hash in Python).
        found: dict[str, dict[Any, str]] = {
            _COURSE: linked.courses,
            _USER: linked.users,
            _PAGE_VIEW: linked.page_views,
        }
        absent: dict[str, list[Any]] = {
            _COURSE: missing.courses,
            _USER: missing.users,
            _PAGE_VIEW: missing.page_views,
        }
        rows = await snapshot_versions(conn, refs, roots)
        keys = [(kind, text_id if num_id is None else num_id) for kind, num_id, text_id, *_ in rows]
        cached = self._entries.get_many(keys)
        for (kind, key), row, entry in zip(keys, rows, cached, strict=True):
            # The same root account's snapshot at the same row version.
            if entry is not None and entry[0] == row[3] and entry[1] == row[4]:
                found[kind][key] = entry[2]
            else:
                absent[kind].append(key)
        if missing:
            # A snapshot may have changed again since its version was read: this reads (and
            # shows) the newer one.
            for snapshot in await snapshot_rows(conn, missing, roots):
                key = snapshot.text_id if snapshot.num_id is None else snapshot.num_id
                if snapshot.data is not None:
                    entry = (snapshot.root, snapshot.version, snapshot.data)
                    self._entries.put((snapshot.kind, key), entry)
                    found[snapshot.kind][key] = snapshot.data
        return linked

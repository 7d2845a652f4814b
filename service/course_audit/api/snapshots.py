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
from collections.abc import Callable
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


class SnapshotTexts:
    """Snapshot texts by kind and id, with the row version they were read at."""

    def __init__(
        self,
        ttl_s: float = SNAPSHOT_TTL_S,
        size: int = SNAPSHOT_TEXTS_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: TtlCache[tuple[str, Any], tuple[int, str]] = TtlCache(size, ttl_s, clock)

    def __len__(self) -> int:
        return len(self._entries)

    async def linked(self, conn: Conn, refs: Refs) -> Linked:
        """The latest snapshots of the given ids: versions from the store, texts from here.

        One round trip when every snapshot is known at its current version, two otherwise.
        """
        linked = Linked()
        missing = Refs()
        entries = self._entries
        for kind, num_id, text_id, version in await snapshot_versions(conn, refs):
            key = text_id if num_id is None else num_id
            entry = entries.get((kind, key))
            if entry is not None and entry[0] == version:
                linked.of(Kind(kind))[key] = entry[1]
            else:
                missing.of(Kind(kind)).append(key)
        if missing:
            # A snapshot may have changed again since its version was read: this reads (and
            # shows) the newer one.
            for row in await snapshot_rows(conn, missing):
                key = row.text_id if row.num_id is None else row.num_id
                if row.data is not None:
                    entries.put((row.kind, key), (row.version, row.data))
                    linked.of(Kind(row.kind))[key] = row.data
        return linked

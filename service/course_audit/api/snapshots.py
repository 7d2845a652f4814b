"""The linked snapshots of a page: read from the store, or reused when unchanged since.

The same courses and users appear on page after page. Turning their jsonb into text and
shipping it was most of the cost of a page's snapshot query (in PostgreSQL and in asyncpg),
so the process keeps the texts it read (docs/design.md#snapshot-caches). Whether a kept text
is still the store's is known one of two ways:

- *Announced* (the trusted path): every change to a snapshot row bumps a counter in the store
  and announces the ids it changed, in counter order (docs/store.md#snapshot-changes). This
  process LISTENs (api/announcements.py) and forgets each announced id; `received` is the
  counter of the last announcement applied. A page query also reads the counter, in the same
  statement: when `received` is at least the page's counter, every change the page could see
  has been applied here, and every kept text is the store's as of the page (or newer). No
  round trip is needed for the texts kept; only the missing ones are read.
- *Checked* (the fallback): otherwise (not listening, not yet, or an announcement not applied
  yet) the store is asked for each snapshot's row version (`xmin`, renewed by every change)
  and only texts kept at their current version are used.

A text read from the store is kept only if no change newer than that read can have been
applied here already (`received` at most the read's own counter); a change after the read is
then always applied after the text was put, and forgets it. Either way a document never shows
an older snapshot than the store holds when the page is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from course_audit.cache import TtlCache
from course_audit.model import Kind
from course_audit.store.db import Conn
from course_audit.store.queries import Linked, Refs, fetch_snapshots, snapshot_versions

#: Snapshot texts kept per process and kind: the snapshots of a few hundred busy pages, ~0.5 KB
#: each.
SNAPSHOT_TEXTS_SIZE = 10_000
#: Read every snapshot again at least this often, so that a row version number seen long ago
#: can never be mistaken for a new one (transaction ids wrap around after 2**32).
SNAPSHOT_TTL_S = 600.0

_COURSE, _USER, _PAGE_VIEW = Kind.COURSE.value, Kind.USER.value, Kind.PAGE_VIEW.value
#: An announcement's key for each kind's ids.
ANNOUNCED_KINDS = {"c": _COURSE, "u": _USER, "p": _PAGE_VIEW}

#: A kept snapshot: the root accounts it was read for (one id, or a sorted tuple), the root
#: account and row version of the row shown, and its text; root, version and text are None
#: when no row was there (the trusted path keeps knowing that, until an id is announced).
Entry = tuple[Any, int | None, int | None, str | None]


def _roots_key(roots: Collection[int]) -> Any:
    distinct = set(roots)
    return next(iter(distinct)) if len(distinct) == 1 else tuple(sorted(distinct))


class SnapshotTexts:
    """Snapshot texts by kind and id, with the root accounts they were read for and the root
    account and row version of the row (each root account keeps its own snapshot of an id:
    docs/api.md#tenancy), and what this process knows of the store's snapshot changes."""

    def __init__(
        self,
        ttl_s: float = SNAPSHOT_TTL_S,
        size: int = SNAPSHOT_TEXTS_SIZE,
        clock: Callable[[], float] = time.monotonic,
        counted: Callable[[bool], None] | None = None,
    ) -> None:
        #: Per kind (its text as the queries return it), by id: a page's lookups hash the ids
        #: alone (a (kind, id) key was a tuple to build and hash for each of up to ~200 ids).
        self._entries: dict[str, TtlCache[Any, Entry]] = {
            kind: TtlCache(size, ttl_s, clock) for kind in (_COURSE, _USER, _PAGE_VIEW)
        }
        #: True while the announcements are listened to and `received` is meaningful.
        self.listening = False
        #: The counter of the last announcement applied (or read when listening began).
        self.received = 0
        #: Pages served on the trusted path, and on the checked one.
        self.trusted = 0
        self.checked = 0
        self._counted = counted

    def __len__(self) -> int:
        return sum(map(len, self._entries.values()))

    def _clear(self) -> None:
        for entries in self._entries.values():
            entries.clear()

    # ------------------------------------------------------------------ announcements

    def stopped(self) -> None:
        """The announcements are not listened to (lost, or not yet): check every page."""
        self.listening = False
        self.received = 0

    def started(self, changes: int) -> None:
        """Listening again, and the counter read *after* LISTEN was `changes`: whatever
        changed while not listening is unknown, so every kept text goes. Announcements
        applied meanwhile (between LISTEN and the read) count: they came in order."""
        self._clear()
        self.received = max(self.received, changes)
        self.listening = True

    def announced(self, changes: int, ids: dict[str, Iterable[Any]] | None) -> None:
        """Apply one announcement: forget its ids (all of them when `ids` is None)."""
        if ids is None or changes > self.received + 1:
            # Every id, or a gap in the counter (not expected: announcements come in counter
            # order): nothing kept can be vouched for.
            self._clear()
        else:
            for key, kind in ANNOUNCED_KINDS.items():
                discard = self._entries[kind].discard
                for id_ in ids.get(key, ()):
                    discard(id_)
        if changes > self.received:
            self.received = changes

    # ------------------------------------------------------------------ pages

    def trusts(self, changes: int | None) -> bool:
        """Whether every snapshot change a page read at counter `changes` could see has been
        applied here."""
        return self.listening and changes is not None and self.received >= changes

    async def linked(
        self, conn: Conn, refs: Refs, roots: Collection[int], changes: int | None = None
    ) -> Linked:
        """The latest snapshots of the given ids within `roots`, for a page read at snapshot
        counter `changes` (None: unknown).

        Trusted: kept texts, and one round trip for the missing ones (none if none is).
        Checked: versions from the store, texts from here; one round trip when every snapshot
        is kept at its current version, two otherwise.
        """
        linked = Linked()
        missing = Refs()
        if not refs:
            return linked
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
        roots_key = _roots_key(roots)
        trusted = self.trusts(changes)
        if trusted:
            self.trusted += 1
            by_kind = ((_COURSE, refs.courses), (_USER, refs.users), (_PAGE_VIEW, refs.page_views))
            for kind, ids in by_kind:
                have, lack = found[kind], absent[kind]
                for key, entry in zip(ids, self._entries[kind].get_many(ids), strict=True):
                    if entry is None or entry[0] != roots_key:
                        lack.append(key)
                    elif entry[3] is not None:
                        have[key] = entry[3]
        else:
            self.checked += 1
            for kind, n, t, root, version in await snapshot_versions(conn, refs, roots):
                key = t if n is None else n
                entry = self._entries[kind].get(key)
                # The same root account's snapshot at the same row version.
                if (
                    entry is not None
                    and entry[1] == root
                    and entry[2] == version
                    and entry[3] is not None
                ):
                    found[kind][key] = entry[3]
                else:
                    absent[kind].append(key)
        if self._counted is not None:
            self._counted(trusted)
        if missing:
            # A snapshot may have changed again since the page was read: this reads (and
            # shows) the newer one.
            snapshots, read_at = await fetch_snapshots(conn, missing, roots)
            # Kept only if no change newer than this read was applied already (a replica's
            # counter may be behind the announcements: then nothing is kept).
            keep = not self.listening or self.received <= read_at
            entries = self._entries
            for snapshot in snapshots:
                ident: Any = snapshot.text_id if snapshot.num_id is None else snapshot.num_id
                if snapshot.data is not None:
                    if keep:
                        entry = (roots_key, snapshot.root, snapshot.version, snapshot.data)
                        entries[snapshot.kind].put(ident, entry)
                    found[snapshot.kind][ident] = snapshot.data
            if keep:
                # Ids without a snapshot within `roots`: known absent until announced (the
                # checked path never asks for these: they have no version).
                for kind, keys_of_kind in absent.items():
                    have, put = found[kind], entries[kind].put
                    for key in keys_of_kind:
                        if key not in have:
                            put(key, (roots_key, None, None, None))
        return linked

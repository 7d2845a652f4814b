"""Snapshot changes announced by the store, applied to the API's snapshot texts.

One job: follow `course_audit_snapshots` (docs/store.md#snapshot-changes) on the process's
LISTEN connection (api/listen.py) and apply each announcement to the process's
`SnapshotTexts` (docs/design.md#snapshot-caches). On every (re)connect: LISTEN first, then
read the counter, then `started` (every kept text goes). While the connection is down the
texts are told `stopped`, and every page checks its snapshots' versions instead.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import orjson

from course_audit.api.listen import STATEMENT_TIMEOUT_S
from course_audit.api.snapshots import SnapshotTexts
from course_audit.runtime.metrics import Metrics

log = logging.getLogger(__name__)

#: The channel the snapshot tables' triggers notify (migration 0006).
SNAPSHOTS_CHANNEL = "course_audit_snapshots"

_READ_COUNTER = "SELECT n FROM snapshot_changes"


def parse(payload: str) -> tuple[int, dict[str, Any] | None] | None:
    """An announcement's counter and ids by kind key (None: every id); None if unreadable."""
    try:
        note = orjson.loads(payload)
        changes = note["n"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(changes, int) or isinstance(changes, bool):
        return None
    if note.get("all") is True:
        return changes, None
    ids = {k: v for k, v in note.items() if k != "n" and isinstance(v, list)}
    return changes, ids


class Announcements:
    """The follower of snapshot changes (see the module's docstring)."""

    channel = SNAPSHOTS_CHANNEL

    def __init__(self, texts: SnapshotTexts, metrics: Metrics) -> None:
        self.texts = texts
        self.metrics = metrics

    def notified(self, payload: str) -> None:
        parsed = parse(payload)
        if parsed is None:
            # The counter is unknown: forget everything; the next announcement's gap (or a
            # page read past `received`) keeps pages checked until then.
            log.warning("unreadable snapshot announcement", extra={"payload": payload[:200]})
            self.texts.announced(self.texts.received, None)
            return
        self.texts.announced(*parsed)

    async def listening(self, conn: asyncpg.Connection) -> None:
        # LISTEN is on already: no change is between it and this read unseen.
        changes: Any = await conn.fetchval(_READ_COUNTER, timeout=STATEMENT_TIMEOUT_S)
        self.texts.started(int(changes))
        self.metrics.snapshot_listening.set(1)
        log.info(
            "listening for snapshot changes",
            extra={"channel": SNAPSHOTS_CHANNEL, "changes": int(changes)},
        )

    def not_listening(self, lost: bool) -> None:
        was = self.texts.listening
        self.texts.stopped()
        self.metrics.snapshot_listening.set(0)
        if lost and was:
            log.warning(
                "lost the LISTEN connection for snapshot changes; pages check snapshot "
                "versions until it is back"
            )

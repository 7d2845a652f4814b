"""A batch: what one fetch became (events and dead letters) and the offsets to commit after it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import TopicPartition

from course_audit.model import DeadLetter, Event, Rejection, Source
from course_audit.store.writer import batch_document


@dataclass
class Batch:
    """Outcomes of one fetch, in offset order, plus the offsets to commit once it is stored."""

    #: The consumer's rebalance generation when it was fetched (older ones are dropped).
    generation: int
    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    size: int = 0
    #: When writing it started (time.perf_counter), for the write-time metric.
    started: float = 0.0
    #: The events' batch statement parameter (`course_audit.store.writer.batch_document`),
    #: built while the previous batch is being stored; None: built when written.
    document: str | None = None

    def prepare(self) -> None:
        """Build `document` now, while the previous batch is being stored, so that its
        statement goes out as soon as that one is done (a batch of 2,000 takes several ms).

        Only for the usual batch, events and no dead letters (the one written by one
        statement). An event that cannot be encoded leaves it None: the write builds it again
        and handles the error as it always has (a `store_rejected` dead letter).
        """
        if not self.events or self.dead:
            return
        try:
            self.document = batch_document(self.events)
        except Exception:
            self.document = None


def dead_letter(source: Source, rejection: Rejection) -> DeadLetter:
    """The dead letter keeping the message read from `source`, refused for `rejection`."""
    return DeadLetter(
        source=source,
        code=rejection.code,
        message=rejection.message,
        failed_at=datetime.now(UTC),
    )

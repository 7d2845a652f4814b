"""A batch: what one fetch became (events and dead letters) and the offsets to commit after it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import TopicPartition

from course_audit.model import DeadLetter, Event, Rejection, Source


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


def dead_letter(source: Source, rejection: Rejection) -> DeadLetter:
    """The dead letter keeping the message read from `source`, refused for `rejection`."""
    return DeadLetter(
        source=source,
        code=rejection.code,
        message=rejection.message,
        failed_at=datetime.now(UTC),
    )

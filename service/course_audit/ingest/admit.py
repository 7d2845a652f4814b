"""What may be stored: validation plus the retention policy, as of one instant.

The consumer admits each message of a batch and `dlq replay` each dead letter it retries,
with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from course_audit.ingest.validate import to_event
from course_audit.model import Decoded, Event, Rejection, Source
from course_audit.retention import beyond_retention, retention_cutoff


@dataclass(frozen=True, slots=True)
class Admission:
    """The rules in force at `now`: created_at bounds and the retention cutoff."""

    now: datetime
    retention_months: int
    cutoff: datetime

    @classmethod
    def at(cls, now: datetime, retention_months: int) -> Admission:
        """The rules at `now` for a retention period of `retention_months` (0: forever)."""
        return cls(now, retention_months, retention_cutoff(now, retention_months))

    def admit(self, decoded: Decoded | Rejection, source: Source | None) -> Event | Rejection:
        """Validate a decoded message read from `source`; an event past retention is refused."""
        if not isinstance(decoded, Decoded):
            return decoded
        outcome = to_event(decoded, source=source, now=self.now)
        if isinstance(outcome, Event) and outcome.created_at < self.cutoff:
            return beyond_retention(outcome, self.cutoff, self.retention_months)
        return outcome

"""The retention policy: which months of events are kept, by the same cutoff everywhere.

The consumer refuses an event older than the cutoff (it would be dropped at the next
maintenance pass) and partition maintenance drops the months before it; both ask this module.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from course_audit.model import ErrorCode, Event, Rejection

#: What `retention_cutoff` gives when nothing expires (a retention of 0 months).
KEEP_EVERYTHING = datetime.min.replace(tzinfo=UTC)


def month_of(ts: datetime) -> date:
    """First day of the UTC month containing `ts` (naive datetimes are taken as UTC)."""
    # Validated events are already in UTC; skipping astimezone matters once per event.
    if ts.tzinfo is not None and ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return date(ts.year, ts.month, 1)


def add_months(month: date, n: int) -> date:
    """The first day of the month `n` months after (or before, if negative) `month`."""
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def retention_cutoff(now: datetime, retention_months: int) -> datetime:
    """Events before this instant are past retention: the start of the oldest month kept.

    Whole months are kept, so events outlive the period by up to a month. 0 (or less) keeps
    everything.
    """
    if retention_months <= 0:
        return KEEP_EVERYTHING
    oldest = add_months(month_of(now), -retention_months)
    return datetime(oldest.year, oldest.month, 1, tzinfo=UTC)


def beyond_retention(event: Event, cutoff: datetime, months: int) -> Rejection:
    """The dead-letter reason for an event the retention policy would drop on arrival."""
    return Rejection(
        ErrorCode.BEYOND_RETENTION,
        f"created_at {event.created_at.isoformat()} is before {cutoff.date().isoformat()}, "
        f"outside the {months}-month retention period (AUDIT_RETENTION_MONTHS); raise it and "
        "run `course-audit dlq replay --code beyond_retention` to store it",
    )

"""Plain data passed along the pipeline: Kafka -> decode -> validate -> store."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: The 13 event types and their Avro record full names (docs/messages.md#event-types).
EVENT_RECORDS: dict[str, str] = {
    "created": "course_audit.CourseCreated",
    "updated": "course_audit.CourseUpdated",
    "concluded": "course_audit.CourseConcluded",
    "unconcluded": "course_audit.CourseUnconcluded",
    "published": "course_audit.CoursePublished",
    "unpublished": "course_audit.CourseUnpublished",
    "claimed": "course_audit.CourseClaimed",
    "deleted": "course_audit.CourseDeleted",
    "restored": "course_audit.CourseRestored",
    "copied_from": "course_audit.CourseCopiedFrom",
    "copied_to": "course_audit.CourseCopiedTo",
    "reset_from": "course_audit.CourseResetFrom",
    "reset_to": "course_audit.CourseResetTo",
}
RECORD_EVENT_TYPES: dict[str, str] = {v: k for k, v in EVENT_RECORDS.items()}
#: Event types that carry a related course, under a field named like the type.
RELATED_COURSE_TYPES = frozenset({"copied_from", "copied_to", "reset_from", "reset_to"})


class Kind(enum.StrEnum):
    """The objects an event links to, each kept as its latest snapshot (newest wins)."""

    COURSE = "course"
    USER = "user"
    PAGE_VIEW = "page_view"


class ErrorCode(enum.StrEnum):
    """Stable, machine-readable dead-letter codes (docs/messages.md#dead-letter-codes)."""

    EMPTY_VALUE = "empty_value"
    UNKNOWN_MAGIC_BYTE = "unknown_magic_byte"
    TRUNCATED_HEADER = "truncated_header"
    UNKNOWN_SCHEMA = "unknown_schema"
    #: The writer schema is unusable: not Avro JSON, or beyond the schema limits.
    INVALID_SCHEMA = "invalid_schema"
    NOT_AN_EVENT_TYPE = "not_an_event_type"
    AVRO_DECODE_ERROR = "avro_decode_error"
    INVALID_EVENT_ID = "invalid_event_id"
    INVALID_COURSE = "invalid_course"
    INVALID_CREATED_AT = "invalid_created_at"
    EMPTY_CHANGES = "empty_changes"
    MISSING_RELATED_COURSE = "missing_related_course"
    #: A text field is longer than its limit (docs/messages.md#field-sizes); the message
    #: names the field, e.g. "course.sis_course_id is 10240 characters; the limit is 255".
    FIELD_TOO_LARGE = "field_too_large"
    #: Older than the retention period: stored, it would be dropped at the next maintenance
    #: pass, so it is kept here instead (raise AUDIT_RETENTION_MONTHS and replay to store it).
    BEYOND_RETENTION = "beyond_retention"
    #: The event_id is already stored with another created_at or other content; the message
    #: names the stored created_at (docs/store.md#idempotency).
    CONFLICTING_EVENT_ID = "conflicting_event_id"
    #: The database refused the row itself (isolated from its batch, which was stored).
    STORE_REJECTED = "store_rejected"
    #: The Kafka record itself could not be read (e.g. a header name that is not UTF-8, a
    #: damaged batch): kept with whatever bytes could be recovered.
    UNREADABLE_RECORD = "unreadable_record"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot become an event (becomes a dead letter)."""

    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Decoded:
    """An Avro datum resolved to the current reader schema of its record."""

    record_name: str
    datum: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from in Kafka (provenance and dead-letter context)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """A validated, normalised course audit event, ready to store.

    Snapshots (`course`, `user`, `page_view`, `related_course`) are the Avro records as
    dicts (field name -> value, None for unknown). `source` is where it was read from (None
    for an event made in-process, e.g. by a test).
    """

    event_id: uuid.UUID
    created_at: datetime  # timezone-aware, UTC
    event_type: str
    event_source: str
    course: dict[str, Any]
    user: dict[str, Any] | None
    page_view: dict[str, Any] | None
    sis_batch_id: int | None
    #: As the API shows it: {attr: [old, new], ...} (+ "created_source") or {}.
    event_data: dict[str, Any]
    related_course: dict[str, Any] | None = None
    source: Source | None = None

    @property
    def course_id(self) -> int:
        return int(self.course["id"])

    @property
    def related_course_id(self) -> int | None:
        return None if self.related_course is None else int(self.related_course["id"])


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be stored, kept with its reason."""

    source: Source
    code: ErrorCode
    message: str
    failed_at: datetime = field(compare=False)

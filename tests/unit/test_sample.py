"""The sample generator (demos, benchmarks, tests) produces only events the service stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from course_audit.ingest.validate import to_event
from course_audit.model import Decoded, Event
from course_audit.produce.encode import Encoder
from course_audit.produce.sample import World, sample_stream


def test_a_long_stream_on_few_courses_stays_within_every_limit() -> None:
    # Many updates of the same two courses: names must not grow past 255 characters.
    encoder = Encoder()
    now = datetime.now(UTC)
    world = World.build(seed=21, courses=2)
    start = now - timedelta(days=1)
    for event in sample_stream(world, 3000, start=start, spacing_ms=10):
        outcome = to_event(Decoded(*encoder.event_from_json(event)), now=now)
        assert isinstance(outcome, Event), outcome

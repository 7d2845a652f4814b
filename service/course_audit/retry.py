"""Retrying with backoff: one policy type and one stoppable wait for every retry loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff, with optional jitter and an optional limit on attempts.

    `max_attempts=None` retries for as long as it takes (the store and the registry: an audit
    log waits for its dependencies rather than dropping what it holds).
    """

    first: float = 0.2
    cap: float = 5.0
    multiplier: float = 2.0
    #: Fraction of the delay added at random, so that replicas retrying together drift apart.
    jitter: float = 0.0
    max_attempts: int | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first failure)."""
        base = min(self.cap, self.first * self.multiplier ** min(max(attempt - 1, 0), 64))
        return base * (1.0 + self.jitter * random.random()) if self.jitter else base

    def gives_up_after(self, attempt: int) -> bool:
        """True when failed attempt number `attempt` was the last one allowed."""
        return self.max_attempts is not None and attempt >= self.max_attempts


#: Database retries: quick at first (a failover takes seconds), never longer than 5 s apart.
DATABASE_BACKOFF = Backoff(first=0.2, cap=5.0)
#: Schema registry retries: slower, jittered, as many consumers may wait on one registry.
REGISTRY_BACKOFF = Backoff(first=0.5, cap=30.0, jitter=0.2)


async def wait_or_stop(delay: float, stop: asyncio.Event) -> bool:
    """Wait `delay` seconds, or less if `stop` is set meanwhile; return whether it is set."""
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


@dataclass
class RepeatLimiter:
    """Whether a retry loop logs its failure this time: the first time, whenever the failure
    changes, and otherwise at most once every `every` seconds, so a failure that lasts does
    not fill the log with the same line at every retry."""

    every: float = 120.0
    clock: Callable[[], float] = field(default=time.monotonic)
    _last: str | None = None
    _logged_at: float = 0.0
    _hidden: int = 0

    def admit(self, message: str) -> int | None:
        """None: do not log `message` now; else log it, with this many repeats of the same
        message left unlogged since it was last logged."""
        now = self.clock()
        if message != self._last or now - self._logged_at >= self.every:
            hidden = self._hidden if message == self._last else 0
            self._last, self._logged_at, self._hidden = message, now, 0
            return hidden
        self._hidden += 1
        return None

    def reset(self) -> None:
        """The failure is over: the next one is logged whatever it is."""
        self._last, self._hidden = None, 0

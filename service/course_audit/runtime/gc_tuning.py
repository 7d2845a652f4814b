"""Garbage-collector settings for the consuming and serving processes (docs/design.md#gc-tuning)."""

from __future__ import annotations

import gc

#: The collector's first threshold once started (CPython's default: 700).
GC_FIRST_THRESHOLD = 50_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for the ingest path and the API (process-wide).

    What the ingest path allocates is freed by reference counting (no cycles), while with
    CPython's defaults a collection ran every few dozen messages and full collections kept
    scanning the start-up heap. So: freeze what start-up allocated (modules, schemas) out of
    every later collection, and collect the young generation far less often.
    """
    gc.collect()  # garbage left now would otherwise be frozen with the rest
    gc.freeze()
    first, second, third = gc.get_threshold()
    if first < GC_FIRST_THRESHOLD:
        gc.set_threshold(GC_FIRST_THRESHOLD, second, third)

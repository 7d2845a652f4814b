"""A load-generating process: GET lists of URLs at fixed concurrency for a fixed time.

    python loadgen.py --urls FILE [--urls FILE2 ...] --concurrency 16 --duration 10
        [--warmup 2] [--slice 1] [--token T]

With one `--urls`, every client requests that list's URLs in turn for the whole time. With
several (one per server to compare), the time is cut into slices of `--slice` seconds that go
to each list in turn: every client sends its next request to the current slice's list. The
servers then share whatever else the machine does at the time, slice by slice, instead of
run by run. A request counts for the list of the slice in which it started; each list's
requests per second are over its own slices' time within the measured window.

Prints one JSON object per list (a list of them with several `--urls`): requests, answered
(the warm-up's too), errors, seconds, rps, p50_ms, p99_ms, max_ms. Runs in its own process
so the client's CPU is not charged to a server's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class _Target:
    """One list's URLs and what its requests gave."""

    urls: itertools.cycle[str]
    latencies: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    answered: int = 0
    seconds: float = 0.0


def slice_seconds(
    count: int, start: float, slice_s: float, record_from: float, stop_at: float
) -> list[float]:
    """Each of `count` lists' measured time: its slices (slice k, from `start + k * slice_s`,
    goes to list k % count) within [record_from, stop_at)."""
    seconds = [0.0] * count
    k = 0
    while start + k * slice_s < stop_at:
        begin = max(start + k * slice_s, record_from)
        end = min(start + (k + 1) * slice_s, stop_at)
        if end > begin:
            seconds[k % count] += end - begin
        k += 1
    return seconds


async def _worker(
    session: aiohttp.ClientSession,
    targets: list[_Target],
    headers: dict[str, str],
    start: float,
    slice_s: float,
    stop_at: float,
    record_from: float,
) -> None:
    while True:
        started = time.perf_counter()
        if started >= stop_at:
            return
        target = targets[int((started - start) / slice_s) % len(targets)]
        async with session.get(next(target.urls), headers=headers) as resp:
            await resp.read()
            status = resp.status
        ended = time.perf_counter()
        target.answered += 1
        if started >= record_from:
            if status == 200:
                target.latencies.append(ended - started)
            else:
                target.errors.append(status)


def _result(target: _Target) -> dict[str, float]:
    latencies = sorted(target.latencies)

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))] * 1000

    return {
        "requests": len(latencies),
        "answered": target.answered,
        "errors": len(target.errors),
        "seconds": target.seconds,
        "rps": len(latencies) / target.seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
    }


async def run(
    url_lists: list[list[str]],
    concurrency: int,
    duration: float,
    warmup: float,
    token: str | None,
    slice_s: float = 1.0,
) -> list[dict[str, float]]:
    """One result per list of `url_lists` (the token, if any, goes with every request)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    targets = [_Target(itertools.cycle(urls)) for urls in url_lists]
    if len(targets) == 1:
        slice_s = math.inf
    start = time.perf_counter()
    record_from = start + warmup
    stop_at = record_from + duration
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(
            *(
                _worker(session, targets, headers, start, slice_s, stop_at, record_from)
                for _ in range(concurrency)
            )
        )
    if len(targets) == 1:
        targets[0].seconds = duration
    else:
        for target, seconds in zip(
            targets, slice_seconds(len(targets), start, slice_s, record_from, stop_at), strict=True
        ):
            target.seconds = seconds
    return [_result(target) for target in targets]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", required=True, action="append")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--slice", type=float, default=1.0)
    parser.add_argument("--token")
    args = parser.parse_args()
    url_lists = []
    for path in args.urls:
        with open(path) as handle:
            url_lists.append([line.strip() for line in handle if line.strip()])
    results = asyncio.run(
        run(url_lists, args.concurrency, args.duration, args.warmup, args.token, args.slice)
    )
    json.dump(results[0] if len(results) == 1 else results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A load-generating process: GET a list of URLs at fixed concurrency for a fixed time.

    python loadgen.py --urls FILE --concurrency 16 --duration 10 [--warmup 2] [--token T]

Prints one JSON object: requests, answered (the warm-up's too), errors, seconds, rps, p50_ms,
p99_ms, max_ms. Runs in its
own process so the client's CPU is not charged to the server's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time

import aiohttp


async def _worker(
    session: aiohttp.ClientSession,
    urls: itertools.cycle[str],
    headers: dict[str, str],
    stop_at: float,
    record_from: float,
    latencies: list[float],
    errors: list[int],
    answered: list[int],
) -> None:
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            return
        url = next(urls)
        started = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            status = resp.status
        ended = time.perf_counter()
        answered[0] += 1
        if started >= record_from:
            if status == 200:
                latencies.append(ended - started)
            else:
                errors.append(status)


async def run(
    urls: list[str], concurrency: int, duration: float, warmup: float, token: str | None
) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    errors: list[int] = []
    answered = [0]  # every answer, the warm-up's too (for CPU per request)
    start = time.perf_counter()
    record_from = start + warmup
    stop_at = record_from + duration
    async with aiohttp.ClientSession(connector=connector) as session:
        pool = itertools.cycle(urls)
        await asyncio.gather(
            *(
                _worker(session, pool, headers, stop_at, record_from, latencies, errors, answered)
                for _ in range(concurrency)
            )
        )
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))] * 1000

    return {
        "requests": len(latencies),
        "answered": answered[0],
        "errors": len(errors),
        "seconds": duration,
        "rps": len(latencies) / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--token")
    args = parser.parse_args()
    with open(args.urls) as handle:
        urls = [line.strip() for line in handle if line.strip()]
    result = asyncio.run(run(urls, args.concurrency, args.duration, args.warmup, args.token))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

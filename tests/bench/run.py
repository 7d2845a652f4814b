"""`make bench`: start the local services as `make test` does and run the benchmarks.

python tests/bench/run.py [--quick]
    [--only ingest,query,bigstore,freshness,replica,stream,export,scaleout] [--ingest-n N] ...

bigstore runs after query so that it compares its pages with that run's 2,000,000-event
figures (alone, it loads and measures the 2,000,000-event store itself).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, progress
from summary import write_summary

from harness import provide_services


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument(
        "--only", default="ingest,query,bigstore,freshness,replica,stream,export,scaleout"
    )
    parser.add_argument("--ingest-n", type=int, default=None, help="messages (full: 300,000)")
    parser.add_argument("--naive-n", type=int, default=None, help="messages for the naive run")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--query-n", type=int, default=None, help="events (full: 2,000,000)")
    parser.add_argument("--depth", type=int, default=None, help="deep page (full: 1,000)")
    parser.add_argument("--seconds", type=float, default=None, help="per query measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=2000, help="freshness events/s")
    parser.add_argument("--fresh-seconds", type=int, default=None, help="freshness (full: 60)")
    parser.add_argument(
        "--stream-seconds", type=int, default=None, help="each stream freshness phase (full: 30)"
    )
    parser.add_argument("--export-n", type=int, default=None, help="events (full: 1,000,000)")
    parser.add_argument(
        "--bigstore-n", type=int, default=None, help="events of the big store (full: 20,000,000)"
    )
    parser.add_argument("--scaleout-n", type=int, default=None, help="messages (full: 300,000)")
    args = parser.parse_args()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    log_dir = Path(tempfile.mkdtemp(prefix="course-audit-bench-"))
    progress(f"starting local services; service logs in {log_dir}")
    run_started = time.monotonic()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    done: dict[str, Any] = {}
    with provide_services() as endpoints:
        for name in chosen:
            started = time.monotonic()
            if name == "ingest":
                from ingest import bench_ingest

                n = args.ingest_n or (20_000 if quick else 300_000)
                # 10,000: each naive event is a commit of its own (~2 ms), about 20 s a run.
                naive_n = args.naive_n or (2_000 if quick else 10_000)
                report = asyncio.run(bench_ingest(endpoints, n, naive_n, repeats, log_dir))
            elif name == "query":
                from query import bench_query

                report = asyncio.run(
                    bench_query(
                        endpoints,
                        args.query_n or (200_000 if quick else 2_000_000),
                        args.depth or (100 if quick else 1000),
                        # Five runs, each alternating between the API and the bare handler
                        # (6 s each): the ratio is the median run's (common.paired_ratio).
                        args.repeats or (1 if quick else 5),
                        args.seconds or (1.5 if quick else 6),
                        args.concurrency,
                        log_dir,
                    )
                )
            elif name == "bigstore":
                from bigstore import bench_bigstore

                report = asyncio.run(
                    bench_bigstore(
                        endpoints,
                        args.bigstore_n or (2_000_000 if quick else 20_000_000),
                        # Half the ingest benchmark's messages: twice (empty and big store)
                        # per round, and the whole run must stay under 30 minutes.
                        args.ingest_n or (10_000 if quick else 150_000),
                        args.depth or (100 if quick else 1000),
                        args.repeats or (1 if quick else 2),
                        args.seconds or (1.5 if quick else 10),
                        args.concurrency,
                        log_dir,
                        query_report=done.get("query"),
                        baseline_n=args.query_n or (200_000 if quick else 2_000_000),
                    )
                )
            elif name == "freshness":
                from freshness import bench_freshness

                seconds = args.fresh_seconds or (3 if quick else 60)
                report = asyncio.run(bench_freshness(endpoints, args.rate, seconds, log_dir))
            elif name == "replica":
                from freshness import bench_replica

                seconds = args.fresh_seconds or (3 if quick else 30)
                report = asyncio.run(
                    bench_replica(endpoints, args.rate, seconds, 1 if quick else 2, log_dir)
                )
            elif name == "stream":
                from stream import bench_stream

                seconds = args.stream_seconds or (3 if quick else 30)
                report = asyncio.run(bench_stream(endpoints, args.rate, seconds, log_dir))
            elif name == "export":
                from export import bench_export

                n = args.export_n or (100_000 if quick else 1_000_000)
                report = asyncio.run(bench_export(endpoints, n, repeats, log_dir))
            elif name == "scaleout":
                from scaleout import bench_scaleout

                n = args.scaleout_n or (60_000 if quick else 300_000)
                report = asyncio.run(
                    bench_scaleout(
                        endpoints,
                        n,
                        args.repeats or (1 if quick else 2),
                        log_dir,
                        api_events=30_000 if quick else 300_000,
                        api_seconds=args.seconds or (1.5 if quick else 10),
                        concurrency=args.concurrency,
                    )
                )
            else:
                print(f"unknown benchmark {name!r}", file=sys.stderr)
                return 2
            done[name] = report
            report.wall_s = round(time.monotonic() - started, 1)
            report.parameters.setdefault("quick", quick)
            path = report.write(endpoints.database_url)
            progress(f"wrote {path} ({report.wall_s / 60:.1f} min)")
    total = round(time.monotonic() - run_started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "run.json").write_text(
        json.dumps({"started": when, "quick": quick, "only": chosen, "wall_s": total}) + "\n"
    )
    progress(f"whole run {total / 60:.1f} min; tables in {write_summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: start the local services as `make test` does and run the benchmarks.

python tests/bench/run.py [--quick] [--only ingest,query,freshness] [--ingest-n N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from common import progress

from harness import provide_services


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument("--only", default="ingest,query,freshness")
    parser.add_argument("--ingest-n", type=int, default=None, help="messages (full: 300,000)")
    parser.add_argument("--naive-n", type=int, default=None, help="messages for the naive run")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    log_dir = Path(tempfile.mkdtemp(prefix="course-audit-bench-"))
    progress(f"starting local services; service logs in {log_dir}")
    with provide_services() as endpoints:
        for name in chosen:
            if name == "ingest":
                from ingest import bench_ingest

                n = args.ingest_n or (20_000 if quick else 300_000)
                naive_n = args.naive_n or (2_000 if quick else 20_000)
                report = asyncio.run(bench_ingest(endpoints, n, naive_n, repeats, log_dir))
            else:
                print(f"unknown benchmark {name!r}", file=sys.stderr)
                return 2
            path = report.write(endpoints.database_url)
            progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

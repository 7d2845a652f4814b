"""What the snapshot changes' triggers (migration 0006) cost the consumer's batch statement.

The same realistic events (the ingest benchmark's stream) are written with `write_batch` in
batches into two fresh migrated databases, one with the triggers disabled, alternating which
goes first; per database: median and total statement time, and the PostgreSQL backend's CPU
(utime + stime from /proc/<pid>/stat, so the server must run on this host).

    python tests/bench/trigger_cost.py --server-url postgresql://postgres@127.0.0.1:PORT/postgres
        [--events 60000] [--batch 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime

import asyncpg
from ingest import Databases, build_messages
from scaleout import cpu_seconds

from course_audit.ingest.decode import Decoder
from course_audit.ingest.validate import to_event
from course_audit.model import Decoded, Event, Source
from course_audit.retention import month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.writer import write_batch
from course_audit.wire.schemas import SchemaCatalog

SNAPSHOT_TABLES = ("courses", "users", "page_views")


def events_of(n: int) -> list[Event]:
    decoder = Decoder(SchemaCatalog())
    now = datetime.now(UTC)
    out = []
    for offset, (_, value) in enumerate(build_messages(n)):
        decoded = decoder.decode_sync(value)
        assert isinstance(decoded, Decoded), decoded
        event = to_event(decoded, source=Source("bench", 0, offset), now=now)
        assert isinstance(event, Event), event
        out.append(event)
    return out


async def main(server_url: str, n: int, batch: int) -> None:
    events = events_of(n)
    dbs = Databases(server_url)
    conns: dict[str, tuple[asyncpg.Connection, int, str]] = {}
    try:
        for name in ("triggers", "none"):
            url = await dbs.fresh()
            conn = await asyncpg.connect(url)
            if name == "none":
                for table in SNAPSHOT_TABLES:
                    await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            months = {month_of(e.created_at) for e in events}
            await ensure_partition_for(conn, months, cache=PartitionCache())
            conns[name] = (conn, conn.get_server_pid(), url)
        wall: dict[str, list[float]] = {name: [] for name in conns}
        cpu = dict.fromkeys(conns, 0.0)
        for k, i in enumerate(range(0, n, batch)):
            chunk = events[i : i + batch]
            for name in ("triggers", "none") if k % 2 == 0 else ("none", "triggers"):
                conn, pid, _ = conns[name]
                cpu_before = cpu_seconds(pid)
                started = time.perf_counter()
                await write_batch(conn, chunk, cache=PartitionCache())
                wall[name].append(time.perf_counter() - started)
                cpu[name] += cpu_seconds(pid) - cpu_before
        for name, (conn, _, _) in conns.items():
            bumps = await conn.fetchval("SELECT n FROM snapshot_changes")
            median_ms = statistics.median(wall[name]) * 1000
            print(
                f"{name:9} batches {len(wall[name])}, median {median_ms:.1f} ms, total"
                f" {sum(wall[name]):.2f} s, backend CPU {cpu[name]:.2f} s, bumps {bumps}"
            )
        on, off = wall["triggers"], wall["none"]
        print(f"triggers / none: median {statistics.median(on) / statistics.median(off):.3f},")
        print(f"  total {sum(on) / sum(off):.3f}, backend CPU {cpu['triggers'] / cpu['none']:.3f}")
    finally:
        for conn, _, url in conns.values():
            await conn.close()
            await dbs.drop(url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", required=True)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.server_url, args.events, args.batch))

"""What parts of the store cost the consumer's batch statement, one batch at a time.

A fresh migrated database gets the first `--stored` events of the ingest benchmark's stream
(batches of 2,000, as the consumer writes them), then the next 2,000 are written again and
again, each time in a transaction that is rolled back, under each variant in turn:

    shipped      the batch statement as the consumer runs it
    no-triggers  the snapshot changes' triggers off (session_replication_role = replica)
    no-filter    the two filter indexes of migration 0005 dropped (in the same transaction)

Per variant: minimum and median statement time over `--repeats`. The minimum is the least
disturbed figure on a busy machine; every variant sees the same batch and the same store.

    python tests/bench/batch_cost.py --server-url postgresql://postgres@127.0.0.1:PORT/postgres
        [--stored 20000] [--repeats 12]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
from ingest import Databases
from trigger_cost import events_of

from course_audit.retention import month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.writer import _WRITE_BATCH, batch_document, write_batch

BATCH = 2000
VARIANTS: dict[str, str | None] = {
    "shipped": None,
    "no-triggers": "SET LOCAL session_replication_role = replica",
    "no-filter": (
        "DROP INDEX events_account_root_user_order_idx;"
        " DROP INDEX events_account_root_type_order_idx"
    ),
}


async def main(server_url: str, stored: int, repeats: int) -> None:
    events = events_of(stored + BATCH)
    dbs = Databases(server_url)
    url = await dbs.fresh()
    conn = await asyncpg.connect(url)
    try:
        cache = PartitionCache()
        await ensure_partition_for(conn, {month_of(e.created_at) for e in events}, cache=cache)
        for i in range(0, stored, BATCH):
            await write_batch(conn, events[i : i + BATCH], cache=cache)
        await conn.execute("VACUUM ANALYZE")
        document = batch_document(events[stored:])
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(repeats):
            for name, setup in VARIANTS.items():
                transaction = conn.transaction()
                await transaction.start()
                try:
                    if setup is not None:
                        await conn.execute(setup)
                    started = time.perf_counter()
                    row = await conn.fetchrow(_WRITE_BATCH, document)
                    times[name].append(time.perf_counter() - started)
                    assert row is not None and row["inserted"] == BATCH, row
                finally:
                    await transaction.rollback()
    finally:
        await conn.close()
        await dbs.drop(url)
    print(f"batch of {BATCH:,} on a store of {stored:,} events, {repeats} repeats (ms)")
    for name, values in times.items():
        print(
            f"  {name:12} min {min(values) * 1000:7.1f}"
            f"  median {statistics.median(values) * 1000:7.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", required=True)
    parser.add_argument("--stored", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    asyncio.run(main(args.server_url, args.stored, args.repeats))

"""Rows per second written by the PostgreSQL sink, against a plain COPY of the same rows.

``python -m benchmarks.bench_sink [--positions 50000] [--keys 500] [--runs 5]``

1. Makes a realistic ``position-updates`` stream: whole position lives (``benchmarks.lifecycle``)
   decided by the real ``decide`` over ``--keys`` keys until about ``--positions`` position
   updates were published (several versions per position id, one audit record per input).
2. The sink, end to end: the stream on a fresh topic (12 partitions), then a
   ``PostgresSink`` with the default batch size and linger into a fresh database; timed from
   its first batch to the last record written (group join and migrations not counted).
3. Side by side in each run, the peer: a plain COPY of the same final rows (one per
   position, one per audit record) into empty tables of the same server, in one
   transaction: the ceiling.
4. Once, the write step alone on the same batches without Kafka: ``write_batch`` (what the
   sink does) and ``executemany`` of the same guarded upsert.

Figure ``sink_vs_copy`` (``benchmarks.figures``; median of ``--runs`` runs after a warm-up,
``BENCH_RUNS_SINK`` overrides the default): both sides in records/s of the same stream, the
peer's being the stream's records over the seconds its COPY of their final rows takes, so
the ratio is the COPY's time over the sink's. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import asyncpg

from benchmarks.figures import Figure, measure, report, runs_for
from benchmarks.harness import PARTITIONS as HARNESS_PARTITIONS
from benchmarks.harness import deployment, produce_all, scratch_database
from benchmarks.lifecycle import POLICY, lifecycle_inputs
from sinks.migrate import migrate
from sinks.postgres import PostgresSink, write_batch
from sinks.batch_decode import decode_batch
from sinks.rows import EVENT_COLUMNS, POSITION_COLUMNS, BatchMerger, merge_updates
from stack import localstack
from streams.wire import serde
from streams.domain import AppliedInput, AuditRecord, KeyState, Position, decide
from streams.settings import Settings

PARTITIONS = HARNESS_PARTITIONS  # the deployment's topics
POSITION_UPDATES_PER_CYCLE = 5  # pending_entry, pending_sl, active, closing, closed


def make_stream(positions: int, keys: int) -> list[tuple[str, Position | AuditRecord, bytes]]:
    """(key, update, bytes) as the agent publishes them, in its order."""
    cycles = max(1, round(positions / keys / POSITION_UPDATES_PER_CYCLE))
    states: dict[str, KeyState | None] = {}
    offsets: dict[str, int] = {}
    stream = []
    for event in lifecycle_inputs(keys, cycles):
        offsets[event.key] = offsets.get(event.key, -1) + 1
        decision = decide(states.get(event.key), AppliedInput(offsets[event.key], event), POLICY)
        states[event.key] = decision.state
        if decision.position_changed:
            position = decision.state.position
            stream.append((event.key, position, serde.encode_position_update(event.key, offsets[event.key], position)))
        if decision.audit is not None:
            stream.append((event.key, decision.audit, serde.encode_audit_update(decision.audit)))
    return stream


async def bench_sink(bootstrap: str, database_url: str, stream) -> tuple[float, int]:
    """Seconds the sink takes from its first batch to the last record written, and its transactions."""
    # Its own topics, deleted afterwards: several runs must not pile topics up on a shared broker.
    async with deployment(bootstrap, database_url, "bench-sink") as mine:
        settings = mine.settings()
        await produce_all(bootstrap, mine.topics.updates, ((key.encode(), data) for key, _update, data in stream))
        return await _time_sink(settings, len(stream))


async def _time_sink(settings: Settings, records: int) -> tuple[float, int]:
    sink = PostgresSink(settings, health_interval_s=3600)
    task = asyncio.create_task(sink.run())
    first_batch_at = None
    while sink.stats.records_written < records:
        if task.done():
            task.result()
        if first_batch_at is None and sink.stats.batches:
            first_batch_at = time.monotonic() - sink.stats.last_batch_s
        await asyncio.sleep(0.005)
    finished = time.monotonic()
    sink.stop()
    await task
    return finished - (first_batch_at or finished), sink.stats.batches


def batches_of(stream, size: int) -> list:
    """The stream's rows as the sink writes them, ``size`` records a batch (``decode_batch``)."""
    return [decode_batch([data for _key, _update, data in stream[start:start + size]],
                         [0] * len(stream[start:start + size])).rows
            for start in range(0, len(stream), size)]


def tuple_batches_of(stream, size: int) -> list:
    """The same batches with every row a tuple (what ``executemany`` takes)."""
    return [merge_updates(update for _key, update, _data in stream[start:start + size])
            for start in range(0, len(stream), size)]


async def bench_write_strategies(database_url: str, stream, batch_size: int) -> tuple[float, float]:
    """Seconds to write the stream's batches as the sink does (``write_batch``), and by executemany."""
    batches = {"copy": batches_of(stream, batch_size), "executemany": tuple_batches_of(stream, batch_size)}
    timings = []
    for strategy in ("copy", "executemany"):
        async with scratch_database(database_url, "bench_sink") as url:
            connection = await asyncpg.connect(url)
            try:
                await migrate(connection)
                started = time.perf_counter()
                for rows in batches[strategy]:
                    if strategy == "copy":
                        await write_batch(connection, rows)
                    else:
                        await executemany_batch(connection, rows)
                timings.append(time.perf_counter() - started)
            finally:
                await connection.close()
    return timings[0], timings[1]


_UPSERT = (
    f"INSERT INTO monitoring.positions AS stored ({', '.join(POSITION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(POSITION_COLUMNS) + 1))}) "
    f"ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in POSITION_COLUMNS if c != "id")
    + " WHERE stored.version < EXCLUDED.version"
)
_INSERT_EVENT = (
    f"INSERT INTO monitoring.position_events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(EVENT_COLUMNS) + 1))}) ON CONFLICT DO NOTHING"
)


async def executemany_batch(connection: asyncpg.Connection, rows) -> None:
    """The alternative the sink did not take: the same guarded upsert, row by row, pipelined."""
    async with connection.transaction():
        if rows.positions:
            await connection.executemany(_UPSERT, rows.positions)
        if rows.events:
            await connection.executemany(_INSERT_EVENT, rows.events)


async def bench_plain_copy(database_url: str, stream) -> tuple[float, int]:
    """Seconds for a plain COPY of the final rows into empty tables, and how many rows."""
    merger = BatchMerger()
    for _key, update, _data in stream:
        merger.add(update)
    final = merger.rows()
    async with scratch_database(database_url, "bench_sink") as url:
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection)
            started = time.perf_counter()
            async with connection.transaction():
                await connection.copy_records_to_table("positions", schema_name="monitoring",
                                                       records=final.positions, columns=POSITION_COLUMNS)
                await connection.copy_records_to_table("position_events", schema_name="monitoring",
                                                       records=final.events, columns=EVENT_COLUMNS)
            return time.perf_counter() - started, len(final.positions) + len(final.events)
        finally:
            await connection.close()


async def run(bootstrap: str, database_url: str, positions: int, keys: int, runs: int) -> list[Figure]:
    stream = make_stream(positions, keys)
    position_updates = sum(1 for _k, update, _d in stream if isinstance(update, Position))
    distinct = len({update.id for _k, update, _d in stream if isinstance(update, Position)})
    settings = Settings.from_env(kafka_bootstrap_servers=bootstrap, database_url=database_url)
    final_rows = distinct + (len(stream) - position_updates)
    print(f"stream: {len(stream):,} update records ({position_updates:,} position updates of {distinct:,} "
          f"positions over {keys} keys, {len(stream) - position_updates:,} audit records) -> "
          f"{final_rows:,} final rows")

    copy_values: list[float] = []
    copy_rows: list[float] = []  # the COPY in final rows/s, as the issue first compared it
    transactions: list[int] = []

    async def side_by_side() -> float:
        """One run of each, the sink first: the sink's records/s (the COPY's kept in ``copy_values``)."""
        async with scratch_database(database_url, "bench_sink") as url:
            sink_s, batches = await bench_sink(bootstrap, url, stream)
        plain_s, rows = await bench_plain_copy(database_url, stream)
        copy_values.append(len(stream) / plain_s)
        copy_rows.append(rows / plain_s)
        transactions.append(batches)
        print(f"    sink {len(stream) / sink_s:,.0f} records/s = {final_rows / sink_s:,.0f} final rows/s "
              f"({sink_s:.2f}s, {batches} transactions); plain COPY of the {rows:,} final rows "
              f"{rows / plain_s:,.0f} rows/s ({plain_s:.2f}s) = {len(stream) / plain_s:,.0f} records/s")
        return len(stream) / sink_s

    sink_values = await measure(runs, side_by_side, label="sink_vs_copy")
    del copy_values[0], copy_rows[0], transactions[0]  # the warm-up's

    copy_s, many_s = await bench_write_strategies(database_url, stream, settings.sink_batch_size)
    print(f"  write step alone, same {settings.sink_batch_size}-record batches: write_batch (unnest merge + binary COPY) "
          f"{len(stream) / copy_s:,.0f} records/s ({copy_s:.2f}s); executemany upsert "
          f"{len(stream) / many_s:,.0f} records/s ({many_s:.2f}s)")

    size = (f"{len(stream):,} update records ({position_updates:,} states of {distinct:,} positions over {keys} keys, "
            f"{len(stream) - position_updates:,} audit records) -> {final_rows:,} final rows")
    return [Figure(
        "sink_vs_copy", "records/s", sink_values,
        f"the PostgreSQL sink end to end (Kafka, {PARTITIONS} partitions -> PostgreSQL, batch "
        f"{settings.sink_batch_size}, linger {settings.sink_linger_s}s), {size}",
        copy_values,
        "a plain COPY of the same final rows into empty tables of the same server, one transaction, "
        "as the stream's records over its seconds",
        extra={"records": len(stream), "final_rows": final_rows, "batch_size": settings.sink_batch_size,
               "transactions": transactions,
               "copy_final_rows_per_s": [round(value, 1) for value in copy_rows],
               "sink_records_per_s_over_copy_rows_per_s": round(statistics.median(sink_values)
                                                               / statistics.median(copy_rows), 3),
               "write_step_records_per_s": round(len(stream) / copy_s, 1),
               "executemany_records_per_s": round(len(stream) / many_s, 1)},
    )]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=50_000, help="position updates to generate (about)")
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--runs", type=int, default=None, help="runs after the warm-up (default 5, BENCH_RUNS_SINK)")
    arguments = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database_url = os.environ.get("DATABASE_URL")
    if not (bootstrap and database_url):
        endpoints = localstack.ensure_running()
        bootstrap = bootstrap or endpoints.kafka_bootstrap_servers
        database_url = database_url or endpoints.database_url
    runs = arguments.runs if arguments.runs is not None else runs_for("sink", 5)
    report(asyncio.run(run(bootstrap, database_url, arguments.positions, arguments.keys, runs)))


if __name__ == "__main__":
    main()

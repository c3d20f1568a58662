"""A key's history from PostgreSQL: how long ``GET /positions/{key}/history/`` spends in the database.

A fresh database, migrated as the sink migrates it, holds one key with 200 positions and
10,000 events (50 per position) among 100 other keys with 100,000 events. The endpoint's
reader (``streams.web.history.PositionHistory``) reads the key's 200 positions with all their
events; beside it, in the same run, the peer: one plain indexed ``SELECT`` of the same
10,000 event rows. Median, min and max of 20 reads each, after a warm-up read.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from benchmarks.harness import endpoints, scratch_database
from sinks.migrate import migrate
from streams.web.history import PositionHistory

KEY = "HISTUSDT@binance"
POSITIONS = 200
EVENTS_PER_POSITION = 50
OTHER_KEYS = 100
OTHER_EVENTS_PER_KEY = 1_000
READS = 20


def _rows(key: str, positions: int, events_per_position: int) -> tuple[list[tuple], list[tuple]]:
    """``monitoring.positions`` and ``monitoring.position_events`` rows of one key's closed positions."""
    symbol, exchange = key.split("@")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    position_rows, event_rows = [], []
    offset = 0
    for index in range(positions):
        position_id = f"{key}/{offset}"
        opened = start + timedelta(minutes=index)
        position_rows.append((position_id, symbol, exchange, "BUY", Decimal("1"), Decimal("10"), Decimal("9.75"), Decimal("2.5"),
                              "closed", "signal", f"sig-{index}", opened, opened + timedelta(seconds=30),
                              opened + timedelta(seconds=30), offset + events_per_position - 1))
        for step in range(events_per_position):
            event_rows.append((key, offset, symbol, exchange, position_id, "report", "applied", "a step",
                               f"report:{offset}", opened + timedelta(milliseconds=step), "active",
                               f"ppe1-{offset}", "entry", "filled"))
            offset += 1
    return position_rows, event_rows


async def fill(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await migrate(connection)
        keys = [(KEY, POSITIONS, EVENTS_PER_POSITION)] + [
            (f"OTHER{index}USDT@binance", OTHER_EVENTS_PER_KEY // EVENTS_PER_POSITION, EVENTS_PER_POSITION)
            for index in range(OTHER_KEYS)]
        for key, positions, per_position in keys:
            position_rows, event_rows = _rows(key, positions, per_position)
            await connection.copy_records_to_table(
                "positions", schema_name="monitoring", records=position_rows,
                columns=["id", "symbol", "exchange", "side", "quantity", "entry_price", "stop_loss_price",
                         "stop_loss_pct", "status", "source", "signal_id", "opened_at", "closed_at", "updated_at",
                         "version"])
            await connection.copy_records_to_table(
                "position_events", schema_name="monitoring", records=event_rows,
                columns=["key", "input_offset", "symbol", "exchange", "position_id", "kind", "decision", "reason",
                         "event_id", "time", "status_after", "client_order_id", "order_role", "order_outcome"])
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def timed(read, runs: int = READS) -> list[float]:
    await read()  # warm-up: connection, plan cache
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        await read()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def summary(durations: list[float]) -> str:
    return f"median {statistics.median(durations):.1f} ms (min {min(durations):.1f}, max {max(durations):.1f})"


async def run(database_url: str) -> None:
    async with scratch_database(database_url, "bench_history") as url:
        await fill(url)
        history = PositionHistory(url)
        peer = await asyncpg.connect(url)
        try:
            answer = await history.read(KEY, limit=POSITIONS)
            events = sum(len(position["events"]) for position in answer["positions"])
            ours = await timed(lambda: history.read(KEY, limit=POSITIONS))
            plain = await timed(lambda: peer.fetch(
                "SELECT * FROM monitoring.position_events WHERE key = $1 ORDER BY input_offset", KEY))
        finally:
            await peer.close()
            await history.close()
    print(f"history: {POSITIONS} positions and {events:,} events of one key (among "
          f"{OTHER_KEYS * OTHER_EVENTS_PER_KEY:,} events of {OTHER_KEYS} other keys): {summary(ours)} "
          f"for the endpoint's reads and JSON shaping; peer, one plain indexed SELECT of the same events: "
          f"{summary(plain)}")


def main() -> None:
    asyncio.run(run(endpoints()[1]))


if __name__ == "__main__":
    main()

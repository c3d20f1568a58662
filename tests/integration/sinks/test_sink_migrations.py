"""Migrations and the schema on the real PostgreSQL: contract columns, the backstop index, upgrades."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from sinks.exceptions import MigrationError
from sinks.migrate import Migration, applied_versions, load_migrations, migrate
from sinks.postgres import PostgresWriter
from sinks.rows import merge_updates
from streams.domain import AuditDecision, InputKind, PositionSource, Side, Status
from tests.integration.sink_support import UpdateStream, fresh_database  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

LATEST = len(load_migrations())
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


async def insert_position(connection: asyncpg.Connection, position_id: str, status: str, *,
                          symbol: str = "APTUSDT", exchange: str = "binance") -> None:
    """A row with only the contract's columns (what every migration level has)."""
    await connection.execute(
        "INSERT INTO monitoring.positions (id, symbol, exchange, side, quantity, entry_price, stop_loss_price, "
        "status, source, signal_id, opened_at, closed_at, updated_at, version) "
        "VALUES ($1, $2, $3, 'BUY', 61.8, 10.0, NULL, $4, 'signal', 'sig-1', $5, NULL, $5, 1)",
        position_id, symbol, exchange, status, NOW)


async def test_migrations_on_an_empty_database_create_the_contract_tables(fresh_database):
    # Arrange
    connection = await connect(fresh_database)
    try:
        # Act
        applied = await migrate(connection)

        # Assert
        assert applied == list(range(1, LATEST + 1))
        columns = {row["column_name"]: (row["data_type"], row["is_nullable"]) for row in await connection.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'monitoring' AND table_name = 'positions'")}
        contract = {
            "id": ("text", "NO"), "symbol": ("text", "NO"), "exchange": ("text", "NO"), "side": ("text", "NO"),
            "quantity": ("numeric", "NO"), "entry_price": ("numeric", "YES"),
            "stop_loss_price": ("numeric", "YES"), "status": ("text", "NO"), "source": ("text", "NO"),
            "signal_id": ("text", "YES"), "opened_at": ("timestamp with time zone", "NO"),
            "closed_at": ("timestamp with time zone", "YES"), "updated_at": ("timestamp with time zone", "NO"),
            "version": ("bigint", "NO"),
        }
        assert {name: columns[name] for name in contract} == contract
        events = {row["column_name"]: row["data_type"] for row in await connection.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'monitoring' AND table_name = 'position_events'")}
        assert events == {
            "key": "text", "input_offset": "bigint", "symbol": "text", "exchange": "text", "position_id": "text",
            "kind": "text", "decision": "text", "reason": "text", "event_id": "text",
            "time": "timestamp with time zone", "status_after": "text", "client_order_id": "text",
            "order_role": "text", "order_outcome": "text", "refusal_code": "text",
        }
        primary_key = await connection.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'monitoring.position_events'::regclass AND contype = 'p'")
        assert primary_key == "PRIMARY KEY (key, input_offset)"
        index = await connection.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'monitoring' "
            "AND indexname = 'positions_one_live_per_symbol_exchange'")
        assert "UNIQUE" in index and "(symbol, exchange)" in index
        assert "'closed'" in index and "'rolled_back'" in index
    finally:
        await connection.close()


async def test_migrations_run_twice_are_harmless(fresh_database):
    # Arrange
    connection = await connect(fresh_database)
    try:
        await migrate(connection)
        await insert_position(connection, "APTUSDT@binance/1", "active")
        recorded = await connection.fetch("SELECT * FROM monitoring.schema_migrations ORDER BY version")

        # Act
        again = await migrate(connection)

        # Assert
        assert again == []
        assert await connection.fetch("SELECT * FROM monitoring.schema_migrations ORDER BY version") == recorded
        assert await connection.fetchval("SELECT count(*) FROM monitoring.positions") == 1
    finally:
        await connection.close()


async def test_two_sinks_migrating_at_once_apply_each_migration_exactly_once(fresh_database):
    # Arrange
    first, second = await connect(fresh_database), await connect(fresh_database)
    try:
        # Act: both start together; the advisory lock makes one wait for the other.
        applied = await asyncio.gather(migrate(first), migrate(second))

        # Assert
        assert sorted(applied[0] + applied[1]) == list(range(1, LATEST + 1))
        assert [] in applied
        assert sorted(await applied_versions(first)) == list(range(1, LATEST + 1))
    finally:
        await first.close()
        await second.close()


async def test_a_database_at_an_older_migration_is_brought_up_to_the_latest(fresh_database):
    # Arrange: a database left at 0001 by an older sink, holding one live position.
    connection = await connect(fresh_database)
    try:
        assert await migrate(connection, target=1) == [1]
        await insert_position(connection, "APTUSDT@binance/1", "active")

        # Act
        applied = await migrate(connection)

        # Assert
        assert applied == list(range(2, LATEST + 1))
        row = await connection.fetchrow("SELECT * FROM monitoring.positions")
        assert (row["id"], row["status"], row["quantity"]) == ("APTUSDT@binance/1", "active", Decimal("61.8"))
        assert row["key"] == "APTUSDT@binance"  # computed by 0003 for the existing row
        assert row["close_requested"] is False and row["requested_quantity"] is None
        assert await connection.fetchval("SELECT to_regclass('monitoring.position_events') IS NOT NULL")
    finally:
        await connection.close()

    # And the sink replaces the upgraded row with a newer version of that position, filling
    # the new columns, while an older version is ignored.
    stream = UpdateStream()
    stream.open_to_active("APTUSDT")
    (newest,) = stream.positions()
    newer = dataclasses.replace(newest, id="APTUSDT@binance/1", version=5)
    older = dataclasses.replace(newer, version=0, status=Status.PENDING_ENTRY)
    writer = PostgresWriter(fresh_database, max_backoff_s=0.5)
    try:
        await writer.write(merge_updates([newer]), asyncio.Event())
        await writer.write(merge_updates([older]), asyncio.Event())
        row = await (await writer.connection()).fetchrow("SELECT * FROM monitoring.positions")
    finally:
        await writer.close()
    assert (row["version"], row["status"], row["requested_quantity"]) == (5, "active", newer.requested_quantity)
    assert row["stop_loss_pct"] == newer.stop_loss_pct


async def test_an_applied_migration_that_was_edited_is_refused(fresh_database):
    # Arrange
    connection = await connect(fresh_database)
    try:
        await migrate(connection)
        edited = [*load_migrations()]
        edited[0] = Migration(1, edited[0].name, edited[0].sql + "\n-- a later edit\n")

        # Act / Assert
        with pytest.raises(MigrationError, match="checksum mismatch"):
            await migrate(connection, edited)
    finally:
        await connection.close()


async def test_a_failing_migration_leaves_the_database_at_the_previous_version(fresh_database):
    # Arrange: a 4th migration that creates a table, then fails.
    broken = [*load_migrations(), Migration(LATEST + 1, "broken",
                                            "CREATE TABLE monitoring.half_done (x int);\nSELECT 1/0;")]
    connection = await connect(fresh_database)
    try:
        # Act
        with pytest.raises(MigrationError, match="division by zero") as failed:
            await migrate(connection, broken)

        # Assert: the earlier ones stay, the broken one left nothing behind; the lock is free.
        assert isinstance(failed.value.__cause__, asyncpg.PostgresError)
        assert sorted(await applied_versions(connection)) == list(range(1, LATEST + 1))
        assert not await connection.fetchval("SELECT to_regclass('monitoring.half_done') IS NOT NULL")
        assert await connection.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await connection.close()


async def test_a_second_open_row_for_a_symbol_is_refused_by_the_unique_index(fresh_database):
    # Arrange
    connection = await connect(fresh_database)
    try:
        await migrate(connection)
        await insert_position(connection, "APTUSDT@binance/1", "pending_sl")

        # Act / Assert: a second live row for the key, written directly, is refused.
        with pytest.raises(asyncpg.UniqueViolationError, match="positions_one_live_per_symbol_exchange"):
            await insert_position(connection, "APTUSDT@binance/7", "pending_entry")

        # Ended positions and other exchanges do not count.
        await insert_position(connection, "APTUSDT@binance/0", "closed")
        await insert_position(connection, "APTUSDT@binance/2", "rolled_back")
        await insert_position(connection, "APTUSDT@bybit/1", "active", exchange="bybit")
        assert await connection.fetchval("SELECT count(*) FROM monitoring.positions") == 4
    finally:
        await connection.close()


async def test_the_checks_accept_every_value_of_the_domain_and_refuse_others(fresh_database):
    # Arrange
    connection = await connect(fresh_database)
    try:
        await migrate(connection)

        # Act: every status (terminal ones, so the unique index stays out of the way), side, source.
        for index, status in enumerate(Status):
            for side in Side:
                for source in PositionSource:
                    await connection.execute(
                        "INSERT INTO monitoring.positions (id, symbol, exchange, side, quantity, status, "
                        "source, opened_at, updated_at, version) VALUES ($1, $2, 'binance', $3, 1, $4, $5, "
                        "now(), now(), 0)",
                        f"S{index}{side}{source}@binance/0", f"S{index}{side}{source}", side.value, status.value,
                        source.value)
        offset = 0
        for kind in InputKind:
            for decision in AuditDecision:
                offset += 1
                await connection.execute(
                    "INSERT INTO monitoring.position_events (key, input_offset, symbol, exchange, kind, decision, "
                    "reason, event_id, time) VALUES ('A@b', $1, 'A', 'b', $2, $3, '', '', now())",
                    offset, kind.value, decision.value)

        # Assert
        assert await connection.fetchval("SELECT count(*) FROM monitoring.positions") == \
            len(Status) * len(Side) * len(PositionSource)
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(
                "INSERT INTO monitoring.positions (id, symbol, exchange, side, quantity, status, source, "
                "opened_at, updated_at, version) VALUES ('x', 'X', 'b', 'BUY', 1, 'open', 'signal', "
                "now(), now(), 0)")
    finally:
        await connection.close()

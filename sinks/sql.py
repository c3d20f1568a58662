"""Every statement the sink sends to PostgreSQL, and the one-attempt transactions that send them.

A batch is written in ONE transaction: its position rows are copied (binary COPY) into a
session temp table and merged into ``monitoring.positions`` by one guarded statement; its
audit rows go the same way into ``monitoring.position_events``. Nothing here retries or
reconnects: that is ``sinks.writer``'s job. Failures come out as the package's exceptions
(``sinks.exceptions``), sorted by whether a retry can help.

The statements are module constants, never built from input; ``tests/unit/sinks/test_sql_statements.py``
holds the reviewed list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg

from sinks.exceptions import (
    DatabaseError,
    DatabaseUnavailableError,
    IntegrityViolationError,
    SinkError,
)
from sinks.retry import is_transient
from sinks.rows import EVENT_COLUMNS, POSITION_COLUMNS, BatchRows

__all__ = [
    "INSERT_EVENTS_SQL",
    "MERGE_POSITIONS_SQL",
    "RefusedRow",
    "WriteResult",
    "as_sink_error",
    "create_temp_tables",
    "translated_errors",
    "write_batch",
    "write_batch_isolating_conflicts",
]

_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS sink_positions (LIKE monitoring.positions) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS sink_events (LIKE monitoring.position_events) ON COMMIT DELETE ROWS;
"""


def _merge_positions_sql() -> str:
    columns = ", ".join(POSITION_COLUMNS)
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in POSITION_COLUMNS if column != "id")
    # ORDER BY version: one key's old position leaves the partial unique index (closed)
    # before its next one enters it; see sinks.rows. The WHERE is the version guard.
    return (
        f"INSERT INTO monitoring.positions AS stored ({columns}) "
        f"SELECT {columns} FROM sink_positions ORDER BY version, id "
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        "WHERE stored.version < EXCLUDED.version"
    )


def _insert_events_sql() -> str:
    columns = ", ".join(EVENT_COLUMNS)
    return (
        f"INSERT INTO monitoring.position_events ({columns}) SELECT {columns} FROM sink_events "
        "ON CONFLICT (key, input_offset) DO NOTHING"
    )


MERGE_POSITIONS_SQL = _merge_positions_sql()
INSERT_EVENTS_SQL = _insert_events_sql()

_LIVE_ROW_OF_KEY_SQL = (
    "SELECT * FROM monitoring.positions WHERE symbol = $1 AND exchange = $2 "
    "AND status NOT IN ('closed', 'rolled_back')"
)


@dataclass(frozen=True)
class RefusedRow:
    """A position row the one-live-position index refused, beside the live row that holds the key."""

    row: dict
    existing: dict | None
    error: str


@dataclass(frozen=True)
class WriteResult:
    """What one batch's transaction changed."""

    positions_upserted: int  # rows inserted or replaced by a newer version
    events_inserted: int  # audit rows new to the table
    refused: tuple[RefusedRow, ...] = ()  # rows the unique live-position index refused (dead letters)


def as_sink_error(error: Exception, doing: str) -> Exception:
    """``error`` as the package's exception of its kind; a ``SinkError`` or a non-driver error as it is."""
    if isinstance(error, SinkError):
        return error
    if is_transient(error):
        return DatabaseUnavailableError(f"PostgreSQL unavailable while {doing}: {type(error).__name__}: {error}")
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return IntegrityViolationError(f"PostgreSQL refused a row while {doing}: {error}")
    if isinstance(error, (asyncpg.PostgresError, asyncpg.InterfaceError)):
        return DatabaseError(f"PostgreSQL error while {doing}: {type(error).__name__}: {error}")
    return error


@contextlib.contextmanager
def translated_errors(doing: str) -> Iterator[None]:
    """Re-raises a driver error from the block as the package's exception (``as_sink_error``)."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - classified and wrapped below, nothing swallowed
        wrapped = as_sink_error(error, doing)
        if wrapped is error:
            raise
        raise wrapped from error


async def create_temp_tables(connection: asyncpg.Connection) -> None:
    """Creates the session's staging tables the COPYs write to (once per connection)."""
    await connection.execute(_TEMP_TABLES)


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "INSERT 0 42".
    return int(status.rsplit(" ", 1)[-1])


async def _merge_positions(connection: asyncpg.Connection, records: Sequence[tuple]) -> int:
    """COPYs position rows into the temp table and merges them; returns the rows changed."""
    if not records:
        return 0
    await connection.copy_records_to_table("sink_positions", records=records, columns=POSITION_COLUMNS)
    return _row_count(await connection.execute(MERGE_POSITIONS_SQL))


async def _insert_events(connection: asyncpg.Connection, records: Sequence[tuple]) -> int:
    """COPYs audit rows into the temp table and inserts the new ones; returns how many."""
    if not records:
        return 0
    await connection.copy_records_to_table("sink_events", records=records, columns=EVENT_COLUMNS)
    return _row_count(await connection.execute(INSERT_EVENTS_SQL))


async def write_batch(connection: asyncpg.Connection, rows: BatchRows) -> WriteResult:
    """Writes one batch in one transaction (one attempt); the session's temp tables must exist.

    Raises ``DatabaseUnavailableError`` (retry), ``IntegrityViolationError`` or
    ``DatabaseError`` (do not).
    """
    with translated_errors("writing a batch"):
        async with connection.transaction():
            positions = await _merge_positions(connection, rows.positions)
            events = await _insert_events(connection, rows.events)
        return WriteResult(positions, events)


async def write_batch_isolating_conflicts(connection: asyncpg.Connection, rows: BatchRows) -> WriteResult:
    """Writes one batch row by row, keeping every row but those the live-position index refuses.

    The slow path, taken only after ``write_batch`` met an integrity violation: each
    position row is merged under its own savepoint (the same guarded merge, in version
    order), a refused one is rolled back alone and returned with the live row that holds
    its key. One transaction, as ``write_batch``: the offsets move after it commits.
    """
    refused: list[RefusedRow] = []
    with translated_errors("writing a batch row by row"):
        async with connection.transaction():
            positions = 0
            for row in rows.positions:
                try:
                    async with connection.transaction():  # a savepoint
                        positions += await _merge_positions(connection, [row])
                        # ON COMMIT DELETE ROWS empties the temp table only at the outer commit.
                        await connection.execute("DELETE FROM sink_positions")
                except asyncpg.IntegrityConstraintViolationError as error:
                    refused_row = dict(zip(POSITION_COLUMNS, row))
                    existing = await connection.fetchrow(_LIVE_ROW_OF_KEY_SQL, refused_row["symbol"],
                                                         refused_row["exchange"])
                    refused.append(RefusedRow(refused_row, dict(existing) if existing else None, str(error)))
            events = await _insert_events(connection, rows.events)
        return WriteResult(positions, events, tuple(refused))

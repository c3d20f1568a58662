"""Every statement the sink sends to PostgreSQL, and the one-attempt transactions that send them.

A batch is written in ONE transaction: its position rows are merged into
``monitoring.positions`` by one guarded statement that reads them from array parameters
(one per column, binary); its audit rows are COPYed (binary) into
``monitoring.position_events``, or, when some are there already (a redelivery), inserted
from arrays with ``ON CONFLICT DO NOTHING``. Nothing here retries or
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
from sinks.audit_copy import copy_stream
from sinks.retry import is_transient
from sinks.rows import EVENT_COLUMNS, POSITION_COLUMNS, BatchRows

__all__ = [
    "CREATE_STAGED_EVENTS_SQL",
    "INSERT_EVENTS_SQL",
    "INSERT_STAGED_EVENTS_SQL",
    "MERGE_POSITIONS_SQL",
    "RefusedRow",
    "WriteResult",
    "as_sink_error",
    "translated_errors",
    "write_batch",
    "write_batch_isolating_conflicts",
]

#: PostgreSQL type of each column the sink writes (the arrays' element types).
_POSITION_TYPES = {
    "id": "text", "symbol": "text", "exchange": "text", "side": "text", "quantity": "numeric",
    "requested_quantity": "numeric", "entry_price": "numeric", "stop_loss_pct": "numeric",
    "stop_loss_price": "numeric", "status": "text", "source": "text", "signal_id": "text",
    "opened_at": "timestamptz", "closed_at": "timestamptz", "updated_at": "timestamptz",
    "deadline_at": "timestamptz", "close_requested": "boolean", "version": "bigint",
}
_EVENT_TYPES = {
    "key": "text", "input_offset": "bigint", "symbol": "text", "exchange": "text", "position_id": "text",
    "kind": "text", "decision": "text", "reason": "text", "event_id": "text", "time": "timestamptz",
    "status_after": "text", "client_order_id": "text", "order_role": "text", "order_outcome": "text",
    "refusal_code": "text",
}


def _unnest(columns: Sequence[str], types: dict[str, str]) -> str:
    # One array parameter per column, in ``columns`` order: the batch crosses the wire once,
    # in binary, and the statement is prepared once per connection.
    arrays = ", ".join(f"${number}::{types[column]}[]" for number, column in enumerate(columns, start=1))
    return f"unnest({arrays}) AS batch ({', '.join(columns)})"


def _merge_positions_sql() -> str:
    columns = ", ".join(POSITION_COLUMNS)
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in POSITION_COLUMNS if column != "id")
    # ORDER BY version: one key's old position leaves the partial unique index (closed)
    # before its next one enters it; see sinks.rows. The WHERE is the version guard.
    return (
        f"INSERT INTO monitoring.positions AS stored ({columns}) "
        f"SELECT {columns} FROM {_unnest(POSITION_COLUMNS, _POSITION_TYPES)} ORDER BY version, id "
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        "WHERE stored.version < EXCLUDED.version"
    )


def _insert_events_sql() -> str:
    columns = ", ".join(EVENT_COLUMNS)
    return (
        f"INSERT INTO monitoring.position_events ({columns}) SELECT {columns} "
        f"FROM {_unnest(EVENT_COLUMNS, _EVENT_TYPES)} "
        "ON CONFLICT (key, input_offset) DO NOTHING"
    )


MERGE_POSITIONS_SQL = _merge_positions_sql()
INSERT_EVENTS_SQL = _insert_events_sql()
#: Audit rows in binary COPY form meet rows already written here first: a temporary table of
#: the connection (schema ``pg_temp``), emptied when the transaction commits.
STAGED_EVENTS_TABLE = "sink_staged_events"
CREATE_STAGED_EVENTS_SQL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGED_EVENTS_TABLE} ("
    + ", ".join(f"{column} {_EVENT_TYPES[column]}" for column in EVENT_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
INSERT_STAGED_EVENTS_SQL = (
    f"INSERT INTO monitoring.position_events ({', '.join(EVENT_COLUMNS)}) "
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM pg_temp.{STAGED_EVENTS_TABLE} "
    "ON CONFLICT (key, input_offset) DO NOTHING"
)
#: The audit table the first attempt COPYs into directly (schema ``monitoring``).
EVENTS_TABLE = "position_events"

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


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "INSERT 0 42".
    return int(status.rsplit(" ", 1)[-1])


def _columns(records: Sequence[tuple], width: int) -> list[list]:
    """Rows -> one list per column (the statements' array parameters)."""
    columns = [list(column) for column in zip(*records)]
    return columns or [[] for _ in range(width)]


async def _merge_positions(connection: asyncpg.Connection, records: Sequence[tuple]) -> int:
    """Merges position rows by one guarded statement; returns the rows changed."""
    if not records:
        return 0
    return _row_count(await connection.execute(MERGE_POSITIONS_SQL, *_columns(records, len(POSITION_COLUMNS))))


async def _insert_events(connection: asyncpg.Connection, rows: BatchRows) -> int:
    """Writes a batch's audit rows, each once per (key, input_offset); returns how many are new.

    First a plain COPY into the table under a savepoint: an audit row is written once per
    input, so outside a redelivery none is there yet and this is all it costs. When one is
    (a batch read again after a crash or a rebalance), the COPY is rolled back to the
    savepoint and the rows go in by ``INSERT ... ON CONFLICT DO NOTHING``: the same rows.
    Rows already in binary COPY form (``BatchRows.event_copy``) take that second step
    through a temporary table of the connection, emptied at commit.
    """
    inserted = 0
    if rows.events:
        try:
            async with connection.transaction():  # a savepoint
                inserted += _row_count(await connection.copy_records_to_table(
                    EVENTS_TABLE, schema_name="monitoring", records=rows.events, columns=EVENT_COLUMNS))
        except asyncpg.UniqueViolationError:
            inserted += _row_count(await connection.execute(INSERT_EVENTS_SQL,
                                                            *_columns(rows.events, len(EVENT_COLUMNS))))
    if rows.event_copy_rows:
        # A memoryview: asyncpg would take plain bytes for a file path.
        stream = memoryview(copy_stream(rows.event_copy))
        try:
            async with connection.transaction():  # a savepoint
                inserted += _row_count(await connection.copy_to_table(
                    EVENTS_TABLE, schema_name="monitoring", source=stream, columns=EVENT_COLUMNS, format="binary"))
        except asyncpg.UniqueViolationError:
            await connection.execute(CREATE_STAGED_EVENTS_SQL)
            await connection.copy_to_table(STAGED_EVENTS_TABLE, schema_name="pg_temp", source=stream,
                                           columns=EVENT_COLUMNS, format="binary")
            inserted += _row_count(await connection.execute(INSERT_STAGED_EVENTS_SQL))
    return inserted


async def write_batch(connection: asyncpg.Connection, rows: BatchRows) -> WriteResult:
    """Writes one batch in one transaction (one attempt).

    Raises ``DatabaseUnavailableError`` (retry), ``IntegrityViolationError`` or
    ``DatabaseError`` (do not).
    """
    with translated_errors("writing a batch"):
        async with connection.transaction():
            positions = await _merge_positions(connection, rows.positions)
            events = await _insert_events(connection, rows)
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
                except asyncpg.IntegrityConstraintViolationError as error:
                    refused_row = dict(zip(POSITION_COLUMNS, row))
                    existing = await connection.fetchrow(_LIVE_ROW_OF_KEY_SQL, refused_row["symbol"],
                                                         refused_row["exchange"])
                    refused.append(RefusedRow(refused_row, dict(existing) if existing else None, str(error)))
            events = await _insert_events(connection, rows)
        return WriteResult(positions, events, tuple(refused))

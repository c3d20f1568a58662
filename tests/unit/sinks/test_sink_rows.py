"""The sink's pure parts: rows from update records, the batch merge, retry rules, migration files."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from sinks.exceptions import MigrationError
from sinks.migrate import Migration, check_sequence, load_migrations
from sinks.postgres import SinkStats
from sinks.retry import backoff_delay, is_transient
from sinks.rows import (
    EVENT_COLUMNS,
    POSITION_COLUMNS,
    BatchMerger,
    BatchRows,
    epoch_ms_to_datetime,
    event_row,
    merge_updates,
    position_row,
    split_key,
)
from streams.domain import (
    AuditDecision,
    AuditRecord,
    InputKind,
    OrderRole,
    Position,
    PositionSource,
    RefusalCode,
    ReportOutcome,
    Side,
    Status,
)
from streams.settings import Settings, SettingsError

KEY = "APTUSDT@binance"
TS = 1_761_173_440_123


def position(offset_opened: int = 3, version: int = 3, status: Status = Status.PENDING_ENTRY, **changes) -> Position:
    values = dict(
        id=f"{KEY}/{offset_opened}", symbol="APTUSDT", exchange="binance", side=Side.BUY,
        quantity=Decimal("61.80"), requested_quantity=Decimal("61.8"), entry_price=None,
        stop_loss_pct=Decimal("2.5"), stop_loss_price=None, status=status, source=PositionSource.SIGNAL,
        signal_id="sig-1", opened_at=TS, closed_at=None, updated_at=TS + version, deadline_at=TS + 30_000,
        close_requested=False, entry_order=None, stop_order=None, close_order=None, seen_reports=(),
        version=version,
    )
    values.update(changes)
    return Position(**values)


def audit(offset: int, decision: AuditDecision = AuditDecision.APPLIED, key: str = KEY) -> AuditRecord:
    return AuditRecord(key=key, offset=offset, event_id=f"signal:sig-{offset}", position_id=f"{key}/3",
                       input_kind=InputKind.SIGNAL, decision=decision, reason="free -> pending_entry on open",
                       ts=TS + offset)


def column(row: tuple, columns: tuple[str, ...], name: str):
    return row[columns.index(name)]


# --------------------------------------------------------------------------- rows


def test_epoch_ms_to_datetime_is_exact_to_the_millisecond_and_timezone_aware():
    # Arrange: a value whose float division by 1000 is not exact (…123 / 1000 = …122999…).
    ms = 1_761_173_440_123

    # Act
    moment = epoch_ms_to_datetime(ms)

    # Assert
    assert moment.tzinfo is not None and moment.utcoffset().total_seconds() == 0
    assert moment == datetime(2025, 10, 22, 22, 50, 40, 123_000, tzinfo=UTC)
    assert epoch_ms_to_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("ms", [-1, -86_400_001, 1, 999, 1_000, 86_399_999, 253_402_300_799_999, 1_796_278_865_564])
def test_epoch_ms_to_datetime_agrees_with_the_calendar_before_and_after_the_epoch(ms):
    seconds, milliseconds = divmod(ms, 1000)  # floor division: -1 ms is 23:59:59.999 the day before
    days, seconds = divmod(seconds, 86_400)

    expected = (datetime(1970, 1, 1, tzinfo=UTC).toordinal() + days, seconds, milliseconds * 1000)

    moment = epoch_ms_to_datetime(ms)
    assert (moment.toordinal(), moment.hour * 3600 + moment.minute * 60 + moment.second,
            moment.microsecond) == expected


@pytest.mark.parametrize(("key", "expected"), [
    ("APTUSDT@binance", ("APTUSDT", "binance")),
    ("1000PEPEUSDT@bybit", ("1000PEPEUSDT", "bybit")),
])
def test_split_key_returns_symbol_and_exchange(key, expected):
    assert split_key(key) == expected


@pytest.mark.parametrize("key", ["APTUSDT", "@binance", "APTUSDT@", ""])
def test_split_key_refuses_a_key_that_is_not_symbol_at_exchange(key):
    with pytest.raises(ValueError, match="SYMBOL@exchange"):
        split_key(key)


def test_position_row_maps_every_column_keeping_decimals_exact_and_times_aware():
    # Arrange
    value = position(version=9, status=Status.CLOSED, entry_price=Decimal("10.000"),
                     stop_loss_price=Decimal("9.75"), closed_at=TS + 9, deadline_at=None, close_requested=True)

    # Act
    row = dict(zip(POSITION_COLUMNS, position_row(value), strict=True))

    # Assert
    assert row == {
        "id": f"{KEY}/3", "symbol": "APTUSDT", "exchange": "binance", "side": "BUY",
        "quantity": Decimal("61.80"), "requested_quantity": Decimal("61.8"), "entry_price": Decimal("10.000"),
        "stop_loss_pct": Decimal("2.5"), "stop_loss_price": Decimal("9.75"), "status": "closed",
        "source": "signal", "signal_id": "sig-1", "opened_at": epoch_ms_to_datetime(TS),
        "closed_at": epoch_ms_to_datetime(TS + 9), "updated_at": epoch_ms_to_datetime(TS + 9),
        "deadline_at": None, "close_requested": True, "version": 9,
    }
    assert str(row["quantity"]) == "61.80"  # the exchange's scale, not normalised
    assert all(type(row[name]) is str for name in ("side", "status", "source"))  # enum values, not enums


def test_event_row_maps_the_audit_record_with_symbol_exchange_and_time():
    # Act
    row = dict(zip(EVENT_COLUMNS, event_row(audit(7, AuditDecision.REFUSED)), strict=True))

    # Assert
    assert row == {
        "key": KEY, "input_offset": 7, "symbol": "APTUSDT", "exchange": "binance", "position_id": f"{KEY}/3",
        "kind": "signal", "decision": "refused", "reason": "free -> pending_entry on open",
        "event_id": "signal:sig-7", "time": epoch_ms_to_datetime(TS + 7), "status_after": None,
        "client_order_id": None, "order_role": None, "order_outcome": None, "refusal_code": None,
    }


def test_event_row_carries_the_refusal_code_as_text():
    # Arrange
    record = dataclasses.replace(audit(9, AuditDecision.REFUSED), refusal_code=RefusalCode.ALREADY_OPEN)

    # Act
    row = dict(zip(EVENT_COLUMNS, event_row(record), strict=True))

    # Assert
    assert row["refusal_code"] == "already_open" and type(row["refusal_code"]) is str


def test_event_row_maps_the_status_after_and_the_order_as_text():
    # Arrange
    record = dataclasses.replace(audit(8, AuditDecision.APPLIED), status_after=Status.PENDING_SL,
                                 client_order_id="ppe1-x", order_role=OrderRole.ENTRY,
                                 order_outcome=ReportOutcome.FILLED)

    # Act
    row = dict(zip(EVENT_COLUMNS, event_row(record), strict=True))

    # Assert
    assert (row["status_after"], row["client_order_id"], row["order_role"], row["order_outcome"]) == (
        "pending_sl", "ppe1-x", "entry", "filled")
    assert all(type(row[name]) is str for name in ("status_after", "order_role", "order_outcome"))


# --------------------------------------------------------------------------- merge


def test_batch_merger_keeps_only_the_newest_version_of_each_position_whatever_the_arrival_order():
    # Arrange: five versions of one position, shuffled.
    versions = [position(version=v, status=Status.PENDING_ENTRY if v < 7 else Status.ACTIVE) for v in (3, 4, 5, 6, 7)]
    random.Random(5).shuffle(versions)

    # Act
    rows = merge_updates(versions)

    # Assert
    assert len(rows.positions) == 1
    assert column(rows.positions[0], POSITION_COLUMNS, "version") == 7
    assert column(rows.positions[0], POSITION_COLUMNS, "status") == "active"


def test_batch_merger_orders_an_old_position_closing_before_the_next_one_opening():
    # Arrange: the next position (opened at offset 12) arrives before the old one's close (10).
    old_closed = position(offset_opened=3, version=10, status=Status.CLOSED, closed_at=TS + 10)
    new_open = position(offset_opened=12, version=12)
    new_active = position(offset_opened=12, version=14, status=Status.ACTIVE)

    # Act
    rows = merge_updates([new_active, new_open, old_closed])

    # Assert: by version, so the old row leaves the partial unique index first.
    assert [(column(r, POSITION_COLUMNS, "id"), column(r, POSITION_COLUMNS, "version")) for r in rows.positions] \
        == [(f"{KEY}/3", 10), (f"{KEY}/12", 14)]


def test_batch_merger_writes_each_audit_record_once_per_key_and_offset():
    # Arrange: a redelivered audit record and one of another key at the same offset.
    updates = [audit(1), audit(2), audit(1), audit(1, key="BTCUSDT@binance")]

    # Act
    rows = merge_updates(updates)

    # Assert
    natural_keys = [(column(r, EVENT_COLUMNS, "key"), column(r, EVENT_COLUMNS, "input_offset")) for r in rows.events]
    assert sorted(natural_keys) == [("APTUSDT@binance", 1), ("APTUSDT@binance", 2), ("BTCUSDT@binance", 1)]


def test_batch_rows_of_nothing_are_falsy_so_no_transaction_is_opened():
    assert not BatchMerger().rows()
    assert BatchRows(positions=[], events=[("row",)])


def test_batch_merger_on_equal_versions_keeps_one_row():
    # Arrange: the same state delivered twice (at-least-once).
    same = position(version=4)

    # Act
    rows = merge_updates([same, dataclasses.replace(same)])

    # Assert
    assert len(rows.positions) == 1


# --------------------------------------------------------------------------- retries


def test_backoff_delay_doubles_from_the_initial_delay_up_to_the_cap():
    # Act: the jitter's upper bound (rng = 1) and lower bound (rng = 0).
    highest = [backoff_delay(attempt, cap_s=2.0, rng=lambda: 1.0) for attempt in range(8)]
    lowest = [backoff_delay(attempt, cap_s=2.0, rng=lambda: 0.0) for attempt in range(8)]

    # Assert
    assert highest == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
    assert lowest == pytest.approx([h / 2 for h in highest])
    assert backoff_delay(10_000, cap_s=30.0) <= 30.0  # no overflow on a very long outage


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    asyncpg.InterfaceError("connection is closed"),
], ids=lambda e: type(e).__name__)
def test_is_transient_says_yes_to_outages_and_contention(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.exceptions.CheckViolationError("new row violates check constraint"),
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),
    asyncpg.exceptions.InvalidCatalogNameError('database "nope" does not exist'),
    asyncpg.exceptions.DataError("invalid input syntax for type numeric"),
    ValueError("a bug"),
], ids=lambda e: type(e).__name__)
def test_is_transient_says_no_to_what_a_retry_cannot_fix(error):
    assert not is_transient(error)


# --------------------------------------------------------------------------- migrations and settings


def test_load_migrations_returns_the_shipped_files_numbered_from_one_in_order():
    # Act
    migrations = load_migrations()

    # Assert
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "positions" and "monitoring.positions" in migrations[0].sql
    assert all("BEGIN" not in m.sql.upper().split() and "COMMIT" not in m.sql.upper().split() for m in migrations)
    assert len({m.checksum for m in migrations}) == len(migrations)


@pytest.mark.parametrize("versions", [(1, 3), (2,), (1, 1, 2)])
def test_check_sequence_refuses_gaps_and_duplicates(versions):
    with pytest.raises(MigrationError, match="without gaps"):
        check_sequence([Migration(v, f"m{v}", "SELECT 1") for v in versions])


def test_settings_read_the_sink_knobs_and_refuse_bad_ones_naming_the_variable():
    # Arrange
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d"}

    # Act
    defaults = Settings.from_env(env)
    tuned = Settings.from_env({**env, "PIPELINE_SINK_BATCH_SIZE": "50", "PIPELINE_SINK_LINGER_S": "0",
                               "PIPELINE_SINK_MAX_BACKOFF_S": "5"})

    # Assert
    assert (defaults.sink_batch_size, defaults.sink_linger_s, defaults.sink_max_backoff_s) == (10_000, 0.2, 30.0)
    assert (tuned.sink_batch_size, tuned.sink_linger_s, tuned.sink_max_backoff_s) == (50, 0.0, 5.0)
    for variable, value in (("PIPELINE_SINK_BATCH_SIZE", "0"), ("PIPELINE_SINK_LINGER_S", "-1"),
                            ("PIPELINE_SINK_MAX_BACKOFF_S", "0")):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({**env, variable: value})


def test_sink_stats_summary_names_lag_offsets_versions_and_retries():
    # Arrange
    stats = SinkStats(records_written=10, batches=2, retries=3, last_offsets={0: 9}, last_versions={0: 41},
                      lag={0: 4, 1: 1})

    # Act
    line = stats.summary()

    # Assert
    assert stats.total_lag == 5
    assert "lag 5 {p0=4, p1=1}" in line and "last offsets {p0=9}" in line
    assert "last versions {p0=41}" in line and "retries 3" in line

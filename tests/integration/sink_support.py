"""Shared helpers of the PostgreSQL sink's tests (no tests here).

- ``fresh_database``: a new, empty database on the test server per test, dropped afterwards,
  so sink tests never see each other's rows (or those of parallel sessions).
- ``UpdateStream``: what the agent would publish on ``position-updates`` for a scripted set
  of inputs, made by running the real ``decide`` over them; with the expected final rows.
- ``RunningSink``: a ``PostgresSink`` running in this event loop, stopped at the end.
- ``table_rows`` / ``expected_position_columns``: rows read back, expectations written out
  field by field (independently of ``sinks.rows``, so a mapping bug cannot hide itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from sinks.postgres import PostgresSink
from streams.wire import serde
from streams.domain import (
    AppliedInput,
    AuditRecord,
    CancelOrder,
    Command,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    KeyState,
    PlaceEntry,
    PlaceStopLoss,
    ClosePosition,
    Policy,
    Position,
    ReportOutcome,
    Side,
    Signal,
    SignalAction,
    decide,
)
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

POLICY = Policy(default_stop_loss_pct=Decimal("2"), entry_timeout_ms=30_000, stop_loss_timeout_ms=30_000,
                close_timeout_ms=30_000, signal_id_retention_ms=7 * 24 * 3600 * 1000)
PARTITIONS = 3


# --------------------------------------------------------------------------- databases


def database_url_for(server_url: str, database: str) -> str:
    """``server_url`` pointing at another database on the same server."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def created_database(server_url: str) -> AsyncIterator[str]:
    """A new empty database on the server of ``server_url``; dropped (forcibly) on exit."""
    name = f"sink_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url_for(server_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield database_url_for(server_url, name)
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database for this test alone."""
    async with created_database(database_url) as url:
        yield url


async def table_rows(url: str, table: str, order_by: str) -> list[dict]:
    """Every row of ``table`` as dicts, in ``order_by`` order."""
    connection = await asyncpg.connect(url)
    try:
        return [dict(row) for row in await connection.fetch(f"SELECT * FROM {table} ORDER BY {order_by}")]
    finally:
        await connection.close()


async def positions_by_id(url: str) -> dict[str, dict]:
    """``monitoring.positions`` keyed by id."""
    return {row["id"]: row for row in await table_rows(url, "monitoring.positions", "id")}


async def events_by_key(url: str) -> dict[tuple[str, int], dict]:
    """``monitoring.position_events`` keyed by (key, input_offset)."""
    rows = await table_rows(url, "monitoring.position_events", "key, input_offset")
    return {(row["key"], row["input_offset"]): row for row in rows}


def _time(ms: int | None) -> datetime | None:
    # Deliberately not sinks.rows.epoch_ms_to_datetime: an independent statement of the rule.
    return None if ms is None else datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


def expected_position_columns(position: Position) -> dict:
    """The row a position must become, column by column (contract section 4 plus extras)."""
    return {
        "id": position.id,
        "key": f"{position.symbol}@{position.exchange}",
        "symbol": position.symbol,
        "exchange": position.exchange,
        "side": position.side.value,
        "quantity": position.quantity,
        "requested_quantity": position.requested_quantity,
        "entry_price": position.entry_price,
        "stop_loss_pct": position.stop_loss_pct,
        "stop_loss_price": position.stop_loss_price,
        "status": position.status.value,
        "source": position.source.value,
        "signal_id": position.signal_id,
        "opened_at": _time(position.opened_at),
        "closed_at": _time(position.closed_at),
        "updated_at": _time(position.updated_at),
        "deadline_at": _time(position.deadline_at),
        "close_requested": position.close_requested,
        "version": position.version,
    }


def expected_event_columns(audit: AuditRecord) -> dict:
    """The row an audit record must become, column by column."""
    symbol, _, exchange = audit.key.rpartition("@")
    return {
        "key": audit.key,
        "input_offset": audit.offset,
        "symbol": symbol,
        "exchange": exchange,
        "position_id": audit.position_id,
        "kind": audit.input_kind.value,
        "decision": audit.decision.value,
        "reason": audit.reason,
        "event_id": audit.event_id,
        "time": _time(audit.ts),
        "status_after": None if audit.status_after is None else audit.status_after.value,
        "client_order_id": audit.client_order_id,
        "order_role": None if audit.order_role is None else audit.order_role.value,
        "order_outcome": None if audit.order_outcome is None else audit.order_outcome.value,
        "refusal_code": None if audit.refusal_code is None else audit.refusal_code.value,
    }


def assert_rows_match(rows: dict[str, dict], expected: Iterable[Position]) -> None:
    """Every expected position is a row with exactly these values, and there is no other row."""
    expected = {position.id: expected_position_columns(position) for position in expected}
    assert sorted(rows) == sorted(expected)
    for position_id, columns in expected.items():
        row = rows[position_id]
        differing = {name: (row[name], value) for name, value in columns.items() if row[name] != value}
        assert not differing, f"{position_id}: (row, expected) differ in {differing}"
        # Decimal equality ignores the exponent; the exact exchange scale must survive too.
        for name in ("quantity", "entry_price", "stop_loss_price", "requested_quantity", "stop_loss_pct"):
            if columns[name] is not None:
                assert str(row[name]) == str(columns[name]), (position_id, name, row[name], columns[name])


def assert_events_match(rows: dict[tuple[str, int], dict], expected: Iterable[AuditRecord]) -> None:
    """Every expected audit record is a row with exactly these values, and there is no other row."""
    expected = {(audit.key, audit.offset): expected_event_columns(audit) for audit in expected}
    assert sorted(rows) == sorted(expected)
    for natural_key, columns in expected.items():
        assert rows[natural_key] == columns, natural_key


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class Update:
    """One record of ``position-updates``: the key, the decoded value and its bytes."""

    key: str
    value: Position | AuditRecord
    data: bytes


@dataclass
class UpdateStream:
    """The updates the agent publishes for scripted inputs, made by the real ``decide``.

    Offsets are counted per key (the agent's are per partition; the sink only compares a
    position's versions with each other, so either does).
    """

    updates: list[Update] = field(default_factory=list)
    _states: dict[str, KeyState | None] = field(default_factory=dict)
    _offsets: dict[str, int] = field(default_factory=dict)
    _ts: itertools.count = field(default_factory=lambda: itertools.count(1_761_173_440_000, 1_000))

    def apply(self, event: InputEvent) -> tuple[Command, ...]:
        """Decides ``event`` on its key's state and records the updates the agent would send."""
        offset = self._offsets.get(event.key, -1) + 1
        self._offsets[event.key] = offset
        decision = decide(self._states.get(event.key), AppliedInput(offset, event), POLICY)
        self._states[event.key] = decision.state
        if decision.position_changed and decision.state.position is not None:
            position = decision.state.position
            self.updates.append(Update(event.key, position,
                                       serde.encode_position_update(event.key, offset, position)))
        if decision.audit is not None:
            self.updates.append(Update(event.key, decision.audit, serde.encode_audit_update(decision.audit)))
        return decision.commands

    def positions(self) -> list[Position]:
        """The final state of every position (its newest version)."""
        final: dict[str, Position] = {}
        for update in self.updates:
            if isinstance(update.value, Position):
                final[update.value.id] = update.value
        return list(final.values())

    def audits(self) -> list[AuditRecord]:
        return [update.value for update in self.updates if isinstance(update.value, AuditRecord)]

    # ------------------------------------------------------------------ scripting

    def now(self) -> int:
        return next(self._ts)

    def open(self, symbol: str, side: Side = Side.BUY, quantity: str = "61.8", signal_id: str | None = None,
             stop_loss_pct: str | None = "2.5") -> PlaceEntry | None:
        key, ts = f"{symbol}@binance", self.now()
        signal_id = signal_id or f"{symbol}-open-{ts}"
        commands = self.apply(InputEvent(f"signal:{signal_id}", key, ts, Signal(
            signal_id=signal_id, action=SignalAction.OPEN, symbol=symbol, exchange="binance", side=side,
            quantity=Decimal(quantity), stop_loss_pct=Decimal(stop_loss_pct) if stop_loss_pct else None, ts=ts)))
        return next((c for c in commands if isinstance(c, PlaceEntry)), None)

    def close(self, symbol: str) -> ClosePosition | None:
        """A close signal; the stop's cancel it commands is answered first (as it is executed)."""
        key, ts = f"{symbol}@binance", self.now()
        commands = self.apply(InputEvent(f"signal:{symbol}-close-{ts}", key, ts, Signal(
            signal_id=f"{symbol}-close-{ts}", action=SignalAction.CLOSE, symbol=symbol, exchange="binance",
            side=None, quantity=None, stop_loss_pct=None, ts=ts)))
        self.confirm_cancels(commands)
        return next((c for c in commands if isinstance(c, ClosePosition)), None)

    def confirm_cancels(self, commands: tuple[Command, ...]) -> None:
        """The exchange confirms every CancelOrder among ``commands``."""
        for command in commands:
            if isinstance(command, CancelOrder):
                self.answer(command, ReportOutcome.CANCELED)

    def answer(self, command: Command, outcome: ReportOutcome, *, quantity: str | None = None,
               price: str | None = "10.00", stop_price: str | None = None) -> tuple[Command, ...]:
        ts = self.now()
        filled = outcome is ReportOutcome.FILLED
        return self.apply(InputEvent(f"report:{command.client_order_id}:{outcome.value}", command.key, ts,
                                     ExecutionReport(
            position_id=command.position_id, client_order_id=command.client_order_id, role=command.role,
            outcome=outcome, ts=ts, exchange_order_id=f"x-{command.client_order_id}",
            filled_quantity=Decimal(quantity or str(getattr(command, "quantity", "0"))) if filled else None,
            average_price=Decimal(price) if filled and price else None,
            stop_price=Decimal(stop_price) if stop_price else None,
            error_code=-2019 if outcome is ReportOutcome.REJECTED else None,
            error_message="Margin is insufficient." if outcome is ReportOutcome.REJECTED else None)))

    def snapshot(self, symbol: str, quantity: str, entry_price: str | None = "10.00",
                 side: Side | None = Side.BUY) -> tuple[Command, ...]:
        key, ts = f"{symbol}@binance", self.now()
        flat = Decimal(quantity) == 0
        return self.apply(InputEvent(f"snapshot:{key}:{ts}", key, ts, ExchangeSnapshot(
            exchange="binance", symbol=symbol, fetched_at=ts, side=None if flat else side,
            quantity=Decimal(quantity), entry_price=None if flat else (Decimal(entry_price) if entry_price else None))))

    def open_to_active(self, symbol: str, quantity: str = "61.8", filled: str | None = None) -> None:
        """Open, entry filled, stop-loss accepted: the position ends ``active``."""
        entry = self.open(symbol, quantity=quantity)
        stop = next(c for c in self.answer(entry, ReportOutcome.FILLED, quantity=filled or quantity)
                    if isinstance(c, PlaceStopLoss))
        self.answer(stop, ReportOutcome.ACCEPTED, stop_price=str(round(stop.stop_price, 3)))

    def life(self, symbol: str, variant: int) -> None:
        """One whole position life of a kind chosen by ``variant`` (0..3), ending terminal."""
        if variant == 0:  # open, fill, stop, snapshots, close, close fill: closed
            self.open_to_active(symbol)
            self.snapshot(symbol, "61.8")
            close = self.close(symbol)
            self.answer(close, ReportOutcome.FILLED)
        elif variant == 1:  # entry rejected: rolled_back
            entry = self.open(symbol, quantity="5")
            self.answer(entry, ReportOutcome.REJECTED, price=None)
        elif variant == 2:  # adopted from the exchange, then flat: closed once its stop is canceled
            stop = next(c for c in self.snapshot(symbol, "3.25", "101.5") if isinstance(c, PlaceStopLoss))
            self.answer(stop, ReportOutcome.ACCEPTED, stop_price="99.47")
            self.confirm_cancels(self.snapshot(symbol, "0"))
        else:  # partial fill (the exchange wins), stop hit: closed once the stop is known gone
            self.open_to_active(symbol, quantity="61.8", filled="61.0")
            self.open(symbol)  # refused: already active
            self.confirm_cancels(self.snapshot(symbol, "0"))

    @classmethod
    def lives(cls, keys: int, cycles: int, *, end_active: bool = True, prefix: str = "SINK") -> "UpdateStream":
        """``keys`` symbols x ``cycles`` position lives each, then (optionally) one left active."""
        stream = cls()
        for cycle in range(cycles):
            for index in range(keys):
                stream.life(f"{prefix}{index}USDT", (index + cycle) % 4)
        if end_active:
            for index in range(keys):
                stream.open_to_active(f"{prefix}{index}USDT", quantity=f"{index + 1}.5")
        return stream


# --------------------------------------------------------------------------- Kafka and the sink


def sink_settings(bootstrap: str, database_url: str, suffix: str, **overrides) -> Settings:
    """Settings of a test's private sink: its own topics, group and database."""
    values = dict(kafka_bootstrap_servers=bootstrap, database_url=database_url, app_id=f"sinktest-{suffix}",
                  topic_prefix=f"sinktest-{suffix}.", topic_partitions=PARTITIONS, sink_batch_size=200,
                  sink_linger_s=0.05, sink_max_backoff_s=0.5)
    values.update(overrides)
    return Settings.from_env({}, **values)


async def create_topics(settings: Settings) -> TopicNames:
    await ensure_topics(settings)
    return TopicNames.for_prefix(settings.topic_prefix)


async def publish(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    """Publishes ``(key, value)`` records, keyed like the agent's (murmur2 of the key bytes)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def publish_updates(bootstrap: str, topic: str, updates: Iterable[Update]) -> None:
    await publish(bootstrap, topic, ((update.key.encode(), update.data) for update in updates))


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 60.0,
                     what: str = "") -> None:
    """Polls ``predicate`` (sync or async) until true; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")


class RunningSink:
    """A ``PostgresSink`` running as a task of this event loop."""

    def __init__(self, settings: Settings, **kwargs) -> None:
        self.sink = PostgresSink(settings, **kwargs)
        self.task: asyncio.Task | None = None

    @property
    def stats(self):
        return self.sink.stats

    async def __aenter__(self) -> "RunningSink":
        self.task = asyncio.create_task(self.sink.run())
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def stop(self) -> None:
        self.sink.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=60)

    async def wait_written(self, records: int, timeout_s: float = 60.0) -> None:
        """Until ``records`` update records are durable (raises the sink's error if it died)."""

        def done() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()  # re-raises the sink's failure
                raise AssertionError("the sink stopped before writing everything")
            return self.stats.records_written + self.stats.undecodable >= records

        await wait_until(done, timeout_s, f"{records} records written (stats: {self.stats.summary()})")


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """Partition -> the group's committed offset on ``topic`` (partitions without one left out)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> highwater of ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}

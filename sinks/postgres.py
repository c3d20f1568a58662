"""The PostgreSQL sink: ``position-updates`` -> ``monitoring.positions`` and ``monitoring.position_events``.

The only writer of positions. A plain aiokafka consumer (group ``<app_id>-postgres-sink``,
no auto-commit) reads update records in batches; each batch is written in ONE transaction
and the consumer's offsets move only after that transaction has committed:

- positions: COPY (binary) into a session temp table, then one
  ``INSERT ... SELECT ... ORDER BY version ON CONFLICT (id) DO UPDATE ... WHERE version <
  EXCLUDED.version``. COPY + one merge statement rather than ``executemany``: the data
  crosses the wire once in binary, the guard and the order are one SQL statement the
  planner runs as a single pass, and PostgreSQL applies the rows in the ``ORDER BY`` order
  (which the partial unique index needs, see ``sinks.rows``). On the same batches it
  writes about 1.5x the rows per second of ``executemany`` with the same guarded upsert
  (``benchmarks/bench_sink.py``).
- audit rows: the same COPY, then ``INSERT ... ON CONFLICT (key, input_offset) DO NOTHING``.

Redelivery and replay converge on the same rows: an older or equal version never replaces
a row, an audit row is written once per natural key. When PostgreSQL is down or drops the
connection, the sink keeps the batch, retries with capped exponential backoff, reconnects,
and writes it; meanwhile its partitions are paused (fetching nothing more, so memory stays
bounded) and the consumer keeps polling so the group does not evict it. It never skips a
record and never commits the offset of one it has not written.

Undecodable update records (our own agent wrote them, so this is a bug, not input) are
logged, counted and sent to the dead-letter topic; the sink goes on. So is a position row
the one-live-position index refuses (a replay that did not start at offset 0 re-adopting a
position under a new id, say): the batch is written again row by row, every other row
lands, the refused one is dead-lettered with the live row that holds its key and counted
(``pipeline_sink_refused_rows_total``); the sink never crash-loops on it.

Several sinks may run in the one group: a key lives on one partition, so two sinks never
write the same position or race on the (symbol, exchange) index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from sinks.exceptions import (
    DatabaseError,
    DatabaseUnavailableError,
    IntegrityViolationError,
    SinkError,
)
from sinks.migrate import Migration, migrate
from sinks.retry import backoff_delay, is_transient
from sinks.rows import EVENT_COLUMNS, POSITION_COLUMNS, BatchMerger, BatchRows
from streams.wire import serde
from streams.heartbeat import beat_while_running
from streams.domain import Position
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from streams.telemetry import metrics

logger = logging.getLogger(__name__)

__all__ = [
    "PostgresSink",
    "PostgresWriter",
    "SinkStats",
    "WriteResult",
    "run_sink",
    "write_batch",
]

CONNECT_TIMEOUT_S = 10.0
#: A statement that takes longer is abandoned and the batch retried on a new connection
#: (a hung server must look like an outage, not block the sink forever).
COMMAND_TIMEOUT_S = 60.0
#: While waiting out an outage, the consumer is polled at least this often so the group
#: coordinator does not evict it (max.poll.interval) and the health line keeps coming.
KEEP_ALIVE_INTERVAL_S = 1.0
IDLE_POLL_MS = 500

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


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "INSERT 0 42".
    return int(status.rsplit(" ", 1)[-1])


async def write_batch(connection: asyncpg.Connection, rows: BatchRows) -> WriteResult:
    """Writes one batch in one transaction (one attempt); the session's temp tables must exist.

    Raises ``DatabaseUnavailableError`` (retry), ``IntegrityViolationError`` or
    ``DatabaseError`` (do not).
    """
    try:
        async with connection.transaction():
            positions = events = 0
            if rows.positions:
                await connection.copy_records_to_table("sink_positions", records=rows.positions,
                                                       columns=POSITION_COLUMNS)
                positions = _row_count(await connection.execute(MERGE_POSITIONS_SQL))
            if rows.events:
                await connection.copy_records_to_table("sink_events", records=rows.events, columns=EVENT_COLUMNS)
                events = _row_count(await connection.execute(INSERT_EVENTS_SQL))
        return WriteResult(positions, events)
    except Exception as error:  # noqa: BLE001 - classified and wrapped below, nothing swallowed
        wrapped = _wrap(error, "writing a batch")
        if wrapped is error:
            raise
        raise wrapped from error


_LIVE_ROW_OF_KEY_SQL = (
    "SELECT * FROM monitoring.positions WHERE symbol = $1 AND exchange = $2 "
    "AND status NOT IN ('closed', 'rolled_back')"
)


async def write_batch_isolating_conflicts(connection: asyncpg.Connection, rows: BatchRows) -> WriteResult:
    """Writes one batch row by row, keeping every row but those the live-position index refuses.

    The slow path, taken only after ``write_batch`` met an integrity violation: each
    position row is merged under its own savepoint (the same guarded merge, in version
    order), a refused one is rolled back alone and returned with the live row that holds
    its key. One transaction, as ``write_batch``: the offsets move after it commits.
    """
    refused: list[RefusedRow] = []
    try:
        async with connection.transaction():
            positions = events = 0
            for row in rows.positions:
                try:
                    async with connection.transaction():  # a savepoint
                        await connection.copy_records_to_table("sink_positions", records=[row],
                                                               columns=POSITION_COLUMNS)
                        positions += _row_count(await connection.execute(MERGE_POSITIONS_SQL))
                        await connection.execute("DELETE FROM sink_positions")
                except asyncpg.IntegrityConstraintViolationError as error:
                    refused_row = dict(zip(POSITION_COLUMNS, row))
                    existing = await connection.fetchrow(_LIVE_ROW_OF_KEY_SQL, refused_row["symbol"],
                                                         refused_row["exchange"])
                    refused.append(RefusedRow(refused_row, dict(existing) if existing else None, str(error)))
            if rows.events:
                await connection.copy_records_to_table("sink_events", records=rows.events, columns=EVENT_COLUMNS)
                events = _row_count(await connection.execute(INSERT_EVENTS_SQL))
        return WriteResult(positions, events, tuple(refused))
    except Exception as error:  # noqa: BLE001 - classified and wrapped below, nothing swallowed
        wrapped = _wrap(error, "writing a batch row by row")
        if wrapped is error:
            raise
        raise wrapped from error


def _wrap(error: Exception, doing: str) -> Exception:
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


@dataclass
class SinkStats:
    """Counters and positions of the sink, for logs now and metrics later.

    Partition numbers are those of ``position-updates`` (co-partitioned with
    ``position-inputs``, so a version, the input offset, belongs to the same partition).
    """

    records_written: int = 0  # update records whose batch is durable (offsets then committed)
    positions_upserted: int = 0  # position rows inserted or replaced by a newer version
    events_inserted: int = 0  # audit rows new to the table
    batches: int = 0
    retries: int = 0  # failed attempts to reach or write PostgreSQL
    reconnects: int = 0  # successful connections after a failure
    undecodable: int = 0  # update records that could not be decoded (sent to dead letters)
    refused: int = 0  # position rows the one-live-position index refused (sent to dead letters)
    commit_failures: int = 0  # Kafka offset commits that failed (rows were written: replay only)
    last_offsets: dict[int, int] = field(default_factory=dict)  # partition -> last written update offset
    last_versions: dict[int, int] = field(default_factory=dict)  # partition -> newest input offset written
    lag: dict[int, int] = field(default_factory=dict)  # partition -> update records not yet written
    last_batch_s: float = 0.0  # duration of the last transaction, retries included
    waiting_since: float | None = None  # monotonic time PostgreSQL became unreachable, if it is

    @property
    def total_lag(self) -> int:
        """Update records on the assigned partitions not yet written."""
        return sum(self.lag.values())

    def summary(self) -> str:
        """One log line: what was written, how far behind, how many retries."""
        waiting = "" if self.waiting_since is None else \
            f", WAITING for PostgreSQL for {time.monotonic() - self.waiting_since:.0f}s"
        return (
            f"{self.records_written} records written in {self.batches} batches "
            f"({self.positions_upserted} position upserts, {self.events_inserted} audit rows), "
            f"lag {self.total_lag} {_by_partition(self.lag)}, last offsets {_by_partition(self.last_offsets)}, "
            f"last versions {_by_partition(self.last_versions)}, retries {self.retries}, "
            f"reconnects {self.reconnects}, undecodable {self.undecodable}, refused {self.refused}{waiting}"
        )


def _row_json(row: dict) -> str:
    return json.dumps({name: (value if value is None or isinstance(value, (bool, int)) else str(value))
                       for name, value in row.items()}, sort_keys=True)


def _by_partition(values: dict[int, int]) -> str:
    return "{" + ", ".join(f"p{partition}={value}" for partition, value in sorted(values.items())) + "}"


class _StopRequested(Exception):
    """Raised inside the retry loops when the sink is asked to stop while waiting."""


class PostgresWriter:
    """One connection to PostgreSQL, (re)opened on demand, migrated on first connect.

    ``write`` retries a batch until it is durable: on a transient error the connection is
    dropped, the writer waits (capped exponential backoff, calling ``while_waiting`` at
    least every second) and tries again on a new connection.
    """

    def __init__(self, database_url: str, *, max_backoff_s: float, stats: SinkStats | None = None,
                 application_name: str = "position-pipeline-sink",
                 migrations: Sequence[Migration] | None = None) -> None:
        self.database_url = database_url
        self.max_backoff_s = max_backoff_s
        self.stats = stats if stats is not None else SinkStats()
        self.application_name = application_name
        self._migrations = migrations
        self._connection: asyncpg.Connection | None = None
        self._migrated = False

    async def _connect(self) -> asyncpg.Connection:
        """A new connection with the schema migrated (first time) and the temp tables created."""
        connection = None
        try:
            connection = await asyncpg.connect(
                self.database_url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S,
                server_settings={"application_name": self.application_name},
            )
            if not self._migrated:
                applied = await migrate(connection, self._migrations)
                if applied:
                    logger.info("migrated monitoring schema: applied %s", applied)
                self._migrated = True
            await connection.execute(_TEMP_TABLES)
            return connection
        except BaseException as error:
            if connection is not None:
                connection.terminate()
            wrapped = _wrap(error, "connecting") if isinstance(error, Exception) else error
            if wrapped is error:
                raise
            raise wrapped from error

    async def connection(self) -> asyncpg.Connection:
        """The open connection, or a new one (one attempt, no retry)."""
        if self._connection is None or self._connection.is_closed():
            self._connection = await self._connect()
        return self._connection

    async def close(self) -> None:
        """Closes the connection, if any."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), timeout=5)
            self._connection.terminate()
            self._connection = None

    async def ready(self, stopping: asyncio.Event,
                    while_waiting: Callable[[], Awaitable[None]] | None = None) -> None:
        """Connects and migrates, waiting out an unreachable PostgreSQL; raises on fatal errors."""
        await self._with_retries(self.connection, "connecting", stopping, while_waiting)

    async def write(self, rows: BatchRows, stopping: asyncio.Event,
                    while_waiting: Callable[[], Awaitable[None]] | None = None) -> WriteResult:
        """Writes ``rows`` in one transaction, retrying until durable (or the sink stops).

        A batch the live-position index refuses is written again row by row: every other
        row lands and the refused ones come back in ``WriteResult.refused``; the sink never
        stops (and never crash-loops) on data another position already holds.
        """

        async def attempt() -> WriteResult:
            connection = await self.connection()
            try:
                return await write_batch(connection, rows)
            except IntegrityViolationError as violation:
                logger.warning("batch refused by a constraint (%s): writing it row by row", violation)
                return await write_batch_isolating_conflicts(connection, rows)

        return await self._with_retries(attempt, f"writing {len(rows.positions)} positions and "
                                                 f"{len(rows.events)} audit rows", stopping, while_waiting)

    async def _with_retries(self, operation, doing: str, stopping: asyncio.Event,
                            while_waiting: Callable[[], Awaitable[None]] | None):
        attempt = 0
        while True:
            if stopping.is_set() and attempt:
                raise _StopRequested()
            try:
                result = await operation()
            except DatabaseUnavailableError as error:
                await self._drop_connection()
                if self.stats.waiting_since is None:
                    self.stats.waiting_since = time.monotonic()
                delay = backoff_delay(attempt, cap_s=self.max_backoff_s)
                attempt += 1
                self.stats.retries += 1
                logger.warning("%s failed (attempt %d): %s; retrying in %.1fs, holding the batch and the offsets",
                               doing, attempt, error, delay)
                await _wait(delay, stopping, while_waiting)
                continue
            if attempt:
                self.stats.reconnects += 1
                waited = time.monotonic() - (self.stats.waiting_since or time.monotonic())
                logger.info("PostgreSQL reachable again after %d failed attempts (%.1fs); %s done",
                            attempt, waited, doing)
            self.stats.waiting_since = None
            return result

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()  # no goodbye: the socket is likely dead already
            self._connection = None


async def _wait(delay_s: float, stopping: asyncio.Event,
                while_waiting: Callable[[], Awaitable[None]] | None) -> None:
    deadline = time.monotonic() + delay_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=min(remaining, KEEP_ALIVE_INTERVAL_S))
        if stopping.is_set():
            raise _StopRequested()
        if while_waiting is not None:
            await while_waiting()


class _RebalanceListener(ConsumerRebalanceListener):
    def __init__(self, sink: PostgresSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked) -> None:
        # Offsets of written rows not committed yet (a failed commit) go in before the
        # partitions move, so the next owner rewrites as little as possible.
        await self._sink._commit_written(only=set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        logger.info("postgres sink assigned %s", sorted(tp.partition for tp in assigned))


class PostgresSink:
    """Consumes ``position-updates`` and writes them to PostgreSQL (see the module docstring).

    ``await sink.run()`` runs until ``sink.stop()``; it raises ``SinkError`` for what no retry
    can fix (a failed migration, a refused row), never for an outage.
    """

    def __init__(self, settings: Settings, *, topics: TopicNames | None = None,
                 health_interval_s: float = 30.0, application_name: str = "position-pipeline-sink") -> None:
        self.settings = settings
        self.topics = topics or TopicNames.for_prefix(settings.topic_prefix)
        self.group_id = f"{settings.app_id}-postgres-sink"
        self.health_interval_s = health_interval_s
        self.stats = SinkStats()
        self.writer = PostgresWriter(settings.database_url, max_backoff_s=settings.sink_max_backoff_s,
                                     stats=self.stats, application_name=application_name)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}  # written, offset commit still owed
        self._written_next: dict[TopicPartition, int] = {}
        self._held_from: dict[TopicPartition, int] = {}  # first offset of the batch being written
        self._last_health = time.monotonic()

    def stop(self) -> None:
        """Asks ``run`` to finish the batch in hand (unless it waits for PostgreSQL) and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Migrates, then consumes and writes batches until ``stop()``."""
        logger.info("postgres sink starting: topic %s, group %s, batch %d, linger %.2fs",
                    self.topics.updates, self.group_id, self.settings.sink_batch_size, self.settings.sink_linger_s)
        try:
            # Migrations run at start, before joining the group: a sink that cannot reach
            # its database holds no partitions.
            await self.writer.ready(self._stopping, self._maybe_log_health)
        except _StopRequested:
            await self.writer.close()
            return
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Only what the agent's producer committed (it does not use transactions today;
            # harmless then, right if it ever does).
            isolation_level="read_committed",
        )
        self._consumer.subscribe([self.topics.updates], listener=_RebalanceListener(self))
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                records = await self._next_batch()
                if records:
                    await self._process(records)
                await self._maybe_log_health()
            await self._commit_written()
        except _StopRequested:
            logger.info("postgres sink stopping while waiting for PostgreSQL; the held batch stays uncommitted")
        finally:
            with contextlib.suppress(Exception):
                await self.refresh_lag()
            logger.info("postgres sink stopped: %s", self.stats.summary())
            await self._consumer.stop()
            if self._producer is not None:
                await self._producer.stop()
            await self.writer.close()

    # ------------------------------------------------------------------ batches

    async def _next_batch(self) -> list:
        """Up to ``sink_batch_size`` records: waits for the first, then lingers for the rest."""
        assert self._consumer is not None
        size = self.settings.sink_batch_size
        records: list = []
        linger_until = None
        while len(records) < size:
            if linger_until is None:
                timeout_ms = IDLE_POLL_MS
            else:
                timeout_ms = int(max(0.0, linger_until - time.monotonic()) * 1000)
            fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=size - len(records))
            for partition_records in fetched.values():
                records.extend(partition_records)
            if not records:
                return records  # idle: let the caller log health and check for stop
            if linger_until is None:
                linger_until = time.monotonic() + self.settings.sink_linger_s
            if time.monotonic() >= linger_until:
                break
        return records

    async def _process(self, records: list) -> None:
        started = time.monotonic()
        merger = BatchMerger()
        undecodable = []
        position_records: dict[str, object] = {}  # position id -> the record of its newest version
        newest: dict[TopicPartition, int] = {}
        versions: dict[int, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            newest[tp] = max(newest.get(tp, -1), record.offset)
            self._held_from.setdefault(tp, record.offset)
            try:
                if record.value is None:
                    raise ValueError("update record has no value")
                update = serde.decode_update(record.value)
            except Exception as error:  # noqa: BLE001 - one bad record must not stop the audit log
                undecodable.append((record, error))
                continue
            merger.add(update)
            if isinstance(update, Position):
                position_records[update.id] = record
            version = update.version if isinstance(update, Position) else update.offset
            versions[record.partition] = max(versions.get(record.partition, -1), version)
        if undecodable:
            await self._dead_letter(undecodable)
        rows = merger.rows()
        if rows:
            result = await self.writer.write(rows, self._stopping, self._keep_alive)
            self.stats.positions_upserted += result.positions_upserted
            self.stats.events_inserted += result.events_inserted
            if result.refused:
                await self._dead_letter_refused(result.refused, position_records)
        self._resume_all()
        self._held_from.clear()

        # Durable in PostgreSQL: now, and only now, the offsets may move.
        for tp, offset in newest.items():
            self._uncommitted[tp] = offset + 1
            self._written_next[tp] = offset + 1
            self.stats.last_offsets[tp.partition] = offset
        for partition, version in versions.items():
            self.stats.last_versions[partition] = max(self.stats.last_versions.get(partition, -1), version)
        self.stats.records_written += len(records) - len(undecodable)
        self.stats.batches += 1
        self.stats.last_batch_s = time.monotonic() - started
        await self._commit_written()

    async def _commit_written(self, only: set[TopicPartition] | None = None) -> None:
        """Commits the offsets of written records (still assigned ones; others are re-read, harmlessly)."""
        consumer = self._consumer
        if consumer is None or not self._uncommitted:
            return
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in self._uncommitted.items()
                   if tp in assigned and (only is None or tp in only)}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # The group rebalanced: the partitions' new owner re-reads from the last committed
            # offset and rewrites rows that are already there (idempotent), so nothing is lost.
            self.stats.commit_failures += 1
            logger.warning("offset commit refused after a rebalance (%s); the rows are written, "
                           "the partitions' next owner will rewrite them harmlessly", error)
            for tp in offsets:
                self._uncommitted.pop(tp, None)
            return
        except KafkaError as error:
            self.stats.commit_failures += 1
            logger.warning("offset commit failed (%s); retried with the next batch", error)
            return
        for tp, offset in offsets.items():
            if self._uncommitted.get(tp) == offset:
                del self._uncommitted[tp]

    async def _keep_alive(self) -> None:
        """While a batch waits for PostgreSQL: pause fetching, poll so the group keeps us, log health."""
        consumer = self._consumer
        if consumer is None:
            return
        try:
            consumer.pause(*consumer.assignment())
            stray = await consumer.getmany(timeout_ms=0)
        except KafkaError as error:
            logger.debug("keep-alive poll failed: %s", error)
            stray = {}
        # A partition assigned during the wait is not paused yet and may return records: they
        # are not ours to take now, so rewind to read them again once the batch is written.
        for tp, partition_records in stray.items():
            consumer.seek(tp, partition_records[0].offset)
        await self._maybe_log_health()

    def _resume_all(self) -> None:
        if self._consumer is not None and self._consumer.paused():
            self._consumer.resume(*self._consumer.paused())

    async def _dead_letter_refused(self, refused: Sequence[RefusedRow], position_records: dict) -> None:
        """Dead-letters each position row the live-position index refused, with the row that holds the key."""
        for item in refused:
            record = position_records[item.row["id"]]
            existing = item.existing or {}
            reason = (f"position {item.row['id']} ({item.row['status']}, version {item.row['version']}) refused: "
                      f"{item.row['symbol']}@{item.row['exchange']} already has the live row {existing.get('id')} "
                      f"({existing.get('status')}, version {existing.get('version')}) in monitoring.positions. "
                      f"refused row: {_row_json(item.row)}; existing row: {_row_json(existing)}")
            logger.error("%s; sent to %s, the sink goes on", reason, self.topics.dead_letters)
            metrics.observe_sink_refused_row()
            await self._publish_dead_letter(record, "LivePositionConflict", reason)
            self.stats.refused += 1

    async def _dead_letter(self, undecodable: list) -> None:
        """Logs, counts and publishes undecodable records to the dead-letter topic (acked before commit)."""
        for record, error in undecodable:
            logger.error("undecodable update %s[%d]@%d: %s: %s; sent to %s", record.topic, record.partition,
                         record.offset, type(error).__name__, error, self.topics.dead_letters)
            await self._publish_dead_letter(record, type(error).__name__, str(error) or type(error).__name__)
            self.stats.undecodable += 1

    async def _publish_dead_letter(self, record, error_type: str, reason: str) -> None:
        """Publishes one dead letter for ``record`` and waits for Kafka's acknowledgement (retrying)."""
        if self._producer is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                              acks="all", enable_idempotence=True)
            await self._producer.start()
        letter = serde.DeadLetter(
            source_topic=record.topic, source_partition=record.partition, source_offset=record.offset,
            key=record.key, value=record.value, error_type=error_type, reason=reason, ts=record.timestamp,
        )
        metrics.observe_dead_letter("sink", error_type)
        attempt = 0
        while True:
            try:
                await self._producer.send_and_wait(self.topics.dead_letters, key=record.key or b"",
                                                   value=serde.encode_dead_letter(letter))
                return
            except KafkaError as send_error:
                delay = backoff_delay(attempt, cap_s=self.settings.sink_max_backoff_s)
                attempt += 1
                logger.warning("dead letter not accepted by Kafka (%s); retrying in %.1fs", send_error, delay)
                await _wait(delay, self._stopping, None)

    # ------------------------------------------------------------------ health

    async def refresh_lag(self) -> dict[int, int]:
        """Recomputes ``stats.lag``: per assigned partition, highwater minus the next offset to write."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lag = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            next_offset = self._held_from.get(tp, self._written_next.get(tp))
            if next_offset is None:
                with contextlib.suppress(Exception):
                    next_offset = await asyncio.wait_for(consumer.position(tp), timeout=1)
            if next_offset is not None:
                lag[tp.partition] = max(0, highwater - next_offset)
        self.stats.lag = lag
        return lag

    async def _maybe_log_health(self) -> None:
        if time.monotonic() - self._last_health < self.health_interval_s:
            return
        self._last_health = time.monotonic()
        await self.refresh_lag()
        logger.info("postgres sink: %s", self.stats.summary())


async def run_sink(settings: Settings) -> None:
    """Creates the topics when missing, then runs the sink until SIGTERM / SIGINT."""
    await ensure_topics(settings)
    sink = PostgresSink(settings)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, sink.stop)
    heartbeat = asyncio.create_task(beat_while_running(settings.heartbeat_file)) if settings.heartbeat_file else None
    metrics_server = await _serve_metrics(settings, sink)
    try:
        await sink.run()
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        if metrics_server is not None:
            await metrics_server.cleanup()


async def _serve_metrics(settings: Settings, sink: PostgresSink) -> web.AppRunner | None:
    """``GET /metrics`` of the sink process on ``WEB_BIND:PIPELINE_SINK_METRICS_PORT`` (0: none).

    The sink's own counters (refused rows, dead letters, lag) live in this process, not in
    a worker's. A port already taken (a second sink on the host) costs the endpoint, never
    the sink: logged, and the sink goes on.
    """
    if settings.sink_metrics_port == 0:
        return None

    async def serve_metrics(request: web.Request) -> web.Response:
        await sink.refresh_lag()
        metrics.set_sink_lag(sink.stats.total_lag)
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    application = web.Application()
    application.router.add_get("/metrics", serve_metrics)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.web_bind, settings.sink_metrics_port).start()
    except OSError as error:
        logger.warning("sink metrics not served on %s:%d: %s", settings.web_bind, settings.sink_metrics_port, error)
        await runner.cleanup()
        return None
    logger.info("sink metrics on http://%s:%d/metrics", settings.web_bind, settings.sink_metrics_port)
    return runner

"""The PostgreSQL sink: ``position-updates`` -> ``monitoring.positions`` and ``monitoring.position_events``.

The only writer of positions. A plain aiokafka consumer (group ``<app_id>-postgres-sink``,
no auto-commit) reads update records in batches; each batch is written in ONE transaction
and the consumer's offsets move only after that transaction has committed. Three stages work
at once: while PostgreSQL writes one batch, the sink's decode processes read the batches
fetched after it into rows (``sinks.decode_process``) and the sink fetches the next; batches
are still written and committed one after the other, in fetch order (``run``):

- each record is read straight from its Avro bytes into its table row (``sinks.batch_decode``:
  an audit record of the current schema into its binary COPY row, ``sinks.audit_copy``; any
  other by a reader compiled once per writer schema, ``sinks.decode``, no domain objects;
  anything neither accepts is read by the generic ``serde`` path, so a bad record fails with
  its usual error);
- positions: one ``INSERT ... SELECT ... FROM unnest(<one array per column>) ORDER BY
  version ON CONFLICT (id) DO UPDATE ... WHERE version < EXCLUDED.version``. The data
  crosses the wire once in binary, the guard and the order are one SQL statement the
  planner runs as a single pass, and PostgreSQL applies the rows in the ``ORDER BY`` order
  (which the partial unique index needs, see ``sinks.rows``);
- audit rows: a plain binary COPY into ``monitoring.position_events`` under a savepoint;
  when a row is there already (a batch read again), the savepoint is rolled back and the
  rows go in by ``INSERT ... ON CONFLICT (key, input_offset) DO NOTHING``.

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

This module is the consumer loop (batches, offsets, dead letters, ``/metrics``). The
statements and the one-transaction writes are in ``sinks.sql``, the connection and its
retries in ``sinks.writer``, the counters in ``sinks.stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from sinks.retry import INITIAL_BACKOFF_S
from sinks.decode_process import BatchDecoding
from sinks.rows import BatchRows
from sinks.sql import RefusedRow, WriteResult, write_batch
from sinks.stats import SinkStats
from sinks.writer import PostgresWriter, StopRequested
from streams.edge.backoff import Backoff, retry_until_acknowledged
from streams.wire import serde
from streams.heartbeat import beat_while_running
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics, sink_group
from streams.telemetry import metrics

logger = logging.getLogger(__name__)

# PostgresWriter, SinkStats, WriteResult and write_batch live in sinks.writer, sinks.stats and
# sinks.sql; they stay importable from here, where callers have always found them.
__all__ = [
    "PostgresSink",
    "PostgresWriter",
    "SinkStats",
    "WriteResult",
    "run_sink",
    "write_batch",
]

IDLE_POLL_MS = 500


def _row_json(row: dict) -> str:
    return json.dumps({name: (value if value is None or isinstance(value, (bool, int)) else str(value))
                       for name, value in row.items()}, sort_keys=True)


class _RebalanceListener(ConsumerRebalanceListener):
    """Commits what the sink wrote before its partitions move to another member."""

    def __init__(self, sink: PostgresSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked) -> None:
        """Commits the written, not yet committed offsets of the partitions leaving us."""
        # Offsets of written rows not committed yet (a failed commit) go in before the
        # partitions move, so the next owner rewrites as little as possible.
        await self._sink._commit_written(only=set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        """Logs the partitions this sink now writes."""
        logger.info("postgres sink assigned %s", sorted(tp.partition for tp in assigned))


@dataclass
class DecodedBatch:
    """A batch of update records read into rows, and what its write must know of them."""

    started: float
    records: int
    rows: BatchRows = field(default_factory=lambda: BatchRows(positions=[], events=[]))
    undecodable: list = field(default_factory=list)  # (record, error type name, message)
    position_records: dict = field(default_factory=dict)  # position id -> the record of its newest version
    newest: dict = field(default_factory=dict)  # TopicPartition -> its highest offset in the batch
    versions: dict = field(default_factory=dict)  # partition -> its highest version in the batch
    held_from: dict = field(default_factory=dict)  # TopicPartition -> its first offset in the batch


class PostgresSink:
    """Consumes ``position-updates`` and writes them to PostgreSQL (see the module docstring).

    ``await sink.run()`` runs until ``sink.stop()``; it raises ``SinkError`` for what no retry
    can fix (a failed migration, a refused row), never for an outage.
    """

    def __init__(self, settings: Settings, *, topics: TopicNames | None = None,
                 health_interval_s: float = 30.0, application_name: str = "position-pipeline-sink") -> None:
        self.settings = settings
        self.topics = topics or TopicNames.for_prefix(settings.topic_prefix)
        self.group_id = sink_group(settings)
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
        #: One ``getmany`` at a time: the next batch's fetch runs while a write may poll (keep-alive).
        self._polling = asyncio.Lock()
        self._last_health = time.monotonic()
        # Update bytes -> rows (sinks.batch_decode), in decode processes unless configured to 0.
        self._decoding = BatchDecoding(processes=settings.sink_decode_processes)

    def stop(self) -> None:
        """Asks ``run`` to write the batches in hand (unless it waits for PostgreSQL) and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Migrates, then consumes and writes batches until ``stop()``."""
        logger.info("postgres sink starting: topic %s, group %s, batch %d, linger %.2fs",
                    self.topics.updates, self.group_id, self.settings.sink_batch_size, self.settings.sink_linger_s)
        try:
            # Migrations run at start, before joining the group: a sink that cannot reach
            # its database holds no partitions.
            await self.writer.ready(self._stopping, self._maybe_log_health)
        except StopRequested:
            await self.writer.close()
            return
        try:
            await self._decoding.start()
        except BaseException:
            self._decoding.close()
            await self.writer.close()
            raise
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
        # Three stages at once, each batch passing them in fetch order: this loop fetches, the
        # decode processes read what it fetched (``_decode``), and the writer writes and
        # commits one batch after the other (``_write_in_order``). The queue between them holds
        # the batches fetched and not yet taken by the writer (their decoding, running or
        # waiting for a decode process); a full queue holds the fetching back.
        fetched: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(maxsize=self._decoding.batches_in_flight)
        writer = asyncio.create_task(self._write_in_order(fetched), name="postgres-sink.write")
        try:
            while not self._stopping.is_set() and not writer.done():
                records = await self._next_batch()
                if records:
                    decoding = asyncio.ensure_future(self._decode(records))
                    self.stats.batches_in_hand += 1
                    if not await _unless_done(writer, fetched.put(decoding)):
                        decoding.cancel()  # the writer has ended; its outcome ends the loop
                await self._maybe_log_health()
            await _unless_done(writer, fetched.put(None))  # the writer writes what is fetched, then returns
            await writer
            await self._commit_written()
        except StopRequested:
            logger.info("postgres sink stopping while waiting for PostgreSQL; the held batches stay uncommitted")
        finally:
            # Stopped by an error elsewhere: the batches in hand stay uncommitted (read again).
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            while not fetched.empty():
                decoding = fetched.get_nowait()
                if decoding is not None:
                    decoding.cancel()
                    with contextlib.suppress(BaseException):
                        await decoding
            self.stats.batches_in_hand = 0
            with contextlib.suppress(Exception):
                await self.refresh_lag()
            logger.info("postgres sink stopped: %s", self.stats.summary())
            await self._consumer.stop()
            if self._producer is not None:
                await self._producer.stop()
            self._decoding.close()
            await self.writer.close()

    async def _write_in_order(self, fetched: "asyncio.Queue[asyncio.Future | None]") -> None:
        """Writes the fetched batches as their decoding ends, one after the other in fetch order, until None."""
        while (decoding := await fetched.get()) is not None:
            await self._write(await decoding)
            self.stats.batches_in_hand -= 1

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
            async with self._polling:
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

    async def _decode(self, records: list) -> "DecodedBatch":
        """Reads a batch's records into rows: done while the batch before is written."""
        batch = DecodedBatch(started=time.monotonic(), records=len(records))
        decoded = await self._decoding.decode([record.value for record in records],
                                              [record.partition for record in records])
        newest = batch.newest
        partitions: dict[int, TopicPartition] = {}  # one topic: a partition number names its TopicPartition
        for record in records:
            tp = partitions.get(record.partition)
            if tp is None:
                tp = partitions[record.partition] = TopicPartition(record.topic, record.partition)
                batch.held_from[tp] = record.offset
            if record.offset > newest.get(tp, -1):
                newest[tp] = record.offset
        batch.rows = decoded.rows
        batch.undecodable = [(records[item.index], item.error_type, item.message) for item in decoded.undecodable]
        batch.position_records = {position_id: records[index]
                                  for position_id, index in decoded.position_records.items()}
        batch.versions = decoded.versions
        return batch

    async def _write(self, batch: "DecodedBatch") -> None:
        self._held_from = batch.held_from
        if batch.undecodable:
            await self._dead_letter(batch.undecodable)
        rows = batch.rows
        if rows:
            result = await self.writer.write(rows, self._stopping, self._keep_alive)
            self.stats.positions_upserted += result.positions_upserted
            self.stats.events_inserted += result.events_inserted
            if result.refused:
                await self._dead_letter_refused(result.refused, batch.position_records)
        self._resume_all()
        self._held_from = {}

        # Durable in PostgreSQL: now, and only now, the offsets may move.
        for tp, offset in batch.newest.items():
            self._uncommitted[tp] = offset + 1
            self._written_next[tp] = offset + 1
            self.stats.last_offsets[tp.partition] = offset
        for partition, version in batch.versions.items():
            self.stats.last_versions[partition] = max(self.stats.last_versions.get(partition, -1), version)
        self.stats.records_written += batch.records - len(batch.undecodable)
        self.stats.batches += 1
        self.stats.last_batch_s = time.monotonic() - batch.started
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
            async with self._polling:
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
        for record, error_type, message in undecodable:
            logger.error("undecodable update %s[%d]@%d: %s: %s; sent to %s", record.topic, record.partition,
                         record.offset, error_type, message, self.topics.dead_letters)
            await self._publish_dead_letter(record, error_type, message)
            self.stats.undecodable += 1

    async def _publish_dead_letter(self, record, error_type: str, reason: str) -> None:
        """Publishes one dead letter for ``record`` and waits for Kafka's acknowledgement (retrying)."""
        if self._producer is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                              acks="all", enable_idempotence=True)
            await self._producer.start()
        letter = serde.DeadLetter.of(record.topic, record.partition, record.offset, record.key, record.value,
                                     error_type, record.timestamp, reason)
        metrics.observe_dead_letter("sink", error_type)
        producer = self._producer
        await retry_until_acknowledged(
            lambda: producer.send_and_wait(self.topics.dead_letters, key=record.key or b"",
                                           value=serde.encode_dead_letter(letter)),
            Backoff(INITIAL_BACKOFF_S, max(self.settings.sink_max_backoff_s, INITIAL_BACKOFF_S)), "a dead letter",
            logger, retry_on=KafkaError, stop=self._stopping, stopped=lambda error: StopRequested())

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


async def _unless_done(task: asyncio.Task, awaitable: Any) -> bool:
    """Awaits ``awaitable`` unless ``task`` ends first (then cancels it); True when it completed.

    ``task``'s own outcome is left to its caller.
    """
    waiting = asyncio.ensure_future(awaitable)
    await asyncio.wait((waiting, task), return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        return False
    waiting.result()
    return True


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

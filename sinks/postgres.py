"""The PostgreSQL sink: ``position-updates`` -> ``monitoring.positions`` and ``monitoring.position_events``.

The only writer of positions. A consumer (``sinks.consumer``: confluent-kafka, group
``<app_id>-postgres-sink``, no auto-commit) reads update records in batches; each batch is
written in ONE transaction (one per writer connection with ``PIPELINE_SINK_WRITERS`` > 1,
each holding whole partitions) and the consumer's offsets move only after every one of them
has committed; the commit is sent without waiting for the broker's answer, so the next batch
is written meanwhile. Three stages work
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
consumer is in ``sinks.consumer``, a decoded batch in ``sinks.decoded_batch``, the
statements and the one-transaction writes in ``sinks.sql``, the connections and their
retries in ``sinks.writer``, the counters in ``sinks.stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from sinks.consumer import CommitFailed, CommitRefused, UpdateConsumer
from sinks.retry import INITIAL_BACKOFF_S
from sinks.decode_process import BatchDecoding
from sinks.decoded_batch import DecodedBatch, decoded_batch
from sinks.sql import RefusedRow, WriteResult, write_batch
from sinks.stats import SinkStats
from sinks.writer import PostgresWriter, StopRequested, write_side_by_side
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

IDLE_POLL_S = 0.5


def _row_json(row: dict) -> str:
    return json.dumps({name: (value if value is None or isinstance(value, (bool, int)) else str(value))
                       for name, value in row.items()}, sort_keys=True)


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
        #: One connection per writer; writer w writes the partitions p with p % writers == w.
        self.writers = [PostgresWriter(settings.database_url, max_backoff_s=settings.sink_max_backoff_s,
                                       stats=self.stats, application_name=application_name)
                        for _ in range(settings.sink_writers)]
        self._stopping = asyncio.Event()
        self._consumer: UpdateConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # Partition -> offset. Owed commits are also read and settled by the consumer's thread
        # (a revoke commits them before the partitions move): under ``_owed_lock``.
        self._uncommitted: dict[int, int] = {}  # written, offset commit still owed
        self._owed_lock = threading.Lock()
        self._written_next: dict[int, int] = {}
        self._held_from: dict[int, int] = {}  # first offset of the batch being written
        #: One fetch at a time: the next batch's fetch runs while a write may poll (keep-alive).
        self._polling = asyncio.Lock()
        self._last_health = time.monotonic()
        # Update bytes -> rows (sinks.batch_decode), in decode processes unless configured to 0.
        self._decoding = BatchDecoding(processes=settings.sink_decode_processes, writers=settings.sink_writers)

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
            for writer in self.writers:  # the first migrates
                await writer.ready(self._stopping, self._maybe_log_health)
        except StopRequested:
            await self._close_writers()
            return
        try:
            await self._decoding.start()
        except BaseException:
            self._decoding.close()
            await self._close_writers()
            raise
        self._consumer = UpdateConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=self.group_id,
            topic=self.topics.updates, session_timeout_s=self.settings.session_timeout_s,
            on_revoked=self._owed_of, on_revoke_committed=self._settle, on_assigned=self._log_assigned,
            on_commit_result=self._commit_answered)
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
            await self._consumer.close()
            if self._producer is not None:
                await self._producer.stop()
            self._decoding.close()
            await self._close_writers()

    async def _close_writers(self) -> None:
        for writer in self.writers:
            await writer.close()

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
            timeout_s = IDLE_POLL_S if linger_until is None else max(0.0, linger_until - time.monotonic())
            async with self._polling:
                records.extend(await self._consumer.fetch(size - len(records), timeout_s))
            if not records:
                return records  # idle: let the caller log health and check for stop
            if linger_until is None:
                linger_until = time.monotonic() + self.settings.sink_linger_s
            if time.monotonic() >= linger_until:
                break
        return records

    async def _decode(self, records: list) -> DecodedBatch:
        """Reads a batch's records into rows, one part per writer: done while the batch before is written."""
        started = time.monotonic()
        partitions = [record.partition() for record in records]
        parts = await self._decoding.decode([record.value() for record in records], partitions)
        return decoded_batch(records, partitions, parts, started)

    async def _write(self, batch: DecodedBatch) -> None:
        self._held_from = batch.held_from
        if batch.undecodable:
            await self._dead_letter(batch.undecodable)
        # Each writer's part in its own transaction, side by side: a key's rows are all in one part.
        for result in await write_side_by_side(self.writers, batch.writer_rows, self._stopping, self._keep_alive):
            self.stats.positions_upserted += result.positions_upserted
            self.stats.events_inserted += result.events_inserted
            if result.refused:
                await self._dead_letter_refused(result.refused, batch.position_records)
        if self._consumer is not None:
            await self._consumer.resume_paused()
        self._held_from = {}

        # Durable in PostgreSQL: now, and only now, the offsets may move.
        with self._owed_lock:
            for partition, offset in batch.newest.items():
                self._uncommitted[partition] = offset + 1
        for partition, offset in batch.newest.items():
            self._written_next[partition] = offset + 1
            self.stats.last_offsets[partition] = offset
        for partition, version in batch.versions.items():
            self.stats.last_versions[partition] = max(self.stats.last_versions.get(partition, -1), version)
        self.stats.records_written += batch.records - len(batch.undecodable)
        self.stats.batches += 1
        self.stats.last_batch_s = time.monotonic() - batch.started
        # Sent, not awaited: the next batch is written meanwhile (its answer: ``_commit_answered``).
        await self._commit_written(wait=False)

    def _owed_of(self, partitions: list[int]) -> dict[int, int]:
        """The owed commits of ``partitions`` (called on the consumer's thread as they are revoked)."""
        with self._owed_lock:
            return {partition: self._uncommitted[partition] for partition in partitions
                    if partition in self._uncommitted}

    def _settle(self, offsets: dict[int, int]) -> None:
        """Forgets owed commits that ``offsets`` paid (unless a newer one is owed since)."""
        with self._owed_lock:
            for partition, offset in offsets.items():
                if self._uncommitted.get(partition) == offset:
                    del self._uncommitted[partition]

    def _log_assigned(self, partitions: list[int]) -> None:
        logger.info("postgres sink assigned %s", partitions)

    def _commit_answered(self, offsets: dict[int, int], error: Exception | None) -> None:
        """The broker's answer to a commit sent by ``_commit_written(wait=False)`` (on the consumer's thread)."""
        if error is None:
            self._settle(offsets)
            return
        with self._owed_lock:
            self.stats.commit_failures += 1
            if isinstance(error, CommitRefused):
                for partition in offsets:
                    self._uncommitted.pop(partition, None)
        logger.warning("offset commit %s (%s); %s", "refused after a rebalance" if isinstance(error, CommitRefused)
                       else "failed", error, "the rows are written, the partitions' next owner will rewrite them "
                       "harmlessly" if isinstance(error, CommitRefused) else "retried with the next batch")

    async def _commit_written(self, *, wait: bool = True) -> None:
        """Commits the offsets of written records (still assigned ones; others are re-read, harmlessly);
        ``wait=False`` sends the commit and leaves its answer to ``_commit_answered``."""
        consumer = self._consumer
        if consumer is None:
            return
        assigned = consumer.assigned
        with self._owed_lock:
            offsets = {partition: offset for partition, offset in self._uncommitted.items() if partition in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets, wait=wait)
        except (CommitRefused, CommitFailed) as error:
            self._commit_answered(offsets, error)
            return
        if wait:
            self._commit_answered(offsets, None)

    async def _keep_alive(self) -> None:
        """While a batch waits for PostgreSQL: pause fetching, poll so the group keeps us, log health."""
        consumer = self._consumer
        if consumer is None:
            return
        try:
            await consumer.pause_assigned()
            async with self._polling:
                stray = await consumer.fetch(10_000, 0.0)
        except Exception as error:  # noqa: BLE001 - a keep-alive that fails is tried again in a second
            logger.debug("keep-alive poll failed: %s", error)
            stray = []
        # A partition assigned during the wait is not paused yet and may return records: they
        # are not ours to take now, so rewind to read them again once the batch is written.
        first: dict[int, int] = {}
        for record in stray:
            first.setdefault(record.partition(), record.offset())
        for partition, offset in first.items():
            await consumer.seek(partition, offset)
        await self._maybe_log_health()

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
            logger.error("undecodable update %s[%d]@%d: %s: %s; sent to %s", record.topic(), record.partition(),
                         record.offset(), error_type, message, self.topics.dead_letters)
            await self._publish_dead_letter(record, error_type, message)
            self.stats.undecodable += 1

    async def _publish_dead_letter(self, record, error_type: str, reason: str) -> None:
        """Publishes one dead letter for ``record`` and waits for Kafka's acknowledgement (retrying)."""
        if self._producer is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                              acks="all", enable_idempotence=True)
            await self._producer.start()
        letter = serde.DeadLetter.of(record.topic(), record.partition(), record.offset(), record.key(),
                                     record.value(), error_type, record.timestamp()[1], reason)
        metrics.observe_dead_letter("sink", error_type)
        producer = self._producer
        await retry_until_acknowledged(
            lambda: producer.send_and_wait(self.topics.dead_letters, key=record.key() or b"",
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
        ends = await consumer.highwater()
        fetching = None
        for partition, highwater in ends.items():
            next_offset = self._held_from.get(partition, self._written_next.get(partition))
            if next_offset is None:
                if fetching is None:
                    fetching = await consumer.positions()
                next_offset = fetching.get(partition)
            if next_offset is not None:
                lag[partition] = max(0, highwater - next_offset)
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

"""Rebuild the table from ``position-inputs`` and re-drive the sink: ``python -m streams replay``.

The inputs log is the source of truth; the table and PostgreSQL are derived from it. A
replay, with every worker stopped:

1. refuses to run while the worker group has members (``--force`` overrides): a live worker
   would write the same table;
2. reads ``position-inputs`` from the chosen offsets (``--from-offset``, ``--from-timestamp``,
   default the log start) to the current end and folds the pure ``decide`` over each
   partition in order, from an EMPTY table. It never reads the changelog for state and
   never sends a command: the exchange is not touched;
3. writes the rebuilt states as the table (a record per key on the changelog, on the key's
   own partition, and a tombstone for every key the rebuilt table does not hold), so
   workers restore exactly this table when they start;
4. re-drives the sink: republishes every position state and audit record the fold
   produced to ``position-updates`` (``--truncate-sink`` empties the monitoring tables first);
   the sink's version guard makes rows converge whatever it had;
5. moves the worker group's committed offsets on ``position-inputs`` to where the replay
   stopped, so the workers go on from there.

Starting anywhere but offset 0 (a chosen offset or time, or a log whose older inputs the
broker deleted: create it with ``retention.ms=-1``, the default) rebuilds from an empty table
at that point: the summary says so, and ``--truncate-sink`` is refused unless
``--allow-partial`` is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from tqdm import tqdm

from streams.wire import codec, serde
from streams.domain import KeyState
from streams.worker.processor import ConsumedRecord, InputProcessor, load_from
from streams.settings import Settings
from streams.ops.log import from_start
from streams.topics import TopicNames, ensure_table_changelog, table_changelog_topic, topic_partitions
from streams.ops.errors import OpsError

logger = logging.getLogger(__name__)


class ReplayRefused(OpsError, RuntimeError):
    """The replay would race a running worker or has nothing valid to start from."""


@dataclass
class ReplaySummary:
    """What a replay did."""

    inputs: int = 0
    skipped: int = 0  # records that were dead letters in the original run too
    keys: int = 0
    tombstones: int = 0
    updates_published: int = 0
    statuses: Counter = field(default_factory=Counter)
    start_offsets: dict[int, int] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)
    log_start_offsets: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when the replay started at offset 0 of a log that still starts at 0."""
        return all(offset == 0 for offset in self.start_offsets.values())

    def render(self) -> str:
        live = {status: count for status, count in self.statuses.items()}
        trimmed = {p: o for p, o in self.log_start_offsets.items() if o > 0}
        return "\n".join([
            f"replayed {self.inputs} inputs ({self.skipped} undecodable, skipped as in the original run) "
            f"over {len(self.start_offsets)} partitions in {self.seconds:.1f}s",
            f"table: {self.keys} keys written, {self.tombstones} removed; positions by status: {live or 'none'}",
            f"sink: {self.updates_published} updates republished to position-updates",
            "started from offset 0: every input the log ever held" if self.complete else
            f"started from offsets {self.start_offsets} with an EMPTY table at that point: positions opened "
            f"before are missing from the rebuilt table"
            + (f" (the log itself starts at {trimmed}: older inputs were deleted by retention)" if trimmed else ""),
            f"worker group offsets set to {self.end_offsets}",
        ])


async def _refuse_if_workers_run(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([settings.app_id])
    finally:
        await admin.close()
    members = [member for group in response.to_object()["groups"] for member in group["members"]]
    if members:
        raise ReplayRefused(f"consumer group {settings.app_id!r} has {len(members)} running member(s): stop every "
                            f"worker first (or pass --force if they are gone and the group has not expired)")


async def _start_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], from_offset: int | None,
                         from_timestamp_ms: int | None) -> dict[TopicPartition, int]:
    beginning = await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)
    if from_timestamp_ms is not None:
        found = await consumer.offsets_for_times({tp: from_timestamp_ms for tp in partitions})
        return {tp: (found[tp].offset if found[tp] is not None else end[tp]) for tp in partitions}
    if from_offset is not None:
        return {tp: min(max(from_offset, beginning[tp]), end[tp]) for tp in partitions}
    return dict(beginning)


async def replay(settings: Settings, *, from_offset: int | None = None, from_timestamp_ms: int | None = None,
                 truncate_sink: bool = False, force: bool = False, progress: bool = True,
                 allow_partial_truncate: bool = False) -> ReplaySummary:
    """Runs the replay described in the module docstring; returns its summary.

    Refuses ``truncate_sink`` when the replay does not start at offset 0 of a log that
    starts at 0 (a chosen start, or inputs deleted by retention), unless
    ``allow_partial_truncate``: the rebuilt table would lack every position opened before,
    and emptying the sink would erase their rows.
    """
    started = time.monotonic()
    names = TopicNames.for_prefix(settings.topic_prefix)
    if not force:
        await _refuse_if_workers_run(settings)
    summary = ReplaySummary()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(names.inputs, p)
                      for p in await topic_partitions(settings.kafka_bootstrap_servers, names.inputs)]
        if not partitions:
            raise ReplayRefused(f"topic {names.inputs!r} does not exist")
        starts = await _start_offsets(consumer, partitions, from_offset, from_timestamp_ms)
        ends = await consumer.end_offsets(partitions)
        summary.start_offsets = {tp.partition: starts[tp] for tp in partitions}
        summary.end_offsets = {tp.partition: ends[tp] for tp in partitions}
        summary.log_start_offsets = {tp.partition: offset
                                     for tp, offset in (await consumer.beginning_offsets(partitions)).items()}
        if truncate_sink and not summary.complete and not allow_partial_truncate:
            trimmed = {p: o for p, o in summary.log_start_offsets.items() if o > 0}
            why = (f"the log starts at offsets {trimmed} (older inputs were deleted by retention)" if trimmed
                   else f"it starts at offsets {summary.start_offsets}, not at offset 0")
            raise ReplayRefused(f"--truncate-sink refused: {why}, so the rebuilt table lacks every position opened "
                                f"before and emptying the sink would erase their rows; pass --allow-partial to "
                                f"truncate anyway")
        old_keys = await _changelog_keys(settings.kafka_bootstrap_servers, table_changelog_topic(settings))

        # The agent's own InputProcessor does the fold, so a replay decides exactly as the
        # worker did; its outputs are collected instead of sent, and commands are dropped.
        table: dict[bytes, KeyState] = {}
        partition_of_key: dict[bytes, int] = {}
        pending_updates: list[tuple[int, bytes, bytes, list]] = []
        current = {"partition": 0}
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)

        async def collect(topic: str, key: bytes, value: bytes, headers: list) -> asyncio.Future:
            if topic == names.updates:
                pending_updates.append((current["partition"], key, value, headers))
            elif topic == names.dead_letters:
                summary.skipped += 1
            return done

        processor = InputProcessor(settings=settings, topics=names, send=collect, load=load_from(table),
                                   store=table.__setitem__)
        total = sum(ends[tp] - starts[tp] for tp in partitions)
        bar = tqdm(total=total, unit="input", desc="replaying position-inputs", disable=not progress)
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        remaining = {tp for tp in partitions if starts[tp] < ends[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                current["partition"] = tp.partition
                run = [ConsumedRecord(tp.topic, tp.partition, record.offset, record.key, record.value,
                                      record.timestamp) for record in records if record.offset < ends[tp]]
                # One partition's run at a time, in offset order, states kept decoded between runs.
                await processor.apply_batch(run, table)
                for record in run:
                    if record.key is not None:
                        partition_of_key[record.key] = tp.partition
                bar.update(len(run))
                summary.inputs += len(run)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        bar.close()
        states = {key: (partition_of_key[key], state) for key, state in table.items() if state is not None}

        changelog = await ensure_table_changelog(settings)
        sends = []
        for key, (partition, state) in states.items():
            sends.append(await producer.send(changelog, key=key, partition=partition,
                                             value=codec.encode(serde.KEY_STATE_RECORD, serde.key_state_to_record(state))))
            if state.position is not None:
                summary.statuses[state.position.status.value] += 1
        for key, partition in old_keys.items():
            if key not in states:
                sends.append(await producer.send(changelog, key=key, partition=partition, value=None))
                summary.tombstones += 1
        summary.keys = len(states)

        if truncate_sink:
            await _truncate_sink(settings.database_url)
        for partition, key, value, headers in pending_updates:
            sends.append(await producer.send(names.updates, key=key, partition=partition, value=value,
                                             headers=headers))
        summary.updates_published = len(pending_updates)
        await asyncio.gather(*sends)
        await _commit_worker_offsets(settings, {tp: ends[tp] for tp in partitions})
    finally:
        await consumer.stop()
        await producer.stop()
    summary.seconds = time.monotonic() - started
    return summary


async def _changelog_keys(bootstrap_servers: str, topic: str) -> dict[bytes, int]:
    """Every key the current table holds, with its partition (tombstoned keys excluded)."""
    async with from_start(bootstrap_servers, topic) as log:
        keys: dict[bytes, int] = {}
        remaining = {tp for tp in log.partitions if log.ends[tp] > 0}
        while remaining:
            batch = await log.consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.value is None:
                        keys.pop(record.key, None)
                    else:
                        keys[record.key] = tp.partition
            for tp in list(remaining):
                if await log.consumer.position(tp) >= log.ends[tp]:
                    remaining.discard(tp)
        return keys


async def _truncate_sink(database_url: str) -> None:
    from sinks.migrate import migrate  # the schema's owner: a database no sink has touched yet has no tables

    connection = await asyncpg.connect(database_url)
    try:
        await migrate(connection)
        await connection.execute("TRUNCATE monitoring.positions, monitoring.position_events")
    finally:
        await connection.close()


async def _commit_worker_offsets(settings: Settings, offsets: dict[TopicPartition, int]) -> None:
    """Sets the worker group's position on position-inputs to where the replay ended."""
    committer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.app_id,
                                 enable_auto_commit=False)
    await committer.start()
    try:
        committer.assign(list(offsets))
        await committer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
    finally:
        await committer.stop()

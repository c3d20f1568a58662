"""The sink's Kafka consumer: confluent-kafka (librdkafka) driven from asyncio.

Why not aiokafka, as everywhere else in the pipeline: aiokafka builds a Python
``ConsumerRecord`` for every record it hands over, and for the sink, which does little per
record, that was the largest cost of its own thread: fetching the sink benchmark's 150,000
update records took 0.40-0.53 s of CPU with aiokafka 0.14.0 and 0.11-0.13 s with
confluent-kafka (2026-12-04, same broker, same topic, batches of 10,000), where librdkafka
fetches in threads of its own and hands over C message objects. confluent-kafka is
Confluent's client on librdkafka, the reference C client; it is pinned at the version the
quixstreams benchmark peer also accepts.

``UpdateConsumer`` keeps the consumer on one thread of its own: every call to it runs
there, one at a time (a confluent-kafka consumer is not to be called from two threads at
once), and a rebalance callback runs on that thread too, inside the call that served the
rebalance. So what a callback does must be synchronous and thread-safe:
``on_revoked(partitions)`` returns the offsets to commit before the partitions move, and
they are committed right there, before the group moves on.

Messages are confluent-kafka ``Message`` objects: ``value()``, ``partition()``,
``offset()``, ``key()``, ``topic()``, ``timestamp()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

__all__ = ["CommitFailed", "CommitRefused", "UpdateConsumer"]

logger = logging.getLogger("sinks.postgres")

#: A fetch waits for records in slices this long, so a commit never queues behind a long wait.
FETCH_SLICE_S = 0.05

#: Errors of a commit the group refused because it rebalanced: the partitions have moved on.
_REBALANCED = frozenset({KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                         KafkaError.UNKNOWN_MEMBER_ID, KafkaError._STATE, KafkaError._ASSIGNMENT_LOST})


class CommitRefused(Exception):
    """The group rebalanced: these offsets are not ours to commit any more (the next owner re-reads)."""


class CommitFailed(Exception):
    """The commit did not go through (the broker unreachable, say): the offsets are still owed."""


class UpdateConsumer:
    """One topic's consumer in a group, no auto-commit, read-committed, from the earliest offset.

    ``on_revoked(partitions) -> {partition: offset}`` and ``on_assigned(partitions)`` run on
    the consumer's thread (see the module docstring); ``assigned`` is the partitions held now.
    """

    def __init__(self, *, bootstrap_servers: str, group_id: str, topic: str, session_timeout_s: float,
                 on_revoked: Callable[[list[int]], dict[int, int]],
                 on_revoke_committed: Callable[[dict[int, int]], None],
                 on_assigned: Callable[[list[int]], None],
                 on_commit_result: Callable[[dict[int, int], Exception | None], None]) -> None:
        self.topic = topic
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Only what the agent's producer committed (it does not use transactions today;
            # harmless then, right if it ever does).
            "isolation.level": "read_committed",
            "session.timeout.ms": int(session_timeout_s * 1000),
            "heartbeat.interval.ms": max(1, int(session_timeout_s * 1000 / 3)),
            "logger": logging.getLogger("sinks.consumer.librdkafka"),
            # The outcome of ``commit(wait=False)``, served on the consumer's thread by a later call.
            "on_commit": self._commit_done,
        }
        self._on_revoked = on_revoked
        self._on_revoke_committed = on_revoke_committed
        self._on_assigned = on_assigned
        self._on_commit_result = on_commit_result
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-consumer")
        self._consumer: Consumer | None = None
        #: Partitions held now; replaced whole by the callbacks, read from any thread.
        self.assigned: frozenset[int] = frozenset()
        self._paused: frozenset[int] = frozenset()

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def start(self) -> None:
        """Creates the consumer and subscribes (the group is joined by the first fetch)."""
        def start() -> None:
            self._consumer = Consumer(self._config)
            self._consumer.subscribe([self.topic], on_assign=self._assigned_now, on_revoke=self._revoked_now,
                                     on_lost=self._lost_now)
        await self._call(start)

    # ---------------------------------------------------------------- callbacks (consumer thread)

    def _assigned_now(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted(tp.partition for tp in partitions)
        self.assigned = frozenset(numbers)
        self._on_assigned(numbers)

    def _revoked_now(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        offsets = self._on_revoked(numbers)
        if offsets:
            try:
                consumer.commit(offsets=self._topic_partitions(offsets), asynchronous=False)
                self._on_revoke_committed(offsets)
            except KafkaException as error:
                logger.warning("committing the written offsets of the revoked partitions failed (%s); "
                               "their next owner rewrites those rows harmlessly", error)
        self.assigned = frozenset()
        self._paused = frozenset()

    def _lost_now(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked (the session expired): another member may own them already.
        logger.warning("partitions %s lost by the sink (session expired); they are re-read by their owner",
                       sorted(tp.partition for tp in partitions))
        self.assigned = frozenset()
        self._paused = frozenset()

    def _commit_done(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        committed = {tp.partition: tp.offset for tp in partitions if tp.error is None and tp.offset >= 0}
        failed = error or next((tp.error for tp in partitions if tp.error is not None), None)
        if committed and error is None:
            self._on_commit_result(committed, None)
        if failed is not None:
            refused = failed.code() in _REBALANCED
            offsets = {tp.partition: tp.offset for tp in partitions if error is not None or tp.error is not None}
            self._on_commit_result(offsets, (CommitRefused if refused else CommitFailed)(str(failed)))

    def _topic_partitions(self, offsets: dict[int, int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, partition, offset) for partition, offset in offsets.items()]

    # ---------------------------------------------------------------- calls

    async def fetch(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout_s`` for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = max(0.0, deadline - loop.time())
            messages = await self._call(self._consume, max_records, min(remaining, FETCH_SLICE_S))
            if messages or remaining <= FETCH_SLICE_S:
                return messages

    def _consume(self, max_records: int, timeout_s: float) -> list[Message]:
        assert self._consumer is not None
        messages = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        if not messages or all(message.error() is None for message in messages):
            return messages
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.fatal():
                raise KafkaException(error)
            else:
                logger.warning("the sink's consumer reported: %s", error)
        return records

    async def commit(self, offsets: dict[int, int], *, wait: bool = True) -> None:
        """Commits ``{partition: next offset}``: ``CommitRefused`` after a rebalance, else ``CommitFailed``.

        ``wait=False`` sends the commit and returns: ``on_commit_result(offsets, None |
        CommitRefused | CommitFailed)`` gets the broker's answer later.
        """
        def commit() -> None:
            assert self._consumer is not None
            self._consumer.commit(offsets=self._topic_partitions(offsets), asynchronous=not wait)
        try:
            await self._call(commit)
        except KafkaException as error:
            code = error.args[0].code() if error.args and isinstance(error.args[0], KafkaError) else None
            if code in _REBALANCED:
                raise CommitRefused(str(error)) from error
            raise CommitFailed(str(error)) from error

    async def pause_assigned(self) -> None:
        """Stops fetching from every partition held now (``resume_paused`` starts again)."""
        def pause() -> None:
            assert self._consumer is not None
            partitions = sorted(self.assigned - self._paused)
            if partitions:
                self._consumer.pause([TopicPartition(self.topic, partition) for partition in partitions])
                self._paused = self._paused | frozenset(partitions)
        await self._call(pause)

    async def resume_paused(self) -> None:
        """Fetches again from the partitions ``pause_assigned`` stopped (those still held)."""
        if not self._paused:
            return

        def resume() -> None:
            assert self._consumer is not None
            partitions = sorted(self._paused & self.assigned)
            if partitions:
                self._consumer.resume([TopicPartition(self.topic, partition) for partition in partitions])
            self._paused = frozenset()
        await self._call(resume)

    async def seek(self, partition: int, offset: int) -> None:
        """The next fetch of ``partition`` starts at ``offset``."""
        def seek() -> None:
            assert self._consumer is not None
            self._consumer.seek(TopicPartition(self.topic, partition, offset))
        await self._call(seek)

    async def highwater(self) -> dict[int, int]:
        """Partition -> its end offset as the last fetch saw it, for each partition held."""
        def highwater() -> dict[int, int]:
            assert self._consumer is not None
            ends = {}
            for partition in sorted(self.assigned):
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
                if high >= 0:
                    ends[partition] = high
            return ends
        return await self._call(highwater)

    async def positions(self) -> dict[int, int]:
        """Partition -> the next offset to fetch, for each partition held that has one."""
        def positions() -> dict[int, int]:
            assert self._consumer is not None
            held = [TopicPartition(self.topic, partition) for partition in sorted(self.assigned)]
            return {tp.partition: tp.offset for tp in (self._consumer.position(held) if held else ())
                    if tp.offset != OFFSET_INVALID and tp.offset >= 0}
        return await self._call(positions)

    async def close(self) -> None:
        """Leaves the group (the revoke callback commits what is owed) and ends the thread."""
        def close() -> None:
            if self._consumer is not None:
                self._consumer.close()
        try:
            await self._call(close)
        finally:
            self._thread.shutdown(wait=False)

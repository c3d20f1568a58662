"""The order-attempt ledger: every executor's durable note of what it is about to do.

Binance USD-M documents a client order id as "a unique id among open orders": once the order
holding it is filled, canceled or expired the same id is accepted again. A market entry fills
at once, so the id alone never stops a resent request from becoming a second order. What does
is knowing, before sending, whether any earlier request for that id can still reach the
exchange. Binance refuses a signed request whose ``timestamp`` is more than ``recvWindow``
old (-1021), so a request stamped T can execute only until T + recvWindow (plus clock
margins); after that, an order a lookup does not find will never appear.

The ledger makes every such T durable and shared. Before an executor sends a placement it
appends a ``send`` record (the client id and the request's timestamp) to the ledger topic and
waits for Kafka's acknowledgement; before it queries or cancels an order, and before it
reports a definitive answer to a placement, it appends a ``fence``: no placement of that id
may be sent after it. Every executor process follows the whole topic, so a claim is judged
against every record written before it, by any process, including one that has since died or
lost its partitions (a zombie). Records are keyed by the client id, so all records of one id
share a partition and their offsets order them: of two racing claims, the first in the log
wins, and the second sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.wire import codec
from streams.topics import topic_partitions
from streams.telemetry import health, metrics
from streams.exchange.errors import ExchangeError

logger = logging.getLogger(__name__)

__all__ = [
    "AttemptKind",
    "AttemptLedger",
    "Claim",
    "KafkaAttemptLedger",
    "LedgerRecord",
    "LedgerUnavailable",
    "executor_id",
]

RECORD_NAME = "OrderAttempt"
# A send record matters only while its request can still land; fences are kept for the
# topic's retention (a redelivered command must still find them).
_SEND_MEMORY_MS = 3600 * 1000
_FOLLOW_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class AttemptKind(StrEnum):
    """What an executor is about to do with a client order id."""

    SEND = "send"  # send a placement stamped `at`
    FENCE = "fence"  # close the id: no placement of it is sent after this record


class LedgerUnavailable(ExchangeError):
    """The ledger could not record or confirm a claim: nothing may be sent."""


@dataclass(frozen=True)
class LedgerRecord:
    """One record of the ledger, with where it sits in the log."""

    client_order_id: str
    kind: AttemptKind
    at_ms: int
    executor: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Claim:
    """A record this executor just wrote, and every record of the same id before it in the log."""

    record: LedgerRecord
    earlier: tuple[LedgerRecord, ...]

    @property
    def fenced(self) -> bool:
        """True when a fence precedes this claim: the id must not be sent again."""
        return any(record.kind is AttemptKind.FENCE for record in self.earlier)

    def sends_still_landing(self, now_ms: int, settle_ms: int) -> tuple[LedgerRecord, ...]:
        """Earlier send records whose request may still reach the exchange at `now_ms`.

        `settle_ms` is recvWindow plus the clock margin: a request stamped T can no longer
        execute once T + settle_ms has passed.
        """
        return tuple(r for r in self.earlier if r.kind is AttemptKind.SEND and now_ms < r.at_ms + settle_ms)


class AttemptLedger(Protocol):
    """Where executors record their attempts before acting on them."""

    async def claim(self, client_order_id: str, position_id: str, kind: AttemptKind, at_ms: int) -> Claim:
        """Appends a record and returns it with every earlier record of the id (log order).

        Raises ``LedgerUnavailable`` when the record is not acknowledged or cannot be
        placed among the others in time: the caller then sends nothing.
        """
        ...

    def withdraw(self, record: LedgerRecord) -> None:
        """This process's own send record whose request cannot execute (any more).

        Never sent, refused, or answered: only this process knows, so only it skips waiting
        for that record's recvWindow; every other process waits it out.
        """
        ...


def executor_id() -> str:
    """Who writes a record: host, process and a random part, for people reading the ledger."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


class KafkaAttemptLedger:
    """The ledger on a Kafka topic, followed from its start by this process."""

    def __init__(self, bootstrap_servers: str, topic: str, *, executor: str | None = None,
                 claim_timeout_s: float = 10.0) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._executor = executor or executor_id()
        self._claim_timeout_s = claim_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._records: dict[str, list[LedgerRecord]] = {}
        self._withdrawn: set[tuple[int, int]] = set()
        self._consumed: dict[int, int] = {}  # partition -> next offset to read
        self._progress = asyncio.Condition()
        self._task: asyncio.Task | None = None

    @property
    def executor(self) -> str:
        """This process's name in the records it writes."""
        return self._executor

    async def start(self) -> None:
        """Starts the producer and the follower (which reads the topic from its start)."""
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True)
        await self._producer.start()
        self._task = asyncio.create_task(self._follow(), name="order-attempt-ledger")

    async def stop(self) -> None:
        """Stops following and writing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()

    async def claim(self, client_order_id: str, position_id: str, kind: AttemptKind, at_ms: int) -> Claim:
        """See ``AttemptLedger.claim``."""
        if self._producer is None:
            raise LedgerUnavailable("the order-attempt ledger is not started")
        value = codec.encode(RECORD_NAME, {"client_order_id": client_order_id, "position_id": position_id,
                                           "kind": kind.value, "at": at_ms, "executor": self._executor})
        try:
            metadata = await asyncio.wait_for(
                self._producer.send_and_wait(self._topic, key=client_order_id.encode(), value=value),
                self._claim_timeout_s)
        except Exception as error:  # noqa: BLE001 - any failure means: not recorded, send nothing
            raise LedgerUnavailable(f"{kind} record for {client_order_id} not acknowledged: "
                                    f"{type(error).__name__}: {error}") from error
        mine = LedgerRecord(client_order_id, kind, at_ms, self._executor, metadata.partition, metadata.offset)
        await self._wait_until_read(metadata.partition, metadata.offset)
        earlier = tuple(r for r in self._records.get(client_order_id, ())
                        if r.offset < mine.offset and (r.partition, r.offset) not in self._withdrawn)
        return Claim(mine, earlier)

    def withdraw(self, record: LedgerRecord) -> None:
        """See ``AttemptLedger.withdraw``."""
        self._withdrawn.add((record.partition, record.offset))

    async def _wait_until_read(self, partition: int, offset: int) -> None:
        """Until the follower has read past `offset`: then every earlier record is known."""
        async def caught_up() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self._consumed.get(partition, 0) > offset)
        try:
            await asyncio.wait_for(caught_up(), self._claim_timeout_s)
        except asyncio.TimeoutError:
            raise LedgerUnavailable(f"the ledger follower did not reach offset {offset} of partition "
                                    f"{partition} within {self._claim_timeout_s}s") from None

    async def _follow(self) -> None:
        """Reads the ledger for good; a failure is logged, counted, shown on /ready and retried."""
        failures = 0
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest")
            try:
                await consumer.start()
                partitions = await self._partitions()
                consumer.assign(partitions)
                for partition in partitions:  # resume where the previous consumer stopped
                    consumer.seek(partition, self._consumed.get(partition.partition, 0))
                health.set_healthy("order_ledger")
                failures = 0
                while True:
                    batch = await consumer.getmany(timeout_ms=200)
                    await self._take(batch.items())
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the follower must never stop silently
                delay = _FOLLOW_BACKOFF_S[min(failures, len(_FOLLOW_BACKOFF_S) - 1)]
                failures += 1
                logger.error("following the order-attempt ledger %s failed (%s: %s); retrying in %.1fs",
                             self._topic, type(error).__name__, error, delay)
                metrics.observe_edge_failure("order_ledger", "follow")
                health.set_failing("order_ledger", f"following {self._topic} failed {failures} time(s): "
                                                   f"{type(error).__name__}: {error}")
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _partitions(self) -> list[TopicPartition]:
        partitions = await topic_partitions(self._bootstrap, self._topic)
        if not partitions:
            raise LedgerUnavailable(f"topic {self._topic} does not exist (created with the pipeline's topics)")
        return [TopicPartition(self._topic, p) for p in partitions]

    async def _take(self, batch: Iterable) -> None:
        async with self._progress:
            for partition, records in batch:
                for record in records:
                    self._remember(partition.partition, record.offset, record.value)
                    self._consumed[partition.partition] = record.offset + 1
            self._progress.notify_all()

    def _remember(self, partition: int, offset: int, value: bytes | None) -> None:
        if value is None:
            return
        try:
            data = codec.decode(RECORD_NAME, value)
        except codec.DecodeError as error:
            logger.warning("ledger record %d@%d not decodable, ignored: %s", partition, offset, error)
            return
        record = LedgerRecord(data["client_order_id"], AttemptKind(data["kind"]), data["at"], data["executor"],
                              partition, offset)
        kept = self._records.setdefault(record.client_order_id, [])
        kept.append(record)
        # Old sends can no longer land; the first fence is all a later claim needs to see.
        horizon = record.at_ms - _SEND_MEMORY_MS
        first_fence = next((r for r in kept if r.kind is AttemptKind.FENCE), None)
        kept[:] = [r for r in kept if r is first_fence or (r.kind is AttemptKind.SEND and r.at_ms >= horizon)
                   or r is record]

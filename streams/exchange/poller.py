"""The position poller: what the exchange holds, as snapshot inputs, every ``SYNC_INTERVAL_S``.

Per exchange and cycle it publishes one snapshot per key into ``position-inputs``: for every
symbol with a position, and a flat snapshot for every key the pipeline tracks that the
exchange no longer shows (a stop that fired, a position closed by hand). A failed fetch
publishes nothing: a failure is never "flat".

The tracked keys come from the table's own changelog (``TrackedKeys``): it is compacted, so
reading it from the start costs one record per key, and it is the state the agent decided,
not a second opinion.

Neither stops silently: a failure while following the changelog or during a poll is logged,
counted (``pipeline_edge_failures_total{component="poller"}``), shown by ``/ready`` and
retried with backoff; the follower starts over with a new consumer and keeps serving the
keys it knew until the new read has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.wire import codec, serde
from streams.domain import ExchangeSnapshot, InputEvent, Status
from streams.exchange.gateway import ExchangeEdgeError, ExchangeGateway
from streams.topics import topic_partitions
from streams.telemetry import health, metrics

logger = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_COMPONENT = "poller"


def backoff_s(failures: int) -> float:
    """The pause after `failures` failures in a row (capped)."""
    return BACKOFF_S[min(max(failures, 1), len(BACKOFF_S)) - 1]


class TrackedKeys:
    """Keys whose latest state holds a live position, kept current from the table changelog."""

    def __init__(self, bootstrap_servers: str, changelog_topic: str) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = changelog_topic
        self._live: dict[str, Status] = {}
        self._task: asyncio.Task | None = None
        self.caught_up = asyncio.Event()
        self.failures = 0

    async def start(self) -> None:
        """Starts following the changelog in the background (it retries on its own)."""
        self._task = asyncio.create_task(self._follow_for_good(), name="tracked-keys")

    async def _partitions(self) -> list[TopicPartition]:
        waited = 0
        while True:
            partitions = await topic_partitions(self._bootstrap, self._topic)
            if partitions:
                return [TopicPartition(self._topic, p) for p in partitions]
            # The changelog appears once the worker has started; a long wait is worth saying.
            waited += 1
            if waited % 60 == 0:
                logger.warning("changelog %s still missing after %ds; the poller waits for it", self._topic,
                               waited // 2)
                health.set_failing("tracked_keys", f"changelog {self._topic} missing for {waited // 2}s")
            await asyncio.sleep(0.5)

    async def _follow_for_good(self) -> None:
        """``_follow`` again after every failure, with backoff: the poller never waits forever unseen."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - logged, counted, shown by /ready, retried
                self.failures += 1
                delay = backoff_s(self.failures)
                logger.error("following the tracked keys on %s failed (%s: %s); starting over in %.0fs",
                             self._topic, type(error).__name__, error, delay)
                metrics.observe_edge_failure(_COMPONENT, "follow_tracked_keys")
                health.set_failing("tracked_keys", f"following {self._topic} failed {self.failures} time(s), "
                                                   f"last: {type(error).__name__}: {error}")
                await asyncio.sleep(delay)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partitions = await self._partitions()
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end_offsets = await consumer.end_offsets(partitions)
            # A fresh read from the start; the keys known so far keep serving until it catches up.
            live: dict[str, Status] = {}
            caught_up = False
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self._apply(live, record.key, record.value)
                if not caught_up and await self._reached(consumer, end_offsets):
                    caught_up = True
                    self._live = live
                    self.caught_up.set()
                    health.set_healthy("tracked_keys")
        finally:
            await consumer.stop()

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, end_offsets: dict[TopicPartition, int]) -> bool:
        for partition, end in end_offsets.items():
            if await consumer.position(partition) < end:
                return False
        return True

    def _apply(self, live: dict[str, Status], key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode("utf-8", errors="replace")
        if value is None:  # a tombstone: the key's state was deleted
            live.pop(name, None)
            return
        try:
            state = codec.decode(serde.KEY_STATE_RECORD, value)
        except codec.DecodeError as error:
            logger.warning("changelog record for %s not decodable, ignored: %s", name, error)
            return
        position = state.get("position")
        status = Status(position["status"]) if position else None
        if status is not None and status.is_live:
            live[name] = status
        else:
            live.pop(name, None)

    def live_keys(self, exchange: str) -> set[str]:
        """``SYMBOL@exchange`` keys of ``exchange`` with a live position."""
        return {key for key in self._live if key.endswith(f"@{exchange}")}

    async def stop(self) -> None:
        """Stops following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PositionPoller:
    """Fetches every exchange's positions and publishes them as snapshot inputs."""

    def __init__(self, gateways: Mapping[str, ExchangeGateway], tracked_keys: Callable[[str], set[str]],
                 publish: Callable[[InputEvent], Awaitable[None]], clock_ms: Callable[[], int]) -> None:
        self._gateways = gateways
        self._tracked_keys = tracked_keys
        self._publish = publish
        self._clock_ms = clock_ms
        self._failures: dict[str, int] = {}
        self._resume_at_ms: dict[str, int] = {}

    async def poll_once(self) -> dict[str, int | None]:
        """One cycle over every exchange; snapshots published per exchange (None: failed or backing off).

        Never raises: a failure is logged, counted, shown by /ready, and the exchange is
        skipped for a backoff before it is polled again.
        """
        published: dict[str, int | None] = {}
        for exchange, gateway in self._gateways.items():
            if self._clock_ms() < self._resume_at_ms.get(exchange, 0):
                published[exchange] = None
                continue
            try:
                published[exchange] = await self._poll(exchange, gateway)
            except Exception as error:  # noqa: BLE001 - a raising timer would stop polling for good
                published[exchange] = None
                self._failed(exchange, error)
            else:
                if self._failures.pop(exchange, 0):
                    logger.info("position poll of %s works again", exchange)
                self._resume_at_ms.pop(exchange, None)
                health.set_healthy(f"poller:{exchange}")
        return published

    async def _poll(self, exchange: str, gateway: ExchangeGateway) -> int:
        # Stamped before the request: a fill the answer might not include yet is newer
        # than this snapshot, so the state machine never reads the gap as "flat".
        fetched_at = self._clock_ms()
        try:
            positions = await gateway.fetch_positions()
        except ExchangeEdgeError as error:
            raise _PollFailed("fetch_positions", f"position fetch failed, nothing published: {error}") from error
        shown = {position.symbol: position for position in positions}
        events = [_snapshot(exchange, symbol, fetched_at, position.side, position.quantity, position.entry_price,
                            mark_price=position.mark_price, unrealized_pnl=position.unrealized_pnl)
                  for symbol, position in sorted(shown.items())]
        for key in sorted(self._tracked_keys(exchange)):
            symbol = key.rsplit("@", 1)[0]
            if symbol not in shown:
                events.append(_snapshot(exchange, symbol, fetched_at, None, Decimal(0), None))
        try:
            for event in events:
                await self._publish(event)
        except Exception as error:  # noqa: BLE001 - Kafka refused: the next cycle publishes afresh
            raise _PollFailed("publish", f"publishing snapshots failed: {type(error).__name__}: {error}") from error
        return len(events)

    def _failed(self, exchange: str, error: Exception) -> None:
        failures = self._failures.get(exchange, 0) + 1
        self._failures[exchange] = failures
        delay = backoff_s(failures)
        self._resume_at_ms[exchange] = self._clock_ms() + int(delay * 1000)
        stage = error.stage if isinstance(error, _PollFailed) else "poll"
        logger.warning("position poll of %s failed %d time(s) (%s); next attempt in %.0fs",
                       exchange, failures, error, delay)
        metrics.observe_edge_failure(_COMPONENT, stage)
        health.set_failing(f"poller:{exchange}", f"position poll failed {failures} time(s), last: {error}")


class _PollFailed(Exception):
    """One stage of a poll failed."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _snapshot(exchange: str, symbol: str, fetched_at: int, side, quantity: Decimal,
              entry_price: Decimal | None, *, mark_price: Decimal | None = None,
              unrealized_pnl: Decimal | None = None) -> InputEvent:
    key = f"{symbol}@{exchange}"
    return InputEvent(
        event_id=f"snapshot:{exchange}:{symbol}:{fetched_at}", key=key, ts=fetched_at,
        payload=ExchangeSnapshot(exchange=exchange, symbol=symbol, fetched_at=fetched_at, side=side,
                                 quantity=quantity, entry_price=entry_price, mark_price=mark_price,
                                 unrealized_pnl=unrealized_pnl),
    )

"""The position poller: what the exchange holds, as snapshot inputs, every ``SYNC_INTERVAL_S``.

Per exchange and cycle it publishes one snapshot per key into ``position-inputs``: for every
symbol with a position, and a flat snapshot for every key the pipeline tracks that the
exchange no longer shows (a stop that fired, a position closed by hand). A failed fetch
publishes nothing: a failure is never "flat".

The tracked keys come from the table's own changelog (``TrackedKeys``): it is compacted, so
reading it from the start costs one record per key, and it is the state the agent decided,
not a second opinion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import codec
from streams.domain import ExchangeSnapshot, InputEvent, Status
from streams.exchange.gateway import ExchangeEdgeError, ExchangeGateway
from streams.topics import topic_partitions

logger = logging.getLogger(__name__)


class TrackedKeys:
    """Keys whose latest state holds a live position, kept current from the table changelog."""

    def __init__(self, bootstrap_servers: str, changelog_topic: str) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = changelog_topic
        self._live: dict[str, Status] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="earliest")
        await self._consumer.start()
        self._task = asyncio.create_task(self._follow())

    async def _partitions(self) -> list[TopicPartition]:
        while True:
            partitions = await topic_partitions(self._bootstrap, self._topic)
            if partitions:
                return [TopicPartition(self._topic, p) for p in partitions]
            await asyncio.sleep(0.5)  # the changelog appears once the worker has started

    async def _follow(self) -> None:
        assert self._consumer is not None
        partitions = await self._partitions()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        end_offsets = await self._consumer.end_offsets(partitions)
        while True:
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    self._apply(record.key, record.value)
            if not self.caught_up.is_set() and await self._reached(end_offsets):
                self.caught_up.set()

    async def _reached(self, end_offsets: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for partition, end in end_offsets.items():
            if await self._consumer.position(partition) < end:
                return False
        return True

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode("utf-8", errors="replace")
        if value is None:  # a tombstone: the key's state was deleted
            self._live.pop(name, None)
            return
        try:
            state = codec.decode("KeyState", value)
        except codec.DecodeError as error:
            logger.warning("changelog record for %s not decodable, ignored: %s", name, error)
            return
        position = state.get("position")
        status = Status(position["status"]) if position else None
        if status is not None and status.is_live:
            self._live[name] = status
        else:
            self._live.pop(name, None)

    def live_keys(self, exchange: str) -> set[str]:
        """``SYMBOL@exchange`` keys of ``exchange`` with a live position."""
        return {key for key in self._live if key.endswith(f"@{exchange}")}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class PositionPoller:
    """Fetches every exchange's positions and publishes them as snapshot inputs."""

    def __init__(self, gateways: Mapping[str, ExchangeGateway], tracked_keys: Callable[[str], set[str]],
                 publish: Callable[[InputEvent], Awaitable[None]], clock_ms: Callable[[], int]) -> None:
        self._gateways = gateways
        self._tracked_keys = tracked_keys
        self._publish = publish
        self._clock_ms = clock_ms

    async def poll_once(self) -> dict[str, int | None]:
        """One cycle over every exchange; returns snapshots published per exchange (None: fetch failed)."""
        published: dict[str, int | None] = {}
        for exchange, gateway in self._gateways.items():
            # Stamped before the request: a fill the answer might not include yet is newer
            # than this snapshot, so the state machine never reads the gap as "flat".
            fetched_at = self._clock_ms()
            try:
                positions = await gateway.fetch_positions()
            except ExchangeEdgeError as error:
                logger.warning("position fetch from %s failed, nothing published: %s", exchange, error)
                published[exchange] = None
                continue
            shown = {position.symbol: position for position in positions}
            events = [_snapshot(exchange, symbol, fetched_at, position.side, position.quantity, position.entry_price)
                      for symbol, position in sorted(shown.items())]
            for key in sorted(self._tracked_keys(exchange)):
                symbol = key.rsplit("@", 1)[0]
                if symbol not in shown:
                    events.append(_snapshot(exchange, symbol, fetched_at, None, Decimal(0), None))
            for event in events:
                await self._publish(event)
            published[exchange] = len(events)
        return published


def _snapshot(exchange: str, symbol: str, fetched_at: int, side, quantity: Decimal,
              entry_price: Decimal | None) -> InputEvent:
    key = f"{symbol}@{exchange}"
    return InputEvent(
        event_id=f"snapshot:{exchange}:{symbol}:{fetched_at}", key=key, ts=fetched_at,
        payload=ExchangeSnapshot(exchange=exchange, symbol=symbol, fetched_at=fetched_at, side=side,
                                 quantity=quantity, entry_price=entry_price),
    )

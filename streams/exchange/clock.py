"""The exchange's clock as this host can tell it: every time the edge stamps on an exchange fact.

Execution reports and snapshots say *when the exchange* was in some state; the state
machine orders them by those times (a snapshot fetched before the latest known fill is
stale). Stamped with each host's own clock, one host an hour ahead would make every
snapshot of the others stale for an hour. So the edge keeps the exchange's time: the host
clock plus an offset measured against the exchange's ``serverTime`` (Binance
``GET /fapi/v1/time``; the midpoint of the request, so the error is at most half a round
trip), measured at start and again every ``SYNC_INTERVAL_S``. The signed requests' own
``timestamp`` uses the same offset (Binance refuses a request outside ``recvWindow`` of its
clock, code -1021), so a skewed host trades as well as a synchronised one. Host clocks are
left to drive what they may: deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

__all__ = ["ExchangeClock", "TimeSource", "host_clock_ms"]


def host_clock_ms() -> int:
    """This host's wall clock, epoch milliseconds."""
    return int(time.time() * 1000)


class TimeSource(Protocol):
    """What the clock needs of a gateway: the exchange's time, and where to apply the offset."""

    name: str

    async def server_time_ms(self) -> int: ...

    def use_clock_offset(self, offset_ms: int) -> None: ...


class ExchangeClock:
    """The exchange's time: ``host clock + offset_ms``, the offset learned from the exchange."""

    def __init__(self, host_ms: Callable[[], int] = host_clock_ms) -> None:
        self._host_ms = host_ms
        self.offset_ms = 0
        self.synced = False

    def now_ms(self) -> int:
        """The exchange's time now, as well as this host can tell."""
        return self._host_ms() + self.offset_ms

    async def sync(self, source: TimeSource) -> int:
        """Measures the offset against ``source`` and applies it to its signed requests; returns it."""
        sent = self._host_ms()
        server = await source.server_time_ms()
        received = self._host_ms()
        offset = server - (sent + received) // 2
        if not self.synced or abs(offset - self.offset_ms) > 1000:
            logger.info("%s clock is %+d ms from this host's (round trip %d ms)", source.name, offset,
                        received - sent)
        self.offset_ms = offset
        self.synced = True
        source.use_clock_offset(offset)
        return offset

    async def keep_synced(self, source: TimeSource, interval_s: float) -> None:
        """Syncs every ``interval_s`` (every 5 s until a first sync worked) until cancelled.

        A failed sync keeps the last offset (logged): the clocks drift by milliseconds a day.
        """
        while True:
            await asyncio.sleep(interval_s if self.synced else min(5.0, interval_s))
            try:
                await self.sync(source)
            except Exception as error:  # noqa: BLE001 - the last offset stays good; try again next time
                logger.warning("%s clock sync failed, keeping offset %+d ms: %s", source.name, self.offset_ms, error)

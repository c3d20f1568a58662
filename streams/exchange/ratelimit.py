"""Client-side rate limiting to the exchange's published limits, no slower.

ccxt's built-in limiter spaces every request by a fixed delay, far more conservatively than
Binance USD-M's real limits (200 orders through one client took about 40 s). Binance counts
in fixed windows per minute / per 10 s; a sliding window of the same length admits at most
the limit in every such window, so it can never exceed them while allowing a whole burst
up to the limit at once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowLimit:
    """At most ``limit`` units in any ``interval_s`` seconds."""

    name: str
    limit: int
    interval_s: float


# Binance USD-M futures, as exchangeInfo publishes them (rateLimits).
BINANCE_USDM_REQUEST_WEIGHT = (WindowLimit("REQUEST_WEIGHT/1m", 2400, 60.0),)
BINANCE_USDM_ORDERS = (WindowLimit("ORDERS/10s", 300, 10.0), WindowLimit("ORDERS/1m", 1200, 60.0))


class SlidingWindow:
    """Admits units while every window of ``interval_s`` holds at most ``limit`` of them."""

    def __init__(self, window: WindowLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._spent: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.window.interval_s:
            _, units = self._spent.popleft()
            self._total -= units

    def wait_time(self, units: int) -> float:
        """Seconds until ``units`` more fit in the window (0 when they fit now)."""
        now = self._clock()
        self._expire(now)
        if self._total + units <= self.window.limit:
            return 0.0
        needed = self._total + units - self.window.limit
        released = 0
        for stamp, spent in self._spent:
            released += spent
            if released >= needed:
                return max(0.0, stamp + self.window.interval_s - now)
        return self.window.interval_s

    def spend(self, units: int) -> None:
        if units:
            self._spent.append((self._clock(), units))
            self._total += units


class ExchangeRateLimiter:
    """Request weight and order count limits of one exchange account, shared by every caller.

    ``acquire(weight, orders)`` waits until both fit, then spends them. ``pause(seconds)``
    holds every caller back after the exchange answered 429/418, however much budget the
    windows believe is left.
    """

    def __init__(self, weight_limits: tuple[WindowLimit, ...] = BINANCE_USDM_REQUEST_WEIGHT,
                 order_limits: tuple[WindowLimit, ...] = BINANCE_USDM_ORDERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._weights = [SlidingWindow(limit, clock) for limit in weight_limits]
        self._orders = [SlidingWindow(limit, clock) for limit in order_limits]
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def wait_time(self, weight: int, orders: int) -> float:
        """Seconds before a request of this weight and order count may go (0: now)."""
        waits = [self._paused_until - self._clock()]
        waits += [window.wait_time(weight) for window in self._weights]
        waits += [window.wait_time(orders) for window in self._orders] if orders else []
        return max(0.0, *waits)

    async def acquire(self, weight: int, orders: int = 0) -> None:
        """Waits until the request fits every window, then counts it."""
        async with self._lock:  # one waiter at a time keeps the order of callers fair
            while (delay := self.wait_time(weight, orders)) > 0:
                await asyncio.sleep(delay)
            for window in self._weights:
                window.spend(weight)
            for window in self._orders:
                window.spend(orders)

    def pause(self, seconds: float) -> None:
        """After a 429/418: nobody sends for ``seconds``."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

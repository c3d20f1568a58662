"""Binance USD-M's rate limits, counted in fixed windows aligned to the clock like Binance's.

Request weight and order counts are charged per request; going over answers HTTP 429, and
with ``ban_seconds`` set a client that does not back off is banned (HTTP 418).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emulator.errors import BANNED_MESSAGE, BinanceError

__all__ = ["FixedWindow", "RateLimitConfig", "RateLimiter", "retry_after"]


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, rounded up, at least 1."""
    return str(max(1, int(seconds + 0.999)))


@dataclass(frozen=True)
class RateLimitConfig:
    """Binance USD-M's published limits (exchangeInfo ``rateLimits``) and how they are enforced."""

    request_weight_per_minute: int = 2400
    orders_per_10s: int = 300
    orders_per_minute: int = 1200
    enforce: bool = True
    ban_seconds: float = 0.0  # > 0: ignoring a 429 gets the client banned (HTTP 418) this long

    def exchange_info(self) -> list[dict[str, Any]]:
        """The ``rateLimits`` entry of exchangeInfo."""
        return [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": self.request_weight_per_minute},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": self.orders_per_minute},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": self.orders_per_10s},
        ]


class FixedWindow:
    """A counter that restarts at every multiple of ``interval_s`` of the wall clock."""

    def __init__(self, interval_s: int) -> None:
        self.interval_s = interval_s
        self.window = -1
        self.used = 0

    def current(self, now: float) -> int:
        """What the window ``now`` falls in has used so far."""
        window = int(now // self.interval_s)
        if window != self.window:
            self.window, self.used = window, 0
        return self.used

    def add(self, amount: int, now: float) -> int:
        """Charges ``amount``; returns the window's new total."""
        self.used = self.current(now) + amount
        return self.used

    def seconds_left(self, now: float) -> float:
        """Time until the window ``now`` falls in ends."""
        return (int(now // self.interval_s) + 1) * self.interval_s - now


class RateLimiter:
    """The counters and the ban of the one client IP the emulator serves, under ``config``."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self._weight = FixedWindow(60)
        self._orders_10s = FixedWindow(10)
        self._orders_1m = FixedWindow(60)
        self._banned_until = 0.0
        self._backoff_until: dict[str, float] = {}  # "weight"/"orders": end of the window a 429 named

    def headers(self, now: float, order: bool) -> dict[str, str]:
        """The usage headers Binance adds to every answer (order counts only to placements)."""
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight.current(now))}
        if order:
            headers["X-MBX-ORDER-COUNT-10S"] = str(self._orders_10s.current(now))
            headers["X-MBX-ORDER-COUNT-1M"] = str(self._orders_1m.current(now))
        return headers

    def charge_weight(self, weight: int, now: float) -> None:
        """Charges a request's weight; raises the 418 of a ban or the 429 of an exceeded limit."""
        config = self.config
        if config.enforce and now < self._banned_until:
            raise self._ban_error(now)
        # Past an IP weight 429 every request is a violation; past an order 429, every order.
        self._check_backoff("weight", now)
        used = self._weight.add(weight, now)
        if config.enforce and used > config.request_weight_per_minute:
            raise self._limit_exceeded("weight", self._weight, now, -1003, limit=config.request_weight_per_minute)

    def charge_order(self, now: float) -> None:
        """Counts an order placement in both order windows; raises a 429 over either limit."""
        config = self.config
        self._check_backoff("orders", now)
        for window, limit, interval in ((self._orders_10s, config.orders_per_10s, "10 SECOND"),
                                        (self._orders_1m, config.orders_per_minute, "1 MINUTE")):
            used = window.add(1, now)
            if config.enforce and used > limit:
                raise self._limit_exceeded("orders", window, now, -1015, limit=limit, interval=interval)

    def _limit_exceeded(self, kind: str, window: FixedWindow, now: float, code: int, **fmt: Any) -> BinanceError:
        """The 429 for an exceeded limit; the client must back off until the window ends."""
        seconds_left = window.seconds_left(now)
        self._backoff_until[kind] = now + seconds_left
        error = BinanceError(code, http_status=429, **fmt)
        error.headers["Retry-After"] = retry_after(seconds_left)
        return error

    def _check_backoff(self, kind: str, now: float) -> None:
        """Bans a client that keeps sending while told to back off (only with ``ban_seconds``)."""
        config = self.config
        if config.enforce and config.ban_seconds > 0 and now < self._backoff_until.get(kind, 0.0):
            self._banned_until = now + config.ban_seconds
            raise self._ban_error(now)

    def _ban_error(self, now: float) -> BinanceError:
        until_ms = int(self._banned_until * 1000)
        error = BinanceError(-1003, BANNED_MESSAGE.format(until_ms=until_ms), http_status=418)
        error.headers["Retry-After"] = retry_after(self._banned_until - now)
        return error

"""The rate limiter admits bursts up to the exchange's limits and never more per window."""

from __future__ import annotations

import asyncio

from streams.exchange.ratelimit import ExchangeRateLimiter, SlidingWindow, WindowLimit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_full_burst_fits_then_waits_for_the_oldest_to_expire():
    # Arrange
    clock = FakeClock()
    window = SlidingWindow(WindowLimit("ORDERS/10s", 300, 10.0), clock)

    # Act
    for _ in range(300):
        assert window.wait_time(1) == 0.0
        window.spend(1)
        clock.now += 0.01

    # Assert: the 301st waits until the first order leaves the 10 s window.
    assert abs(window.wait_time(1) - (10.0 - 3.0)) < 1e-6
    clock.now += 7.0 + 1e-6  # float steps of 0.01 leave the sum a hair short
    assert window.wait_time(1) == 0.0


def test_limiter_never_admits_more_orders_in_any_window_than_the_limit():
    # Arrange: a real event loop clock, small limits so the test stays quick.
    limiter = ExchangeRateLimiter(weight_limits=(WindowLimit("W", 1000, 1.0),),
                                  order_limits=(WindowLimit("O", 5, 0.3),))
    admitted: list[float] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(12):
            await limiter.acquire(weight=1, orders=1)
            admitted.append(loop.time())

    # Act
    asyncio.run(run())

    # Assert: any 0.3 s span holds at most 5 admissions.
    for index, start in enumerate(admitted):
        assert sum(1 for t in admitted[index:] if t < start + 0.3 - 1e-3) <= 5


def test_limiter_pause_after_429_holds_every_caller_back():
    # Arrange
    clock = FakeClock()
    limiter = ExchangeRateLimiter(clock=clock)

    # Act
    limiter.pause(5.0)

    # Assert
    assert limiter.wait_time(weight=1, orders=0) == 5.0
    clock.now += 5.0
    assert limiter.wait_time(weight=1, orders=0) == 0.0

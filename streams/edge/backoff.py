"""Retrying at the edges: one exponential backoff (capped, jittered), a wait that a stop request
cuts short, and the two retry loops every edge needs: until acknowledged, and until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Backoff", "retry_until_acknowledged", "retry_until_ready", "sleep_unless_stopped"]

T = TypeVar("T")


class Backoff:
    """Delays before retry 1, 2, 3, ...: ``initial_s`` doubling up to ``max_s``, jittered.

    Each delay keeps the upper half of its ceiling and randomises the rest ("equal
    jitter"): never zero, so a failing peer is not hammered, and never in lockstep, so
    several ingest replicas do not all knock on a restarted feed or broker at once.
    ``reset()`` after a success starts again from ``initial_s``.
    """

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, *,
                 rng: Callable[[], float] = random.random) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got initial_s={initial_s}, max_s={max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng
        self.attempt = 0

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based), without counting a failure."""
        ceiling = min(self.max_s, self.initial_s * 2 ** min(attempt, 62))
        return ceiling / 2 + self._rng() * ceiling / 2

    def next_delay(self) -> float:
        """The delay before the next retry; each call counts one more failure."""
        delay = self.delay(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self.attempt = 0


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Waits ``seconds`` or until ``stop`` is set; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def retry_until_acknowledged(attempt: Callable[[], Awaitable[T]], backoff: Backoff, what: str,
                                   log: logging.Logger, *,
                                   retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                                   stop: asyncio.Event | None = None,
                                   stopped: Callable[[BaseException], BaseException] | None = None) -> T:
    """Awaits ``attempt()`` until it succeeds; a failure of ``retry_on`` is logged and retried after the backoff.

    For what must never be dropped (a report, an output, a signal, a dead letter): Kafka away
    is a wait, not a loss, and an agent that raised would make Faust skip its event silently.
    With ``stop``, a stop request ends the waiting: ``stopped(last error)`` is raised (the
    last error itself without ``stopped``).
    """
    failures = 0
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except retry_on as error:
            if stop is not None and stop.is_set():
                raise (stopped(error) if stopped else error) from error
            delay = backoff.delay(failures)
            failures += 1
            log.warning("%s not acknowledged (%s); retrying in %.1fs", what, error, delay)
            if stop is None:
                await asyncio.sleep(delay)
            elif await sleep_unless_stopped(stop, delay):
                raise (stopped(error) if stopped else error) from error


async def retry_until_ready(start: Callable[[], Awaitable[object]], retry_on: type[BaseException] | tuple,
                            stop: asyncio.Event, backoff: Backoff, log: logging.Logger) -> bool:
    """Retries ``start()`` on ``retry_on`` with backoff until it succeeds (True) or ``stop`` is set (False)."""
    while not stop.is_set():
        try:
            await start()
            return True
        except retry_on as error:
            delay = backoff.next_delay()
            log.warning("%s; retrying in %.1fs", error, delay)
            if await sleep_unless_stopped(stop, delay):
                break
    return False

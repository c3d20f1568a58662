"""Exponential backoff, capped and jittered, and a wait that a stop request cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

__all__ = ["Backoff", "sleep_unless_stopped"]


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

    def next_delay(self) -> float:
        """The delay before the next retry; each call counts one more failure."""
        ceiling = min(self.max_s, self.initial_s * 2 ** min(self.attempt, 62))
        self.attempt += 1
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self.attempt = 0


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Waits ``seconds`` or until ``stop`` is set; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()

"""The run of inputs the agent has taken from its stream and not handed over yet.

The agent gathers the events Faust has already fetched into a run and decides it once
Faust's queue for the stream is empty (streams.worker.app ``apply_inputs``). Between two
events it waits inside Faust's stream iterator, holding the run unacked. A rebalance begins
with Faust (faust-streaming 0.15.3, pinned) suspending the streams, clearing their queues
and then waiting until every event it handed out is acked (``Consumer.wait_empty``). An
agent that went to fetch its next event just before the queue was cleared waits for ever,
and so does the rebalance: the worker stays ``rebalancing`` and its partitions are served by
no one. ``HandOverOnRebalance`` hands the held run over as soon as a rebalance begins; the
completer then stores and acks it, so the revocation finishes as it does for any input
decided a moment earlier.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

logger = logging.getLogger(__name__)

#: While the streams are still flowing after a rebalance began, how often the run is handed over again.
HAND_OVER_EVERY_S = 0.05

Apply = Callable[[list[Any], Callable[[Any], Awaitable[Any]]], Awaitable[None]]


class GatheredRun:
    """Events taken from the stream, in order, that nobody has decided yet.

    The agent ``add``s each event and ``hand_over``s the run when Faust's queue is empty; a
    rebalance hands it over too. ``hand_over`` takes the whole run under the agent's lock, so
    runs are decided in the order their events were taken, whoever hands them over.
    """

    def __init__(self, apply: Apply, lock: asyncio.Lock) -> None:
        self._apply = apply
        self._lock = lock
        self._events: list[Any] = []
        self._ack: Callable[[Any], Awaitable[Any]] | None = None

    def __len__(self) -> int:
        return len(self._events)

    def bind(self, ack: Callable[[Any], Awaitable[Any]]) -> None:
        """Acks the events with the agent's stream's ``ack`` (a restarted agent binds anew)."""
        self._ack = ack

    def add(self, event: Any) -> None:
        """Appends ``event`` to the run."""
        self._events.append(event)

    def drop(self) -> None:
        """Forgets the run undecided and unacked (the agent stops; its inputs come back as a hole)."""
        self._events = []

    async def hand_over(self) -> None:
        """Decides the run gathered so far and hands its outputs over."""
        async with self._lock:
            events, self._events = self._events, []
            if events and self._ack is not None:
                await self._apply(events, self._ack)


class HandOverOnRebalance(faust.Sensor):
    """Hands the agent's run over when a rebalance begins, until the streams are suspended.

    Faust calls ``on_rebalance_start`` from its consumer thread, before the event loop runs
    the revocation; the hand-over is scheduled onto the loop the worker runs on.
    """

    def __init__(self, app: faust.App, run: GatheredRun) -> None:
        super().__init__()
        self._app = app
        self._run = run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the agent runs on (known once the worker runs)."""
        self._loop = loop

    def on_rebalance_start(self, app: Any) -> dict:
        """Schedules the hand-over; returns the base sensor's state."""
        state = super().on_rebalance_start(app)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._start)
        return state

    def _start(self) -> None:
        task = asyncio.ensure_future(self._hand_over_while_flowing())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over_while_flowing(self) -> None:
        # Events reach the agent until Faust suspends the streams (and after that, one the
        # agent was already holding): hand over until then, and once more after it.
        try:
            while self._app.rebalancing and self._app.flow_control.is_active():
                await self._run.hand_over()
                await asyncio.sleep(HAND_OVER_EVERY_S)
            await asyncio.sleep(0)
            await self._run.hand_over()
        except Exception:  # a task's error would otherwise only show when it is collected
            logger.exception("handing the gathered run over at a rebalance failed")

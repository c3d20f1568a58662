"""The run of inputs the agent has taken from its stream and not handed over yet.

The agent gathers the events Faust has already fetched into a run and decides it once
Faust's queue for the stream is empty and no record Kafka reported is still on its way
(``RecordsAhead``), or once the run is ``MAX_GATHER_S`` old (streams.worker.app
``apply_inputs``). Faust's queue for the stream says little about what is coming: its
fetcher (faust-streaming 0.15.3's ``Consumer._drain_messages``) handed the agent one record
per turn of the event loop until ``streams.worker.faust_consumer.hand_records_over_inline``,
and still yields every 100 records and between two fetches, so the queue runs empty during
a backlog too. Deciding whenever it was empty made runs of one input, each paying a run's
fixed cost (a record batch per topic partition, a completion), and held one worker below
1,000 fresh-key opens/s (p50 latency 1.5 s at 1,000/s, 2026-12-02). Waiting while the
partitions' high watermarks show records beyond the last one delivered lets a backlog form
runs of hundreds, while a single input with nothing behind it is still decided at once.

Between two events the agent waits inside Faust's stream iterator, holding the run unacked:
the ``MAX_GATHER_S`` timer hands a run over that waits for records that do not come. A rebalance begins
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
from faust.types import TP

logger = logging.getLogger(__name__)

#: While the streams are still flowing after a rebalance began, how often the run is handed over again.
HAND_OVER_EVERY_S = 0.05
#: The longest a run waits for records Kafka reported but Faust has not delivered yet.
MAX_GATHER_S = 0.1


class RecordsAhead:
    """Whether any partition the agent reads has records beyond the last one delivered to it.

    ``highwater(tp)`` is the partition's high watermark as the consumer's last fetch response
    reported it (the offset the next record appended will get), so a high watermark beyond the
    next offset the agent expects means records that are fetched or on their way. A partition
    the consumer no longer holds is skipped (aiokafka asserts on it) and forgotten.
    """

    def __init__(self, highwater: Callable[[TP], int | None]) -> None:
        self._highwater = highwater
        self._next_offsets: dict[TP, int] = {}

    def delivered(self, tp: TP, offset: int) -> None:
        """Notes the record at ``offset`` of ``tp`` as delivered to the agent."""
        self._next_offsets[tp] = offset + 1

    def forget(self) -> None:
        """Forgets every partition (a rebalance: the assignment changes)."""
        self._next_offsets.clear()

    def expected(self) -> bool:
        """True while a partition's high watermark is beyond the next offset the agent expects."""
        for tp, next_offset in list(self._next_offsets.items()):
            try:
                highwater = self._highwater(tp)
            except Exception:  # noqa: BLE001 - revoked meanwhile (AssertionError), or the consumer is stopping
                self._next_offsets.pop(tp, None)
                continue
            if highwater is not None and highwater > next_offset:
                return True
        return False

Apply = Callable[[list[Any], Callable[[Any], Awaitable[Any]]], Awaitable[None]]


class GatheredRun:
    """Events taken from the stream, in order, that nobody has decided yet.

    The agent ``add``s each event and ``hand_over``s the run when nothing more is coming
    soon, or plans it ``hand_over_within`` a bound; a rebalance hands it over too.
    ``hand_over`` takes the whole run under the agent's lock, so runs are decided in the
    order their events were taken, whoever hands them over.
    """

    def __init__(self, apply: Apply, lock: asyncio.Lock) -> None:
        self._apply = apply
        self._lock = lock
        self._events: list[Any] = []
        self._ack: Callable[[Any], Awaitable[Any]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

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
        self._cancel_timer()
        self._events = []

    async def hand_over(self) -> None:
        """Decides the run gathered so far and hands its outputs over."""
        self._cancel_timer()
        async with self._lock:
            events, self._events = self._events, []
            if events and self._ack is not None:
                await self._apply(events, self._ack)

    def hand_over_within(self, delay_s: float) -> None:
        """Hands the run over ``delay_s`` from now unless that is already planned or it is handed over first."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._hand_over_now)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hand_over_now(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._hand_over_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over_logged(self) -> None:
        try:
            await self.hand_over()
        except Exception:  # the agent meets the same failure at its own next hand-over and stops
            logger.exception("handing over a run that waited %.2fs failed", MAX_GATHER_S)


class HandOverOnRebalance(faust.Sensor):
    """Hands the agent's run over when a rebalance begins, until the streams are suspended.

    Faust calls ``on_rebalance_start`` from aiokafka's rebalance listener, before the
    revocation runs; the hand-over is scheduled onto the loop the worker runs on (thread-safely:
    with faust-streaming's own consumer that listener runs in a thread of its own; the
    worker's ``OnLoopTransport`` runs it on the worker's loop).
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

"""Inputs in flight: decided and handed to the producer, made durable in order in the background.

Waiting for Kafka's acknowledgement input by input held the agent to one broker round trip
per input (about 330 inputs/s on two cores). The agent now decides a run of inputs against
the states decided before them (its overlay, ``known``), hands the outputs to the producer
and goes on to the next run; ``InFlightInputs`` completes the runs in the order they were
decided: it waits for each one's acknowledgements (sending again what Kafka refused), then
stores its states and acks its events. The crash rule is unchanged: no state is stored and no
offset committed before Kafka acknowledged the outputs that state implies; a crash loses
only decisions that were never durable, and the redelivered inputs decide the same again.

Under a backlog the completer also waits for the runs that follow (while more inputs are
coming, up to ``COALESCE_S`` or ``COALESCE_INPUTS``) and stores them together: a key decided
several times meanwhile has only its latest state encoded, written to RocksDB and sent to the
changelog, as Kafka Streams' record cache does until its commit. Over 207,000 lifecycle
inputs of 1,000 keys, a run of 500 inputs wrote a state for every input; runs gathered over
0.5 s (up to 5,000 inputs) write one for every three to five. The agent's own overlay
(``known``) holds those states meanwhile; nothing is acked, so no offset committed, before
they are stored. Decisions and their commands do not wait for it, only the acks (Faust
commits later) and the table's readers (the web view shows a key's state up to
``COALESCE_S`` late while a backlog drains). With nothing more coming, a run is stored as
soon as it is acknowledged.

Everything that reads the table behind the agent's back waits for ``drain`` first: the
agent before it fills a hole or forgets its overlay, a revocation before the partitions go;
a drain also ends any waiting for more runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from streams.worker.processor import DecidedRun, Handover, InputProcessor

logger = logging.getLogger(__name__)

#: Runs of inputs decided but not yet durable, at most: the agent waits for the oldest past this
#: (a run holds up to ``streams.worker.app.MAX_RUN`` inputs).
MAX_IN_FLIGHT = 100
#: While more inputs are coming, how long the completer waits for more runs to store together...
COALESCE_S = 0.5
#: ... and how many inputs it gathers at most before it stores them.
COALESCE_INPUTS = 5_000
#: How often a completer waiting for more runs asks again whether more inputs are coming.
RECHECK_S = 0.05


@dataclass(frozen=True)
class InFlightInput:
    """A decided run of inputs: the run, the producer's handover of its outputs, and their Faust events."""

    run: DecidedRun
    handover: Handover
    #: The inputs' Faust events (held until acked: Faust keeps them by weak reference).
    events: Any
    #: Acks the events to Faust (their offsets may then be committed).
    ack: Callable[[], Awaitable[Any]]


#: Stores the states of inputs whose outputs Kafka acknowledged and acks their events, in order.
Complete = Callable[[list[InFlightInput]], Awaitable[None]]


class CompleterFailed(RuntimeError):
    """The background completion stopped on an unexpected error: no further input may be decided."""


class InFlightInputs:
    """A bounded, ordered queue of decided inputs and the task that makes them durable.

    The completer takes the oldest input, waits for its acknowledgements, and then also takes
    every following input whose outputs are acknowledged already: ``complete`` gets them as
    one batch, so a key decided several times meanwhile has only its latest state written.
    While ``more_coming()`` says more inputs are on their way (and nobody drains), it waits for
    the following runs too, up to ``coalesce_s`` after the batch began or ``coalesce_inputs``
    inputs (see the module docstring).
    """

    def __init__(self, processor: InputProcessor, complete: Complete, limit: int = MAX_IN_FLIGHT,
                 more_coming: Callable[[], bool] = lambda: False, coalesce_s: float = COALESCE_S,
                 coalesce_inputs: int = COALESCE_INPUTS) -> None:
        self.processor = processor
        self._complete = complete
        self._queue: asyncio.Queue[InFlightInput] = asyncio.Queue(maxsize=limit)
        self._failure: BaseException | None = None
        self._pending = 0
        self._more_coming = more_coming
        self._coalesce_s = coalesce_s
        self._coalesce_inputs = coalesce_inputs
        self._draining = 0
        #: Set by ``add`` and ``drain``: what a completer waiting for more runs waits for.
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Inputs decided and not yet completed (the one the completer holds included)."""
        return self._pending

    async def add(self, item: InFlightInput) -> None:
        """Queues ``item`` for completion; waits while ``limit`` inputs are already in flight."""
        self._raise_if_failed()
        await self._queue.put(item)
        self._pending += 1
        self._wake.set()

    async def drain(self) -> None:
        """Returns once every input added so far is completed (stored and acked)."""
        self._raise_if_failed()
        self._draining += 1
        self._wake.set()
        try:
            await self._queue.join()
        finally:
            self._draining -= 1
        self._raise_if_failed()

    async def complete_forever(self) -> None:
        """Completes the queued inputs in order; runs until cancelled."""
        carried: InFlightInput | None = None
        while True:
            item = carried if carried is not None else await self._queue.get()
            carried = None
            batch = [item]
            try:
                await self.processor.acknowledged(item.run, item.handover)
                while not self._queue.empty():
                    following = self._queue.get_nowait()
                    if not _acknowledged_already(following.handover):
                        carried = following  # the next batch starts with it
                        break
                    batch.append(following)
                if carried is None:
                    await self._gather_following(batch)
                await self._complete(batch)
            except asyncio.CancelledError:
                self._finished(batch, carried)
                raise
            except BaseException as error:
                # A bug (the acknowledgement loop never gives up on Kafka). Nothing after this
                # input may be stored before it: stop, release every waiter, and let the agent
                # raise, so the worker restarts and the inputs are delivered again.
                logger.exception("an input in flight could not be completed; the agent stops")
                self._failure = error
                self._finished(batch, carried)
                self.abandon()
                raise
            self._finished(batch, None)

    async def _gather_following(self, batch: list[InFlightInput]) -> None:
        """Adds the runs that follow ``batch`` (each once acknowledged) while more inputs are coming."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._coalesce_s
        inputs = sum(len(item.run.decisions) for item in batch)
        while inputs < self._coalesce_inputs and not self._draining and self._more_coming():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if self._queue.empty():
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # looks again at what is coming, at the latest then
                    await asyncio.wait_for(self._wake.wait(), min(remaining, RECHECK_S))
                continue
            following = self._queue.get_nowait()
            batch.append(following)  # from here on it is the batch's: finished (or dropped) with it
            await self.processor.acknowledged(following.run, following.handover)
            inputs += len(following.run.decisions)

    def abandon(self) -> None:
        """Drops every input still queued, never stored nor acked (the agent stops or restarts):
        they are applied again from the log (their offsets were never committed)."""
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        self._pending = 0

    def _finished(self, batch: list[InFlightInput], carried: InFlightInput | None) -> None:
        for _ in batch:
            self._queue.task_done()
        if carried is not None:
            self._queue.task_done()
        self._pending = max(0, self._pending - len(batch) - (carried is not None))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise CompleterFailed("inputs can no longer be completed") from self._failure


def _acknowledged_already(handover: Handover) -> bool:
    """True when the producer took every output and Kafka acknowledged each one without error."""
    return not handover.refused and all(
        acknowledgement.done() and not acknowledgement.cancelled() and acknowledgement.exception() is None
        for _, acknowledgement in handover.acknowledgements)


__all__ = ["MAX_IN_FLIGHT", "Complete", "CompleterFailed", "InFlightInput", "InFlightInputs"]

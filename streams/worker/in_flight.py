"""Inputs in flight: decided and handed to the producer, made durable in order in the background.

Waiting for Kafka's acknowledgement input by input held the agent to one broker round trip
per input (about 330 inputs/s on two cores). The agent now decides a run of inputs against
the states decided before them (its overlay, ``known``), hands the outputs to the producer
and goes on to the next run; ``InFlightInputs`` completes the runs in the order they were
decided: it waits for each one's acknowledgements (sending again what Kafka refused), then
stores its states and acks its events. The crash rule is unchanged: no state is stored and no
offset committed before Kafka acknowledged the outputs that state implies; a crash loses
only decisions that were never durable, and the redelivered inputs decide the same again.

Everything that reads the table behind the agent's back waits for ``drain`` first: the
agent before it fills a hole or forgets its overlay, a revocation before the partitions go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from streams.worker.processor import DecidedRun, Handover, InputProcessor

logger = logging.getLogger(__name__)

#: Runs of inputs decided but not yet durable, at most: the agent waits for the oldest past this
#: (a run holds up to ``streams.worker.app.MAX_RUN`` inputs).
MAX_IN_FLIGHT = 100


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
    """

    def __init__(self, processor: InputProcessor, complete: Complete, limit: int = MAX_IN_FLIGHT) -> None:
        self.processor = processor
        self._complete = complete
        self._queue: asyncio.Queue[InFlightInput] = asyncio.Queue(maxsize=limit)
        self._failure: BaseException | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Inputs decided and not yet completed (the one the completer holds included)."""
        return self._pending

    async def add(self, item: InFlightInput) -> None:
        """Queues ``item`` for completion; waits while ``limit`` inputs are already in flight."""
        self._raise_if_failed()
        await self._queue.put(item)
        self._pending += 1

    async def drain(self) -> None:
        """Returns once every input added so far is completed (stored and acked)."""
        self._raise_if_failed()
        await self._queue.join()
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

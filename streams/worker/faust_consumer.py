"""What the worker asks of faust-streaming's consumer beyond its documented API, in one place.

Pinned to faust-streaming 0.15.3 (see pyproject.toml): each function names the internal it
relies on, so an upgrade has one module to check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import faust

logger = logging.getLogger(__name__)


def owned_by_generation(app: faust.App) -> Callable[[Any], bool]:
    """``owned(tp)``: whether ``tp`` is in the consumer's assignment, asked once per group generation.

    Faust builds a new set of its own TP tuples from aiokafka's on every ``assignment()``
    call (tens of microseconds for a worker's few dozen partitions, a few percent of the
    agent's time when asked per input); the assignment changes only with the generation.
    """
    seen: list[Any] = [None, frozenset()]

    def owned(tp: Any) -> bool:
        generation = app.consumer_generation_id
        if seen[0] != generation:
            seen[0], seen[1] = generation, frozenset(app.consumer.assignment())
        return tp in seen[1]

    return owned


def release_unowned(event: Any) -> None:
    """Lets go of an event whose partition this worker no longer owns, without acking it.

    Its new owner applies it, so its offset must not be committed here. Faust's stream keeps
    the last event it yielded until the next one comes, and a revocation waits for every
    event handed out and not acked (``Consumer.wait_empty``): on an idle stream that would be
    for ever. Marked done (``Message.acked``), it leaves that wait without its offset being
    recorded as acked.
    """
    message = event.message
    logger.warning("position-inputs[%d]@%d: the partition is no longer this worker's; left to its owner",
                   message.partition, message.offset)
    message.acked = True


def committed_offsets(app: faust.App) -> Mapping[Any, int | None]:
    """The offsets Faust committed (or believes it did), per partition: ``Consumer._committed_offset``."""
    return app.consumer._committed_offset


async def note_done_before(app: faust.App, tp: Any, end: int) -> None:
    """Tells Faust that every offset of ``tp`` before ``end`` is applied, acked by it or not.

    Faust commits only offsets it acked or holds as a gap (``Consumer._add_gap``, clamped to
    its committed offset). The worker calls this once every offset before ``end`` is durable:

    - after filling a hole: Faust never handed those inputs out, so without the gap its
      committed offset would stop before them for good;
    - at a partition's first input since the table was asked, with no hole before it. Faust
      fetches a restarted worker's partition from its start before seeking to the committed
      offset and commits what that delivered, so its committed offset can go back; then it
      never commits again while an offset between that one and the first it acks is unacked
      (``Consumer._new_offset``).
    """
    if end > 0:
        await app.consumer._add_gap(tp, 0, end - 1)

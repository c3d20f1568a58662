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

    Faust commits only offsets it acked or holds as a gap (``Consumer._add_gap``). The worker
    calls this once every offset before ``end`` is durable:

    - after filling a hole: Faust never handed those inputs out, so without the gap its
      committed offset would stop before them for good;
    - at a partition's first input since the table was asked, and when its committed
      offset stays behind what is durably applied. Faust fetches a restarted worker's
      partition from its start before seeking to the committed offset and commits what that
      delivered, so its committed offset can go back below offsets it then never acks; it
      never commits again while such an offset lies between its committed offset and the
      first one it acked (``Consumer._new_offset``).

    Only the offsets neither acked nor in a gap yet become gaps: Faust adds a gap's offsets
    to its acked ones, and an offset there twice splits its runs of consecutive offsets, so
    each commit would move one offset on.
    """
    consumer = app.consumer
    committed = consumer._committed_offset.get(tp)
    acked = consumer._acked_index.get(tp, set())
    gaps = consumer._gap.get(tp)
    missing_from: int | None = None
    for offset in range(committed + 1 if committed is not None else 0, end):
        done = offset in acked or (gaps is not None and gaps.overlaps_point(offset))
        if not done and missing_from is None:
            missing_from = offset
        elif done and missing_from is not None:
            await consumer._add_gap(tp, missing_from, offset - 1)
            missing_from = None
    if missing_from is not None:
        await consumer._add_gap(tp, missing_from, end - 1)

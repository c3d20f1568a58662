"""The input watch's one-second check is bounded: a check that never returns is named and cancelled."""

from __future__ import annotations

import asyncio
import logging

from streams.worker.gaps import AppliedOffsets
from streams.worker.input_watch import InputWatch


def watch_without_a_worker() -> InputWatch:
    """An ``InputWatch`` whose collaborators are never reached (its ``check`` is replaced)."""
    async def never_called(*_args):
        raise AssertionError("not reached")

    return InputWatch(app=None, inputs_topic="inputs", changelog_topic="changelog",
                      applied=AppliedOffsets(dict), durable_next={}, serial=asyncio.Lock(), idle=lambda: True,
                      fill_hole=never_called, apply_from_log=never_called, commit_interval_s=1.0,
                      describe_agent=lambda: "idle")


async def test_a_check_that_never_returns_is_cancelled_and_where_it_waited_is_logged(caplog):
    watch = watch_without_a_worker()
    cancelled = asyncio.Event()

    async def waits_for_the_consumer_thread_for_ever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def check() -> None:
        await waits_for_the_consumer_thread_for_ever()

    watch.check = check
    with caplog.at_level(logging.WARNING, logger="streams.worker.input_watch"):
        await watch.check_within(timeout_s=0.05)

    assert cancelled.is_set()
    [warning] = [record.getMessage() for record in caplog.records]
    assert "did not finish in 0.05s" in warning
    assert "waits_for_the_consumer_thread_for_ever" in warning and "cancelled" in warning


async def test_a_check_that_returns_in_time_is_not_touched_and_its_error_propagates(caplog):
    watch = watch_without_a_worker()
    calls = []

    async def quick() -> None:
        calls.append("quick")

    async def failing() -> None:
        raise RuntimeError("the consumer is stopping")

    watch.check = quick
    await watch.check_within(timeout_s=5)
    watch.check = failing
    try:
        await watch.check_within(timeout_s=5)
    except RuntimeError as error:
        raised = str(error)

    assert calls == ["quick"]
    assert raised == "the consumer is stopping"
    assert caplog.records == []

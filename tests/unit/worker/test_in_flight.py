"""InFlightInputs: decided inputs complete in decision order, only once Kafka acknowledged their outputs."""

from __future__ import annotations

import asyncio

import pytest

from streams.worker.in_flight import RECHECK_S, CompleterFailed, InFlightInput, InFlightInputs
from streams.worker.processor import DecidedRun, Handover, Output


class AcknowledgedOnly:
    """The processor's acknowledgement wait, without Kafka: it awaits the handed futures."""

    async def acknowledged(self, run: DecidedRun, handover: Handover) -> None:
        for _, acknowledgement in handover.acknowledgements:
            await acknowledgement


def decided(name: str, loop: asyncio.AbstractEventLoop) -> tuple[InFlightInput, asyncio.Future, list[str]]:
    acknowledgement = loop.create_future()
    acked: list[str] = []

    async def ack() -> None:
        acked.append(name)

    run = DecidedRun(outputs=[Output("t", name.encode(), b"v", [])])
    return InFlightInput(run, Handover(acknowledgements=[(0, acknowledgement)]), name, ack), acknowledgement, acked


async def test_inputs_complete_in_order_and_only_once_acknowledged():
    loop = asyncio.get_running_loop()
    batches: list[list[str]] = []

    async def complete(items: list[InFlightInput]) -> None:
        batches.append([item.events for item in items])
        for item in items:
            await item.ack()

    in_flight = InFlightInputs(AcknowledgedOnly(), complete)
    completer = asyncio.create_task(in_flight.complete_forever())
    first, first_ack, _ = decided("first", loop)
    second, second_ack, _ = decided("second", loop)
    third, third_ack, _ = decided("third", loop)
    for item in (first, second, third):
        await in_flight.add(item)

    # Kafka acknowledges the later inputs first: nothing may complete before the first.
    second_ack.set_result(None)
    third_ack.set_result(None)
    await asyncio.sleep(0.01)
    assert batches == []
    assert in_flight.pending == 3

    first_ack.set_result(None)
    await asyncio.wait_for(in_flight.drain(), 1)
    # The two already acknowledged join the first's batch: one write of each key's latest state.
    assert batches == [["first", "second", "third"]]
    completer.cancel()


async def test_an_unacknowledged_input_starts_the_next_batch():
    loop = asyncio.get_running_loop()
    batches: list[list[str]] = []

    async def complete(items: list[InFlightInput]) -> None:
        batches.append([item.events for item in items])

    in_flight = InFlightInputs(AcknowledgedOnly(), complete)
    completer = asyncio.create_task(in_flight.complete_forever())
    first, first_ack, _ = decided("first", loop)
    second, second_ack, _ = decided("second", loop)
    await in_flight.add(first)
    await in_flight.add(second)
    first_ack.set_result(None)
    await asyncio.sleep(0.01)
    assert batches == [["first"]]
    second_ack.set_result(None)
    await asyncio.wait_for(in_flight.drain(), 1)
    assert batches == [["first"], ["second"]]
    completer.cancel()


async def test_a_failed_completion_stops_the_agent_instead_of_skipping_inputs():
    loop = asyncio.get_running_loop()

    async def complete(items: list[InFlightInput]) -> None:
        raise RuntimeError("store refused")

    in_flight = InFlightInputs(AcknowledgedOnly(), complete)
    completer = asyncio.create_task(in_flight.complete_forever())
    item, acknowledgement, _ = decided("only", loop)
    await in_flight.add(item)
    acknowledgement.set_result(None)
    with pytest.raises(RuntimeError, match="store refused"):
        await asyncio.wait_for(completer, 1)
    with pytest.raises(CompleterFailed):
        await in_flight.drain()
    with pytest.raises(CompleterFailed):
        await in_flight.add(decided("next", loop)[0])


async def test_add_waits_while_the_limit_is_in_flight():
    loop = asyncio.get_running_loop()

    async def complete(items: list[InFlightInput]) -> None:
        return None

    in_flight = InFlightInputs(AcknowledgedOnly(), complete, limit=1)
    completer = asyncio.create_task(in_flight.complete_forever())
    first, first_ack, _ = decided("first", loop)
    await in_flight.add(first)
    await asyncio.sleep(0.01)  # the completer holds the first, waiting for its acknowledgement
    second, second_ack, _ = decided("second", loop)
    await in_flight.add(second)
    third = asyncio.create_task(in_flight.add(decided("third", loop)[0]))
    await asyncio.sleep(0.01)
    assert not third.done()
    first_ack.set_result(None)
    second_ack.set_result(None)
    await asyncio.wait_for(third, 1)
    completer.cancel()


def decided_run(name: str, loop: asyncio.AbstractEventLoop, inputs: int = 1) -> tuple[InFlightInput, asyncio.Future]:
    """A run of ``inputs`` decided inputs (their decisions do not matter here) and its acknowledgement."""
    acknowledgement = loop.create_future()

    async def ack() -> None:
        return None

    run = DecidedRun(decisions=[None] * inputs, outputs=[Output("t", name.encode(), b"v", [])])
    return InFlightInput(run, Handover(acknowledgements=[(0, acknowledgement)]), name, ack), acknowledgement


def recorder(batches: list[list[str]]):
    async def complete(items: list[InFlightInput]) -> None:
        batches.append([item.events for item in items])
    return complete


def coalescing(batches: list[list[str]], **options) -> tuple[InFlightInputs, asyncio.Task]:
    """An ``InFlightInputs`` recording its batches into ``batches``, and its running completer."""
    in_flight = InFlightInputs(AcknowledgedOnly(), recorder(batches), **options)
    return in_flight, asyncio.create_task(in_flight.complete_forever())


async def add_acknowledged(in_flight: InFlightInputs, name: str, inputs: int = 1) -> None:
    item, acknowledgement = decided_run(name, asyncio.get_running_loop(), inputs)
    acknowledgement.set_result(None)
    await in_flight.add(item)


async def test_while_more_inputs_are_coming_the_following_runs_are_stored_with_the_first():
    batches: list[list[str]] = []
    coming = [True]
    in_flight, completer = coalescing(batches, more_coming=lambda: coming[0], coalesce_s=30)
    await add_acknowledged(in_flight, "first")
    await asyncio.sleep(0.02)
    assert batches == []  # acknowledged, but more is coming: it waits for the next runs

    second, second_ack = decided_run("second", asyncio.get_running_loop())
    await in_flight.add(second)
    await asyncio.sleep(0.02)
    assert batches == []  # a following run joins only once acknowledged
    second_ack.set_result(None)
    await add_acknowledged(in_flight, "third")
    await asyncio.sleep(0.02)
    assert batches == []
    coming[0] = False  # the backlog is drained: the completer sees it within RECHECK_S
    await asyncio.sleep(RECHECK_S * 3)
    assert batches == [["first", "second", "third"]]
    assert in_flight.pending == 0
    completer.cancel()


@pytest.mark.parametrize("ended_by", ["a drain", "coalesce_s"])
async def test_the_wait_for_more_runs_ends_at_once_on_a_drain_and_else_after_coalesce_s(ended_by):
    batches: list[list[str]] = []
    in_flight, completer = coalescing(batches, more_coming=lambda: True,
                                      coalesce_s=30 if ended_by == "a drain" else 0.05)
    await add_acknowledged(in_flight, "first")
    if ended_by == "a drain":
        await asyncio.sleep(0.02)
        assert batches == []  # more is coming: it waits
        await asyncio.wait_for(in_flight.drain(), 1)
    else:
        await asyncio.sleep(0.3)
    assert batches == [["first"]]
    completer.cancel()


async def test_the_wait_for_more_runs_ends_at_coalesce_inputs():
    batches: list[list[str]] = []
    in_flight, completer = coalescing(batches, more_coming=lambda: True, coalesce_s=30, coalesce_inputs=5)
    await add_acknowledged(in_flight, "first", inputs=3)
    await asyncio.sleep(0.02)
    assert batches == []  # 3 inputs: fewer than 5
    await add_acknowledged(in_flight, "second", inputs=3)
    await asyncio.sleep(0.02)
    assert batches == [["first", "second"]]  # 6 inputs: stored without waiting any longer
    completer.cancel()


async def test_a_run_taken_while_waiting_for_more_is_dropped_with_the_batch_when_the_agent_stops():
    batches: list[list[str]] = []
    in_flight, completer = coalescing(batches, more_coming=lambda: True, coalesce_s=30)
    await add_acknowledged(in_flight, "first")
    await asyncio.sleep(0.02)  # the first is acknowledged: the completer waits for more runs
    second, _never_acknowledged = decided_run("second", asyncio.get_running_loop())
    await in_flight.add(second)
    await asyncio.sleep(0.02)  # it holds both, waiting for the second's acknowledgement
    completer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await completer
    assert batches == []  # neither stored nor acked: both are applied again from the log
    assert in_flight.pending == 0
    await asyncio.wait_for(in_flight.drain(), 1)  # every queued item was marked done

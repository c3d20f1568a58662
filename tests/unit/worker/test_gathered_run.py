"""The agent's gathered run: handed over whole and in order, by the agent or at a rebalance."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from faust.types import TP

from streams.worker.gathered_run import GatheredRun, HandOverOnRebalance, RecordsAhead


class Recorder:
    """An ``apply`` that records each run it is given and which ``ack`` came with it."""

    def __init__(self) -> None:
        self.runs: list[tuple[list, object]] = []

    async def apply(self, events: list, ack) -> None:
        await asyncio.sleep(0)  # a real hand-over awaits the producer
        self.runs.append((events, ack))


async def acknowledge(event) -> None:
    return None


async def test_hand_over_applies_everything_gathered_as_one_run_and_leaves_the_run_empty():
    recorder = Recorder()
    run = GatheredRun(recorder.apply, asyncio.Lock())
    run.bind(acknowledge)
    for event in ("e1", "e2", "e3"):
        run.add(event)

    await run.hand_over()

    assert recorder.runs == [(["e1", "e2", "e3"], acknowledge)]
    assert len(run) == 0


async def test_runs_handed_over_by_two_callers_are_applied_in_the_order_their_events_were_taken():
    recorder = Recorder()
    lock = asyncio.Lock()
    run = GatheredRun(recorder.apply, lock)
    run.bind(acknowledge)
    run.add("e1")
    async with lock:  # the agent is busy deciding an earlier run
        first = asyncio.create_task(run.hand_over())
        await asyncio.sleep(0)
        run.add("e2")  # taken while the first hand-over waits for the lock
        second = asyncio.create_task(run.hand_over())
        await asyncio.sleep(0)
    await asyncio.gather(first, second)

    assert [events for events, _ in recorder.runs] == [["e1", "e2"]]


async def test_an_empty_or_dropped_run_hands_nothing_over():
    recorder = Recorder()
    run = GatheredRun(recorder.apply, asyncio.Lock())
    run.bind(acknowledge)
    await run.hand_over()
    run.add("e1")
    run.drop()
    await run.hand_over()

    assert recorder.runs == []


async def test_a_rebalance_started_on_faust_s_consumer_thread_hands_the_run_over_on_the_worker_s_loop():
    # Arrange: streams still flowing when the rebalance begins, suspended a moment later.
    recorder = Recorder()
    run = GatheredRun(recorder.apply, asyncio.Lock())
    run.bind(acknowledge)
    flowing = {"active": True}
    app = SimpleNamespace(rebalancing=True, flow_control=SimpleNamespace(is_active=lambda: flowing["active"]))
    sensor = HandOverOnRebalance(app, run)
    sensor.bind_loop(asyncio.get_running_loop())
    run.add("held while waiting for the next event")

    # Act: Faust calls the sensor from another thread (faust-streaming's own consumer runs in one;
    # the worker's OnLoopTransport calls it on the loop); one more event arrives before the
    # streams are suspended.
    thread = threading.Thread(target=sensor.on_rebalance_start, args=(app,))
    thread.start()
    thread.join()
    for _ in range(100):
        if recorder.runs:
            break
        await asyncio.sleep(0.01)
    run.add("taken just before the suspension")
    flowing["active"] = False
    for _ in range(100):
        if len(recorder.runs) == 2:
            break
        await asyncio.sleep(0.01)

    # Assert
    assert [events for events, _ in recorder.runs] == [
        ["held while waiting for the next event"], ["taken just before the suspension"]]
    assert len(run) == 0


async def test_a_run_planned_within_a_bound_is_handed_over_once_the_bound_passes():
    recorder = Recorder()
    run = GatheredRun(recorder.apply, asyncio.Lock())
    run.bind(acknowledge)
    run.add("e1")
    run.hand_over_within(0.02)
    run.add("e2")
    run.hand_over_within(0.02)  # already planned: the first plan stands

    await asyncio.sleep(0.01)
    assert recorder.runs == []
    await asyncio.sleep(0.05)

    assert [events for events, _ in recorder.runs] == [["e1", "e2"]]


async def test_a_run_handed_over_before_its_bound_is_not_handed_over_again_by_the_plan():
    recorder = Recorder()
    run = GatheredRun(recorder.apply, asyncio.Lock())
    run.bind(acknowledge)
    run.add("e1")
    run.hand_over_within(0.02)
    await run.hand_over()
    run.add("e2")  # a new run, not yet planned

    await asyncio.sleep(0.05)

    assert [events for events, _ in recorder.runs] == [["e1"]]
    assert len(run) == 1


async def test_a_dropped_run_cancels_its_plan():
    recorder = Recorder()
    run = GatheredRun(recorder.apply, asyncio.Lock())
    run.bind(acknowledge)
    run.add("e1")
    run.hand_over_within(0.01)
    run.drop()
    run.add("e2")

    await asyncio.sleep(0.03)

    assert recorder.runs == []


INPUTS_0, INPUTS_1 = TP("position-inputs", 0), TP("position-inputs", 1)


def test_records_are_expected_while_a_partition_s_high_watermark_is_beyond_the_next_offset_delivered():
    highwaters = {INPUTS_0: 10, INPUTS_1: 4}
    ahead = RecordsAhead(highwaters.get)
    assert not ahead.expected()  # nothing delivered yet: nothing known to wait for

    ahead.delivered(INPUTS_1, 3)  # offset 3 is partition 1's last record: its high watermark is 4
    assert not ahead.expected()
    ahead.delivered(INPUTS_0, 7)  # partition 0 has 8 and 9 still to come
    assert ahead.expected()
    ahead.delivered(INPUTS_0, 9)
    assert not ahead.expected()


def test_a_partition_without_a_high_watermark_yet_or_no_longer_assigned_expects_nothing():
    def highwater(tp: TP) -> int | None:
        if tp == INPUTS_1:
            raise AssertionError("Partition is not assigned")  # aiokafka's answer after a revocation
        return None  # no fetch response for it yet

    ahead = RecordsAhead(highwater)
    ahead.delivered(INPUTS_0, 5)
    ahead.delivered(INPUTS_1, 5)

    assert not ahead.expected()
    ahead.forget()
    assert not ahead.expected()

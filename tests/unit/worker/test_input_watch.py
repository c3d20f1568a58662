"""The input watch: an idle worker's applied inputs unstick Faust's commits; a check never hangs unseen.

The consumer here is faust-streaming 0.15.3's commit bookkeeping driven by its own methods
(``tests.unit.worker.test_faust_consumer.ConsumerState``); the rest of the app is what the
watch reads of it.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from faust.types import TP

from streams.worker import input_watch
from streams.worker.gaps import AppliedOffsets
from streams.worker.input_watch import InputWatch
from tests.unit.worker.test_faust_consumer import INPUTS, ConsumerState

CHANGELOG = TP("key_to_state-changelog", INPUTS.partition)


def watch_without_a_worker() -> InputWatch:
    """An ``InputWatch`` whose collaborators are never reached (its ``check`` is replaced)."""
    async def never_called(*_args):
        raise AssertionError("not reached")

    return InputWatch(app=None, inputs_topic="inputs", changelog_topic="changelog",
                      applied=AppliedOffsets(dict), durable_next={}, serial=asyncio.Lock(), idle=lambda: True,
                      fill_hole=never_called, apply_from_log=never_called, commit_interval_s=1.0,
                      describe_agent=lambda: "idle", committed_on_broker=never_called)


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


def broker_holding(offsets: dict[TP, int | None]):
    """``committed_on_broker`` of a group coordinator that holds ``offsets`` (a test changes the dict to commit)."""
    async def committed_on_broker(tps):
        return {tp: offsets.get(tp) for tp in tps}

    return committed_on_broker


class SettledWorker(SimpleNamespace):
    """What the watch reads of a Faust app that owns ``INPUTS``, settled after its last rebalance."""

    def __init__(self, consumer: ConsumerState, log_end: int) -> None:
        async def position(tp):
            return consumer._committed_offset[tp]

        async def highwaters(*tps):
            return {tp: log_end for tp in tps}

        consumer.assignment = lambda: {INPUTS}
        consumer.position = position
        consumer.highwaters = highwaters
        super().__init__(consumer=consumer, rebalancing=False,
                         tables=SimpleNamespace(recovery=SimpleNamespace(completed=SimpleNamespace(is_set=lambda: True))),
                         assignor=SimpleNamespace(assigned_actives=lambda: {CHANGELOG}))


async def test_an_idle_worker_whose_table_is_ahead_of_a_stalled_commit_tells_faust_the_inputs_are_done(monkeypatch):
    # Arrange: the table shows every input before 50 applied; this worker completed none of them
    # itself (durable_next is empty, as after a restart); Faust committed 20 and acked 30..49 only.
    consumer = ConsumerState(committed=20, acked=list(range(30, 50)))
    stalled_without_the_watch = ConsumerState(committed=20, acked=list(range(30, 50)))
    watch = InputWatch(app=SettledWorker(consumer, log_end=50), inputs_topic=INPUTS.topic,
                       changelog_topic=CHANGELOG.topic, applied=AppliedOffsets(lambda: {INPUTS.partition: 50}),
                       durable_next={}, serial=asyncio.Lock(), idle=lambda: True, fill_hole=None,
                       apply_from_log=None, commit_interval_s=1.0, describe_agent=lambda: "idle",
                       committed_on_broker=broker_holding({INPUTS: 20}))
    clock = [100.0]
    monkeypatch.setattr(input_watch.time, "monotonic", lambda: clock[0])

    # Act: a check now, and one past the stalled-commit patience (two commit intervals and a check).
    await watch.check()
    first = consumer.next_commit()
    clock[0] += 3.0
    await watch.check()

    # Assert: only once the commit stayed behind for the patience, and then all the way to 50.
    assert stalled_without_the_watch.next_commit() is None
    assert first is None
    assert consumer.next_commit() == 50


async def test_a_commit_unmoved_behind_the_log_end_is_named_even_while_the_worker_stays_rebalancing(
        monkeypatch, caplog):
    # Arrange: a worker that never leaves its rebalance (so no other check runs), Faust committed 20 of 50.
    consumer = ConsumerState(committed=20, acked=[])
    worker = SettledWorker(consumer, log_end=50)
    worker.rebalancing = True
    watch = InputWatch(app=worker, inputs_topic=INPUTS.topic, changelog_topic=CHANGELOG.topic,
                       applied=AppliedOffsets(lambda: {INPUTS.partition: 50}), durable_next={},
                       serial=asyncio.Lock(), idle=lambda: True, fill_hole=None, apply_from_log=None,
                       commit_interval_s=1.0, describe_agent=lambda: "idle",
                       committed_on_broker=broker_holding({INPUTS: 20}))
    clock = [100.0]
    monkeypatch.setattr(input_watch.time, "monotonic", lambda: clock[0])

    # Act: a check now, one just before the alarm's patience, one at it.
    with caplog.at_level(logging.WARNING, logger="streams.worker.input_watch"):
        for now in (100.0, 129.0, 130.0):
            clock[0] = now
            await watch.check()

    # Assert: named once, with why the other checks stood aside and what Faust holds.
    [alarm] = [record.getMessage() for record in caplog.records]
    assert "committed offset has stayed at 20 for 30s (Faust believes 20) while the log ends at 50" in alarm
    assert "NOT settled (rebalancing=True, recovered=True)" in alarm
    assert "acked=none" in alarm
    assert consumer.next_commit() is None  # nothing was noted done: the worker is not settled


async def test_a_commit_faust_counted_that_never_reached_the_broker_is_made_again(monkeypatch, caplog):
    # Arrange: every input before 50 is applied and durable; Faust believes it committed 50 (it
    # records the offsets of a commit that did not happen), the broker holds 20, nothing is acked.
    consumer = ConsumerState(committed=50, acked=[])
    on_broker = {INPUTS: 20}
    watch = InputWatch(app=SettledWorker(consumer, log_end=50), inputs_topic=INPUTS.topic,
                       changelog_topic=CHANGELOG.topic, applied=AppliedOffsets(lambda: {INPUTS.partition: 50}),
                       durable_next={INPUTS.partition: 50}, serial=asyncio.Lock(), idle=lambda: True,
                       fill_hole=None, apply_from_log=None, commit_interval_s=1.0, describe_agent=lambda: "idle",
                       committed_on_broker=broker_holding(on_broker))
    clock = [100.0]
    monkeypatch.setattr(input_watch.time, "monotonic", lambda: clock[0])

    # Act: a check now, and one past the stalled-commit patience.
    with caplog.at_level(logging.WARNING, logger="streams.worker.input_watch"):
        await watch.check()
        believed_at_first = consumer._committed_offset[INPUTS]
        clock[0] += 3.0
        await watch.check()

    # Assert: Faust's belief is set back to the broker's, and its next commit goes to 50.
    assert believed_at_first == 50
    assert consumer._committed_offset[INPUTS] == 20
    assert consumer.next_commit() == 50
    assert Consumer._should_commit(consumer, INPUTS, 50)
    [warning] = [record.getMessage() for record in caplog.records]
    assert "Faust believes it committed offset 50, the broker holds 20" in warning


async def test_a_commit_that_reached_the_broker_while_the_check_looked_is_left_alone(monkeypatch, caplog):
    # Arrange: the broker held 20 at both checks, but holds 50 when the watch asks again to act.
    consumer = ConsumerState(committed=50, acked=[])
    on_broker = {INPUTS: 20}
    asked = []

    async def committed_on_broker(tps):
        asked.append(tps)
        return {tp: (50 if len(asked) > 2 else on_broker[tp]) for tp in tps}

    watch = InputWatch(app=SettledWorker(consumer, log_end=50), inputs_topic=INPUTS.topic,
                       changelog_topic=CHANGELOG.topic, applied=AppliedOffsets(lambda: {INPUTS.partition: 50}),
                       durable_next={INPUTS.partition: 50}, serial=asyncio.Lock(), idle=lambda: True,
                       fill_hole=None, apply_from_log=None, commit_interval_s=1.0, describe_agent=lambda: "idle",
                       committed_on_broker=committed_on_broker)
    clock = [100.0]
    monkeypatch.setattr(input_watch.time, "monotonic", lambda: clock[0])

    # Act
    with caplog.at_level(logging.WARNING, logger="streams.worker.input_watch"):
        await watch.check()
        clock[0] += 3.0
        await watch.check()

    # Assert: asked a third time before acting, and nothing touched.
    assert len(asked) == 3
    assert consumer._committed_offset[INPUTS] == 50
    assert consumer.next_commit() is None
    assert caplog.records == []


async def test_a_commit_that_crawls_behind_the_log_end_while_the_worker_is_idle_is_named(monkeypatch, caplog):
    # Arrange: every input before 50 applied, the worker idle, the broker's committed offset one further each second.
    on_broker = {INPUTS: 10}
    watch = InputWatch(app=SettledWorker(ConsumerState(committed=10, acked=[]), log_end=50), inputs_topic=INPUTS.topic,
                       changelog_topic=CHANGELOG.topic, applied=AppliedOffsets(lambda: {INPUTS.partition: 50}),
                       durable_next={}, serial=asyncio.Lock(), idle=lambda: True, fill_hole=None,
                       apply_from_log=None, commit_interval_s=1.0, describe_agent=lambda: "idle",
                       committed_on_broker=broker_holding(on_broker))
    clock = [100.0]
    monkeypatch.setattr(input_watch.time, "monotonic", lambda: clock[0])

    # Act: a check a second for 31 s.
    with caplog.at_level(logging.WARNING, logger="streams.worker.input_watch"):
        for second in range(31):
            clock[0], on_broker[INPUTS] = 100.0 + second, 10 + second
            await watch.check()

    # Assert: named once, at 30 s, with where the log ended then and what Faust holds.
    [crawl] = [record.getMessage() for record in caplog.records if "agent idle" in record.getMessage()]
    assert "the committed offset is at 40 (Faust believes" in crawl
    assert "behind where the log ended 30s ago (50; now 50)" in crawl
    assert "acked=" in crawl

"""The worker's uses of Faust's consumer internals: the assignment per generation, and which offsets are done
(checked against faust-streaming's own commit logic)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest

from faust.transport.consumer import Consumer
import faust
from faust.types import TP, Message
from intervaltree import IntervalTree
from mode import Service

from streams.worker.faust_consumer import (
    RawRecords,
    commit_each_offset_once,
    hand_records_over_inline,
    note_done_before,
    owned_by_generation,
)
from streams.worker.gaps import LaggingCommits, StalledCommits, UndeliveredInputs

INPUTS = TP("position-inputs", 1)


class ConsumerState(SimpleNamespace):
    """The state faust-streaming 0.15.3's ``Consumer`` keeps per partition, driven by its own methods."""

    def __init__(self, committed: int | None, acked: list[int]) -> None:
        super().__init__(_committed_offset=defaultdict(lambda: None), _acked=defaultdict(list),
                         _acked_index=defaultdict(set), _gap=defaultdict(IntervalTree), _n_acked=0)
        self._committed_offset[INPUTS] = committed
        self._acked[INPUTS].extend(acked)
        self._acked_index[INPUTS].update(acked)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        await Consumer._add_gap(self, tp, offset_from, offset_to)

    def next_commit(self) -> int | None:
        return Consumer._new_offset(self, INPUTS)


async def test_a_committed_offset_moved_back_below_unacked_offsets_commits_again_once_they_are_noted_done():
    # Arrange: Faust committed 8 (what it delivered before seeking), then acked 12..48 only.
    consumer = ConsumerState(committed=8, acked=list(range(12, 49)))
    stalled = ConsumerState(committed=8, acked=list(range(12, 49)))

    # Act: every input before 49 is durably applied.
    await note_done_before(SimpleNamespace(consumer=consumer), INPUTS, 49)

    # Assert: without the note Faust never commits; with it, all the way in one commit.
    assert stalled.next_commit() is None
    assert consumer.next_commit() == 49


async def test_only_offsets_neither_acked_nor_in_a_gap_become_gaps_and_the_last_is_acked():
    consumer = ConsumerState(committed=0, acked=[3, 4, 7])
    await consumer._add_gap(INPUTS, 5, 5)

    await note_done_before(SimpleNamespace(consumer=consumer), INPUTS, 10)

    in_gaps = sorted(offset for interval in consumer._gap[INPUTS] for offset in range(interval.begin, interval.end))
    assert in_gaps == [1, 2, 5, 6, 8]  # 0 is committed; 3, 4 and 7 acked; 5 a gap already
    # Faust takes gaps in only up to its highest acked offset: 9, the last, is acked, so the
    # commit reaches the end without another input delivered.
    assert sorted(consumer._acked[INPUTS]) == [3, 4, 7, 9]
    assert consumer.next_commit() == 10


async def test_the_last_offset_is_not_acked_again_when_faust_acked_one_at_or_past_it():
    acked_past_the_end = ConsumerState(committed=0, acked=[12])
    acked_at_the_end = ConsumerState(committed=0, acked=[9])

    await note_done_before(SimpleNamespace(consumer=acked_past_the_end), INPUTS, 10)
    await note_done_before(SimpleNamespace(consumer=acked_at_the_end), INPUTS, 10)

    assert sorted(acked_past_the_end._acked[INPUTS]) == [12]  # 1..9 became gaps; 12's commit takes them in
    assert sorted(acked_at_the_end._acked[INPUTS]) == [9]
    assert acked_at_the_end.next_commit() == 10


def test_a_committed_offset_is_stalled_only_after_staying_behind_for_the_patience():
    stalled = StalledCommits(patience_s=5.0)

    moving = [stalled.check({1: committed}, {1: 49}, now) for committed, now in ((8, 0.0), (20, 3.0), (30, 6.0))]
    stuck = [stalled.check({1: 30}, {1: 49}, now) for now in (9.0, 11.5, 12.0)]
    caught_up = stalled.check({1: 49}, {1: 49}, 20.0)
    not_owned = stalled.check({}, {2: 10}, 30.0)
    empty_log = [stalled.check({3: None}, {3: 0}, now) for now in (40.0, 50.0)]  # nothing to commit yet
    never_committed = [stalled.check({3: None}, {3: 4}, now) for now in (60.0, 65.0)]

    assert moving == [[], [], []]
    assert stuck == [[], [(1, 49)], []]
    assert (caught_up, not_owned) == ([], [])
    assert empty_log == [[], []]
    assert never_committed == [[], [(3, 4)]]


def test_a_partition_is_undelivered_only_after_its_log_end_stays_beyond_what_is_applied_for_the_patience():
    undelivered = UndeliveredInputs(patience_s=5.0)

    fetched_on = [undelivered.check({0: applied}, {0: 1000}, now) for applied, now in ((215, 0.0), (400, 3.0))]
    stuck = [undelivered.check({0: 400}, {0: 1000}, now) for now in (6.0, 8.5, 9.0, 13.5)]
    appended_to = undelivered.check({0: 400}, {0: 1001}, 20.0)  # a new input restarts the wait
    caught_up = undelivered.check({0: 1001}, {0: 1001}, 30.0)
    after_catching_up = undelivered.check({0: 1001}, {0: 1002}, 36.0)

    assert fetched_on == [[], []]
    assert stuck == [[], [(0, 400, 1000)], [], [(0, 400, 1000)]]
    assert (appended_to, caught_up, after_catching_up) == ([], [], [])


def test_a_partition_no_longer_asked_about_or_forgotten_starts_its_wait_again():
    undelivered = UndeliveredInputs(patience_s=5.0)
    undelivered.check({0: 10, 1: 10}, {0: 20, 1: 20}, 0.0)

    undelivered.check({1: 10}, {0: 20, 1: 20}, 1.0)  # partition 0 is no longer idle-behind (or owned)
    after_gone = undelivered.check({0: 10, 1: 10}, {0: 20, 1: 20}, 6.0)
    undelivered.forget()
    after_forget = undelivered.check({0: 10, 1: 10}, {0: 20, 1: 20}, 12.0)
    later = undelivered.check({0: 10, 1: 10}, {0: 20, 1: 20}, 17.0)

    assert after_gone == [(1, 10, 20)]
    assert after_forget == []
    assert later == [(0, 10, 20), (1, 10, 20)]


class CountingConsumer:
    """A consumer whose ``assignment()`` calls are counted (Faust builds a new set on each)."""

    def __init__(self, assignment: set[TP]) -> None:
        self.current = assignment
        self.calls = 0

    def assignment(self) -> set[TP]:
        self.calls += 1
        return set(self.current)


def test_the_assignment_is_asked_once_per_generation_and_again_after_a_rebalance():
    consumer = CountingConsumer({TP("inputs", 0), TP("inputs", 1)})
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    owned = owned_by_generation(app)

    before = [owned(TP("inputs", 0)), owned(TP("inputs", 1)), owned(TP("inputs", 2))]
    calls_in_one_generation = consumer.calls
    consumer.current = {TP("inputs", 2)}  # a rebalance moved partitions 0 and 1 away
    app.consumer_generation_id = 2
    after = [owned(TP("inputs", 0)), owned(TP("inputs", 2))]

    assert (before, calls_in_one_generation, after, consumer.calls) == (
        [True, True, False], 1, [False, True], 2)


class DrainingService(Service):
    """What ``hand_records_over_inline`` needs of Faust's consumer: a mode service with
    ``suspend_flow``, called as ``Consumer._drain_messages`` calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.original_calls = 0
        original = self.wait_first

        async def counted(*coros, timeout=None):
            self.original_calls += 1
            return await original(*coros, timeout=timeout)

        self.wait_first = counted

    async def hand_over(self, callback) -> None:
        """The line of ``Consumer._drain_messages`` (faust-streaming 0.15.3) for one record."""
        await self.wait_first(callback, self.suspend_flow.wait())


async def draining_inline() -> DrainingService:
    """A started ``DrainingService`` with ``hand_records_over_inline`` installed."""
    service = DrainingService()
    await service.start()
    hand_records_over_inline(service)
    return service


async def made_guard(service: DrainingService) -> None:
    """Hands one record over (the original path, which makes the shared guard) and lets the guard begin."""
    await service.hand_over(asyncio.sleep(0))
    await asyncio.sleep(0.01)


async def test_records_are_handed_over_in_the_fetchers_task_through_one_shared_guard_not_a_wait_first_each():
    service = await draining_inline()
    delivered: list[int] = []

    async def deliver(record: int) -> None:
        delivered.append(record)

    try:
        for record in range(100):
            await service.hand_over(deliver(record))
        await asyncio.sleep(0)  # the guard's wait_first begins (no record gave the loop a turn)
    finally:
        await service.stop()

    assert delivered == list(range(100))
    # The first record takes the original path and makes the guard (a wait_first of its own).
    assert service.original_calls == 2


async def test_a_record_the_queue_has_room_for_is_handed_over_without_a_turn_of_the_event_loop():
    service = await draining_inline()
    turns = 0
    handed_in: set = set()

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    async def deliver(record: int) -> None:
        handed_in.add(asyncio.current_task())

    try:
        await made_guard(service)
        counter = asyncio.create_task(count_turns())
        await asyncio.sleep(0)
        turns_before = turns
        handed_in.clear()
        for record in range(50):
            await service.hand_over(deliver(record))
        turns_after = turns
        counter.cancel()
    finally:
        await service.stop()

    assert (turns_after - turns_before, handed_in) == (0, {asyncio.current_task()})


async def test_a_stop_while_a_record_waits_cancels_the_fetcher_not_just_the_hand_over():
    service = await draining_inline()
    never = asyncio.Event()

    async def deliver_when_room(record: int) -> None:
        await never.wait()

    try:
        await made_guard(service)
        fetcher = asyncio.create_task(service.hand_over(deliver_when_room(1)))
        await asyncio.sleep(0.01)
        fetcher.cancel()  # the consumer stops its fetcher
        with pytest.raises(asyncio.CancelledError):
            await fetcher
    finally:
        await service.stop()

    assert fetcher.cancelled()


async def test_a_guard_that_fires_after_a_hand_over_cancels_nothing_the_fetcher_awaits_later():
    service = await draining_inline()
    outcomes: list[str] = []

    async def fetcher() -> None:
        await service.hand_over(asyncio.sleep(0))
        outcomes.append("handed over")
        service.suspend_flow.set()  # the guard fires once the hand-over is over
        try:
            await asyncio.sleep(0.05)  # the fetcher's next getmany, say
            outcomes.append("fetched on")
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise

    try:
        await made_guard(service)
        await asyncio.wait_for(fetcher(), 1)
    finally:
        await service.stop()

    assert outcomes == ["handed over", "fetched on"]


async def test_a_suspension_while_a_record_waits_cancels_its_hand_over_as_the_original_does():
    service = await draining_inline()
    queue_has_room = asyncio.Event()
    outcomes: list[str] = []

    async def deliver_when_room(record: int) -> None:
        try:
            await queue_has_room.wait()
            outcomes.append(f"delivered {record}")
        except asyncio.CancelledError:
            outcomes.append(f"cancelled {record}")
            raise

    try:
        queue_has_room.set()
        await service.hand_over(deliver_when_room(0))
        queue_has_room.clear()
        handing_over = asyncio.create_task(service.hand_over(deliver_when_room(1)))
        await asyncio.sleep(0.01)
        service.suspend_flow.set()  # a rebalance begins while record 1 waits for room
        await asyncio.wait_for(handing_over, 1)
        service.suspend_flow.clear()
        queue_has_room.set()
        await service.hand_over(deliver_when_room(2))  # after the guard fired: the original path
        await service.hand_over(deliver_when_room(3))  # and a new guard
    finally:
        await service.stop()

    assert outcomes == ["delivered 0", "cancelled 1", "delivered 2", "delivered 3"]


async def test_a_hand_over_that_raises_propagates_and_other_calls_go_to_the_original():
    service = await draining_inline()
    hand_records_over_inline(service)  # a restarted agent installs again: no second layer

    async def refuse() -> None:
        raise ValueError("refused")

    async def fine() -> str:
        return "done"

    try:
        await service.hand_over(fine())  # makes the guard
        await asyncio.sleep(0)  # the guard's own wait_first begins
        calls_before = service.original_calls
        with pytest.raises(ValueError, match="refused"):
            await service.hand_over(refuse())
        other = await service.wait_first(fine())  # not the drain's call
    finally:
        await service.stop()

    assert service.original_calls == calls_before + 1
    assert other.results == ["done"]


async def test_a_callback_that_swallows_the_guards_cancellation_leaves_none_behind():
    service = await draining_inline()
    never = asyncio.Event()

    async def deliver_swallowing(record: int) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            pass  # a callback that ends quietly when cancelled

    async def fetcher() -> int:
        await service.hand_over(deliver_swallowing(1))
        await asyncio.sleep(0.01)  # the fetcher's next await is not cancelled
        return asyncio.current_task().cancelling()

    try:
        await made_guard(service)
        fetching = asyncio.create_task(fetcher())
        await asyncio.sleep(0.01)
        service.suspend_flow.set()  # the guard fires while record 1 waits
        pending_cancellations = await asyncio.wait_for(fetching, 1)
    finally:
        await service.stop()

    assert pending_cancellations == 0


def commits_until_done(consumer: ConsumerState, limit: int = 100) -> list[int]:
    """The offsets of successive commits (``_new_offset``, each recorded as Faust records it) until none is left."""
    commits = []
    while (offset := consumer._new_offset(INPUTS) if "_new_offset" in vars(consumer)
           else Consumer._new_offset(consumer, INPUTS)) is not None and len(commits) < limit:
        consumer._committed_offset[INPUTS] = offset
        commits.append(offset)
    return commits


async def test_an_offset_both_acked_and_in_a_gap_no_longer_splits_the_commit_into_one_run_per_interval():
    # Arrange: offsets 2..9 acked; 4..6 also in a gap (Faust added it when its fetch jumped,
    # then delivered and acked them after a seek back).
    faust_alone = ConsumerState(committed=2, acked=list(range(2, 10)))
    once = ConsumerState(committed=2, acked=list(range(2, 10)))
    for consumer in (faust_alone, once):
        await consumer._add_gap(INPUTS, 4, 6)
    commit_each_offset_once(once)

    # Act
    faust_commits, commits = commits_until_done(faust_alone), commits_until_done(once)

    # Assert: Faust's own bookkeeping needs four commits to get there, one per run; now one does.
    assert faust_commits == [5, 6, 7, 10]
    assert commits == [10]


def ack(consumer: ConsumerState, offset: int) -> None:
    """What ``Consumer.ack`` records of an acked message: the offset, unless ``_acked_index`` holds it."""
    committed = consumer._committed_offset[INPUTS]
    if (committed is None or offset >= committed) and offset not in consumer._acked_index[INPUTS]:
        consumer._acked_index[INPUTS].add(offset)
        consumer._acked[INPUTS].append(offset)


async def test_an_offset_merged_from_a_gap_and_acked_later_is_counted_once():
    # Arrange: 9 acked, 5..7 in a gap; a commit merges the gap but stops at the hole at the
    # head (3, 4 missing); then 6 is delivered again and acked, and 3, 4, 8 are acked.
    faust_alone, once = ConsumerState(committed=2, acked=[9]), ConsumerState(committed=2, acked=[9])
    for consumer in (faust_alone, once):
        await consumer._add_gap(INPUTS, 5, 7)
    commit_each_offset_once(once)
    assert Consumer._new_offset(faust_alone, INPUTS) is None
    assert once._new_offset(INPUTS) is None
    for consumer in (faust_alone, once):
        for offset in (6, 3, 4, 8):
            ack(consumer, offset)

    # Act
    faust_commits, commits = commits_until_done(faust_alone), commits_until_done(once)

    # Assert: Faust counts 6 twice and stops after it; now one commit reaches 10.
    assert faust_commits == [7, 10]
    assert commits == [10]


@pytest.mark.parametrize("seed", range(200))
async def test_without_repeated_offsets_the_commits_are_faust_s_own(seed):
    # Arrange: random acked offsets and gaps that never overlap them, as Faust keeps them when all goes well.
    import random
    rng = random.Random(seed)
    committed = rng.randrange(0, 5)
    offsets = list(range(committed, committed + 40))
    acked = sorted(rng.sample(offsets, rng.randrange(1, 30)))
    free = [offset for offset in offsets if offset not in acked]
    faust_alone, once = ConsumerState(committed, list(acked)), ConsumerState(committed, list(acked))
    for start in rng.sample(free, min(len(free), rng.randrange(0, 4))):
        end = start
        while end + 1 in free and rng.random() < 0.7:
            end += 1
        for consumer in (faust_alone, once):
            await consumer._add_gap(INPUTS, start, end)
    commit_each_offset_once(once)

    # Act / Assert
    assert commits_until_done(once) == commits_until_done(faust_alone)


def lagging_named(committed_at, log_end_at, idle_at, seconds: int = 70) -> list[tuple[int, int, int]]:
    """``(second, partition, old log end)`` of what ``LaggingCommits`` names at one check a second."""
    lagging = LaggingCommits(patience_s=30.0)
    return [(second, partition, end) for second in range(seconds)
            for partition, end in lagging.check({0: committed_at(second)}, {0: log_end_at(second)},
                                                idle_at(second), 1000.0 + second)]


def test_a_committed_offset_that_crawls_behind_an_idle_log_end_is_named_every_patience():
    # Every input applied (the log ends at 400), the agent idle, the commit moving one offset a second.
    named = lagging_named(lambda s: 20 + s, lambda s: 400, lambda s: True)

    assert named == [(30, 0, 400), (60, 0, 400)]


def test_steady_traffic_a_backlog_and_an_unmoved_commit_are_not_taken_for_a_crawl():
    steady = lagging_named(lambda s: max(0, 10 * (s - 3)), lambda s: 10 * s, lambda s: True)
    backlog = lagging_named(lambda s: 20 + s, lambda s: 400, lambda s: False)
    unmoved = lagging_named(lambda s: 20, lambda s: 400, lambda s: True)

    assert steady == []
    assert backlog == []
    assert unmoved == []  # StalledCommits names it


def test_raw_records_hand_each_record_s_bytes_to_its_event_and_send_them_unchanged():
    # Arrange
    app = faust.App("raw-records-test", broker="kafka://127.0.0.1:1")  # never connects
    schema = RawRecords()
    decode = schema.compile(app)
    message = Message("position-inputs", 3, 41, 1.5, 1, [("h", b"v")], b"APTUSDT@binance", b"\xc3\x01avro",
                      None, None)
    empty = Message("position-inputs", 3, 42, 1.5, 1, [], b"APTUSDT@binance", None, None, None)

    # Act
    event = asyncio.run(decode(message))
    empty_event = asyncio.run(decode(empty))

    # Assert
    assert (event.key, event.value, event.message) == (b"APTUSDT@binance", b"\xc3\x01avro", message)
    assert event.headers == {"h": b"v"}  # as Faust makes every event's headers
    assert empty_event.value is None and empty_event.message is empty
    assert schema.dumps_key(app, b"APTUSDT@binance", headers={})[0] == b"APTUSDT@binance"
    assert schema.dumps_value(app, b"\xc3\x01avro", headers={})[0] == b"\xc3\x01avro"

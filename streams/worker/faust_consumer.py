"""What the worker asks of faust-streaming's consumer beyond its documented API, in one place.

Pinned to faust-streaming 0.15.3 (see pyproject.toml): each function names the internal it
relies on, so an upgrade has one module to check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import maybe_async

logger = logging.getLogger(__name__)


class RawRecords(faust.Schema):
    """A topic schema whose events carry each record's key and value bytes untouched.

    Faust's ``Schema.compile`` decodes every record's key and value through the app's
    serializer registry even when both serializers are ``raw`` (which returns the bytes as
    they came): 4% of the agent's thread at 6,000 inputs/s (py-spy, 2026-12-04), for values
    the agent never reads (it reads ``event.message``). Sending through the topic still
    encodes with the ``raw`` serializers given here.
    """

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, on_key_decode_error: Any = None, on_value_decode_error: Any = None,
                default_propagate: bool = False) -> Callable[..., Any]:
        """``decode(message)``: the event of ``message``, its key and value the record's bytes (nothing to fail)."""
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return create_event(message.key, message.value, message.headers, message)
        return decode


def active_partitions(app: faust.App, changelog_topic: str) -> frozenset[int]:
    """The table partitions this worker owns as active (standby copies excluded)."""
    return frozenset(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog_topic)


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


async def committed_on_broker(app: faust.App, tps: list[Any]) -> dict[Any, int | None]:
    """The offsets the group's coordinator holds for ``tps`` (None where nothing was committed).

    Faust's ``_committed_offset`` is what it believes: ``Consumer._commit_offsets`` records
    the offsets it meant to commit even when the commit did not happen (``_commit`` returns
    False on a commit refused as "already rebalanced", and the consumer's ``_commit`` drops
    partitions it no longer counts as assigned without saying so). Asked of aiokafka's group
    coordinator through Faust's consumer service: one OffsetFetch request for all of ``tps``.
    """
    if not tps:
        return {}

    async def fetch() -> dict[Any, int | None]:
        kafka = app.consumer._thread._ensure_consumer()
        found = await kafka._coordinator.fetch_committed_offsets(
            [TopicPartition(tp.topic, tp.partition) for tp in tps])
        offsets: dict[Any, int | None] = {}
        for tp in tps:
            meta = found.get(TopicPartition(tp.topic, tp.partition))
            offsets[tp] = meta.offset if meta is not None and meta.offset >= 0 else None
        return offsets

    return await app.consumer._thread.call_thread(fetch)


def believe_committed(app: faust.App, tp: Any, offset: int | None) -> None:
    """Sets Faust's belief of what it committed for ``tp`` back to ``offset``, the broker's.

    Faust commits a partition only when its next offset exceeds that belief
    (``Consumer._should_commit``): a belief ahead of the broker means it never commits the
    partition again. Followed by ``note_done_before``, its next commit reaches the broker.
    """
    app.consumer._committed_offset[tp] = offset


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
    each commit would move one offset on. Faust takes gaps in only up to the highest offset
    it saw acked: when none is acked at or past ``end - 1`` and that offset is missing, it is
    recorded as acked (as ``Consumer.ack`` records one), so the next commit reaches ``end``
    even if Faust never delivers another input of ``tp``.
    """
    consumer = app.consumer
    committed = consumer._committed_offset.get(tp)
    acked = consumer._acked_index.get(tp, set())
    gaps = consumer._gap.get(tp)

    def done(offset: int) -> bool:
        return offset in acked or (gaps is not None and gaps.overlaps_point(offset))

    first = committed + 1 if committed is not None else 0
    last = end - 1
    ack_last = last >= first and not done(last) and max(consumer._acked.get(tp) or [-1]) < last
    missing_from: int | None = None
    for offset in range(first, last if ack_last else end):
        if not done(offset) and missing_from is None:
            missing_from = offset
        elif done(offset) and missing_from is not None:
            await consumer._add_gap(tp, missing_from, offset - 1)
            missing_from = None
    if missing_from is not None:
        await consumer._add_gap(tp, missing_from, (last if ack_last else end) - 1)
    if ack_last:
        consumer._acked_index[tp].add(last)
        consumer._acked[tp].append(last)
        consumer._n_acked += 1


async def fetch_on_from(app: faust.App, tp: Any, offset: int) -> None:
    """Puts ``tp`` back among the partitions Faust fetches, from ``offset`` on.

    Resumed as a rebalance's recovery resumes it (``Consumer.resume_partitions``, and out of
    the partitions held back for a full stream buffer, ``_buffered_partitions``), then
    sought (``Consumer.seek``: aiokafka's fetch position and Faust's read offset), so that
    whatever held its fetch back, Faust fetches it again from there.
    """
    consumer = app.consumer
    consumer._buffered_partitions.discard(tp)
    consumer.resume_partitions({tp})
    await consumer.seek(tp, offset)


def fetch_state(app: faust.App, tp: Any) -> str:
    """Faust's and aiokafka's view of fetching ``tp``, for the log line of a partition whose inputs stop coming.

    Faust fetches only its active partitions (``Consumer._active_partitions``: assigned,
    neither paused for a rebalance nor held back as ``_buffered_partitions``), hands out
    only records at or beyond its read offset (``_read_offset``), and aiokafka fetches a
    partition only while it is not paused and its last fetched records were consumed
    (``Fetcher._records``). Whatever of it cannot be read is said so.
    """
    consumer = app.consumer
    parts = [
        f"faust active={tp in (getattr(consumer, '_active_partitions', None) or ())}",
        f"paused={tp in getattr(consumer, '_paused_partitions', ())}",
        f"buffered={tp in getattr(consumer, '_buffered_partitions', ())}",
        f"read_offset={getattr(consumer, '_read_offset', {}).get(tp)}",
        f"committed={getattr(consumer, '_committed_offset', {}).get(tp)}",
        f"acked={_offsets_summary(getattr(consumer, '_acked', {}).get(tp))}",
        f"gaps={sorted((gap.begin, gap.end) for gap in getattr(consumer, '_gap', {}).get(tp) or ())[:5]}",
        f"flow_active={getattr(consumer, 'flow_active', None)}",
    ]
    try:
        kafka = consumer._thread._ensure_consumer()
        state = kafka._subscription.subscription.assignment.state_value(tp)
        parts += [
            f"aiokafka paused={getattr(state, 'paused', None)}",
            f"position={getattr(state, '_position', None)}",
            f"awaiting_reset={getattr(state, 'awaiting_reset', None)}",
            f"records_held={tp in kafka._fetcher._records}",
            f"highwater={kafka.highwater(tp)}",
        ]
    except Exception as exc:  # noqa: BLE001 - a diagnostic never stops the check that asked for it
        parts.append(f"aiokafka state unreadable ({exc!r})")
    return ", ".join(parts)


def _offsets_summary(offsets: Any) -> str:
    """``count [first..last]`` of a list of offsets (Faust's acked offsets of a partition), or ``none``."""
    if not offsets:
        return "none"
    ordered = sorted(offsets)
    return f"{len(ordered)} [{ordered[0]}..{ordered[-1]}]"


def commit_each_offset_once(consumer: Any) -> None:
    """Makes Faust's next committable offset count an offset once, however often it was marked done.

    ``Consumer._new_offset`` takes the gaps below the highest acked offset into the acked
    offsets, sorts them and commits up to the end of the first run of consecutive offsets.
    An offset both acked and in a gap (Faust adds a gap when fetched offsets jump, then
    delivers and acks them after a seek back), or acked again after a merge left it in the
    list (merged offsets never enter ``_acked_index``, which ``ack`` checks), is there twice,
    and a repeated offset ends a run: each commit then moves one run on. Seen with workers
    joining and leaving (2026-12-03): partitions applied to their log ends whose committed
    offsets moved 17 offsets in 50 s (one per commit interval), 300-1,000 inputs behind for
    minutes. Installed on the consumer instance, this is Faust 0.15.3's ``_new_offset`` with
    one change: after the merge each offset is kept once (and recorded in ``_acked_index``,
    so a later ack of it adds nothing).
    """
    if getattr(consumer, "_commits_count_each_offset_once", False):
        return
    consumer._commits_count_each_offset_once = True

    def new_offset(tp: Any) -> int | None:
        acked = consumer._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gap_for_tp = consumer._gap[tp]
        if gap_for_tp:
            # As Faust does: the gaps up to the highest acked offset join the acked ones.
            candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda interval: interval.begin)
            if candidates:
                merged: list[int] = []
                for interval in candidates:
                    merged.extend(range(interval.begin, interval.end))
                acked.extend(merged)
                gap_for_tp.chop(0, max(merged[-1], max_offset + 1))
        unique = sorted(set(acked))  # the change
        acked[:] = unique
        index = consumer._acked_index[tp]
        index.update(unique)
        committed = consumer._committed_offset[tp]
        if committed and unique[0] - committed > 1:
            return None  # a hole at the head: nothing to commit yet (as Faust)
        run = next(consecutive_numbers(unique))
        del acked[:len(run)]
        index.difference_update(run)
        return run[-1] + 1

    consumer._new_offset = new_offset


def hand_records_over_inline(consumer: Any) -> None:
    """Makes the fetcher hand each record to the agent's stream in its own task, not in four new ones.

    ``Consumer._drain_messages`` hands every fetched record to the conductor with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: mode's
    ``wait_first`` makes a task of each argument and two more for the service's ``stopped``
    and ``crashed`` events, waits for the first, and cancels the other three: 55 us per
    record on this machine (2026-12-03), a fifth of the worker's time per input at 3,700
    inputs/s. Each task also costs turns of the event loop, so the fetcher handed the agent
    one record per turn.

    Installed on the consumer instance, this ``wait_first`` recognises that one call (its
    second argument is the consumer's own ``suspend_flow.wait()``) and awaits the callback
    right in the fetcher's task: a record the stream's queue has room for is handed over
    without a task or a turn of the loop (the fetcher still yields every 100 records), which
    made a worker 30-40% faster (54,000 lifecycle inputs, alternating runs, 2,750-2,900 ->
    3,800-3,900 inputs/s, 2026-12-03). What might end the wait first is a guard shared by
    every record until it fires: the original ``wait_first`` of ``suspend_flow`` (so the same
    three events end it). When it fires while a record waits (the queue is full), the
    fetcher's task is cancelled at that wait and the cancellation taken back
    (``Task.uncancel``), so the callback is cancelled and the drain goes on, as the original
    does; a cancellation of the fetcher's task from elsewhere (a stop) propagates. The
    callback's exception propagates. Once the guard has fired, the next record takes the
    original path and a new guard is made. Any other call goes to the original unchanged.
    """
    if getattr(consumer, "_records_handed_over_inline", False):
        return  # installed already (an agent restarted by its supervisor)
    consumer._records_handed_over_inline = True
    original = consumer.wait_first
    suspend_flow = consumer.suspend_flow
    guard: list[asyncio.Future | None] = [None]

    def is_suspend_flow_wait(awaitable: Any) -> bool:
        frame = getattr(awaitable, "cr_frame", None)
        return frame is not None and frame.f_locals.get("self") is suspend_flow \
            and awaitable.cr_code is type(suspend_flow).wait.__code__

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:
        if len(coros) != 2 or timeout is not None or not is_suspend_flow_wait(coros[1]):
            return await original(*coros, timeout=timeout)
        shared = guard[0]
        if shared is None or shared.done():
            guard[0] = None
            result = await original(*coros)
            fresh = asyncio.ensure_future(original(suspend_flow.wait()))
            # Its outcome is read here: a guard ended by a cancellation must not be logged
            # later as "exception was never retrieved" (the next record makes a new one).
            fresh.add_done_callback(lambda done: done.cancelled() or done.exception())
            guard[0] = fresh
            return result
        callback, suspended = coros
        suspended.close()  # never awaited: the shared guard stands for it
        await _await_unless(callback, shared)
        return None

    consumer.wait_first = wait_first


async def _await_unless(callback: Any, guard: asyncio.Future) -> None:
    """Awaits ``callback`` in the current task; cancels it if ``guard`` completes first (no error then).

    The guard's done callbacks run from the loop later, possibly after this returned: the
    hand-over is marked over, so a late one cancels nothing.
    """
    task = asyncio.current_task()
    assert task is not None
    waiting = True
    interrupted = False

    def interrupt(_guard: asyncio.Future) -> None:
        nonlocal interrupted
        if waiting:
            interrupted = True
            task.cancel()

    guard.add_done_callback(interrupt)
    try:
        await callback
        if interrupted:
            task.uncancel()  # the callback swallowed our cancellation: nothing of it may linger
    except asyncio.CancelledError:
        # Ours alone: taken back, and the hand-over ends as the original's does. Any other
        # (the fetcher stopped) goes on up.
        if interrupted and task.uncancel() == 0:
            return
        raise
    finally:
        waiting = False
        guard.remove_done_callback(interrupt)


class OnLoopConsumerThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer service, run on the worker's own event loop instead of a thread of its own.

    faust-streaming 0.15.3 runs aiokafka's consumer in a ``ServiceThread`` with a second event
    loop, and every call the worker makes of it (``getmany``, commit, positions) goes through
    mode's method queue to that loop and its answer back through ``call_soon_threadsafe``:
    an input was 4-12 ms old at the median (p99 15-60) when it reached the agent, on two cores
    that also run the broker (2026-12-04); the decision latency at 1,000 inputs/s was p50
    7-21 ms, p99 27-76. With aiokafka on the worker's loop, as aiokafka is meant to be used,
    alternating runs gave p50 3-8 ms, p99 14-71 (median 24 against 45), and the same
    end-to-end rate within the machine's noise.

    Everything else is Faust's own consumer thread class: the same aiokafka consumer, rebalance
    listener and calls. ``start`` serves it in a task of the worker's loop (``_serve``, what
    the thread would run), ``call_thread`` awaits the call in the caller's task, and the end
    of ``_serve`` does not sweep the loop's tasks (mode's sweep is meant for the thread's own
    loop: here it would cancel the worker's). The consumer's heartbeats now share the loop
    with the agent: the worker yields to the loop between runs of at most ``MAX_RUN`` inputs
    and between steps of any scan (milliseconds to tens of milliseconds), far inside the
    session timeout (``PIPELINE_SESSION_TIMEOUT_S``, at least 6 s).
    """

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._serving: asyncio.Task | None = None

    async def start(self) -> None:
        """Serves the consumer in a task of the worker's loop and returns once it runs (or raises its start error)."""
        assert not self._thread_started.is_set()
        self._thread_started.set()
        self._thread_running = asyncio.get_running_loop().create_future()
        self._serving = asyncio.ensure_future(self._serve())
        # _serve reports a crash itself (on_crash, the beacon's root); its re-raise needs no second report.
        self._serving.add_done_callback(lambda served: served.cancelled() or served.exception())
        try:
            if not self.should_stop:
                await self._thread_running
        finally:
            self._thread_running = None

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Calls ``fun`` in the caller's task: the consumer is on this loop (some are plain functions, as in mode's queue)."""
        return await maybe_async(fun(*args, **kwargs))

    async def _gather_remaining_tasks(self) -> None:
        """Leaves the loop's tasks alone: they are the worker's, not a thread's."""
        return None


class OnLoopConsumer(AIOKafkaConsumer):
    """faust-streaming's aiokafka ``Consumer`` with its aiokafka consumer on the worker's loop (``OnLoopConsumerThread``)."""

    def _new_consumer_thread(self) -> OnLoopConsumerThread:
        return OnLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)


class OnLoopTransport(AIOKafkaTransport):
    """faust-streaming's aiokafka transport, its consumer an ``OnLoopConsumer``; the producer is Faust's own."""

    Consumer = OnLoopConsumer


def consume_on_the_worker_loop(app: faust.App) -> None:
    """Gives ``app`` the ``OnLoopTransport`` for its broker, before anything asks for its consumer."""
    app.transport = OnLoopTransport(app.conf.broker_consumer, app)

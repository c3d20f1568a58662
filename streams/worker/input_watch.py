"""The worker's watch over its input partitions: no input left unapplied, no commit left behind.

The agent finds a hole when a partition's next input comes (streams.worker.gaps); a quiet
partition may get none, Faust's committed offset can stay behind inputs durably applied (or
Faust can believe it committed an offset the broker never got), and Faust can stop fetching a
partition altogether. ``InputWatch.check`` runs every second
(``CHECK_EVERY_S``) and deals with each, applying what it reads from the log under the same
lock the agent applies its runs under, each partition in offset order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import faust
from faust.types import TP

from streams.worker.faust_consumer import (
    active_partitions,
    believe_committed,
    committed_offsets,
    fetch_on_from,
    fetch_state,
    note_done_before,
)
from streams.telemetry.task_dump import await_chain
from streams.worker.gaps import AppliedOffsets, LaggingCommits, StalledCommits, UndeliveredInputs

logger = logging.getLogger(__name__)

#: How often the worker looks for inputs Faust went past, stalled commits and unfetched partitions.
CHECK_EVERY_S = 1.0
#: How long an idle worker waits on a partition whose log holds inputs it was never given before it acts.
UNDELIVERED_PATIENCE_S = 5.0
#: How long a committed offset may stay behind its partition's log end, unmoved, before the worker says so.
STALLED_PARTITION_ALARM_S = 30.0
#: The longest one check may take (filling a hole of tens of thousands of inputs included); then it is
#: cancelled, where it waited is logged, and the next check starts afresh.
CHECK_TIMEOUT_S = 60.0


class InputWatch:
    """Fills holes, unsticks commits and applies the inputs of partitions Faust does not fetch.

    ``apply_from_log(tp, start, end)`` applies offsets ``start`` to ``end - 1`` read from the
    log; ``fill_hole`` does so for a hole and tells Faust they are done; ``idle()`` says
    whether nothing fetched, gathered or in flight waits for the agent; ``durable_next`` is,
    per partition, the offset after the last input durably applied and acked;
    ``describe_agent()`` says what the agent holds, for the stall alarm;
    ``committed_on_broker(tps)`` asks the group's coordinator what is committed
    (``faust_consumer.committed_on_broker``): what Faust believes it committed can be ahead.
    """

    def __init__(self, app: faust.App, inputs_topic: str, changelog_topic: str, applied: AppliedOffsets,
                 durable_next: Mapping[int, int], serial: asyncio.Lock, idle: Callable[[], bool],
                 fill_hole: Callable[[TP, int, int], Awaitable[None]],
                 apply_from_log: Callable[[TP, int, int], Awaitable[None]], commit_interval_s: float,
                 describe_agent: Callable[[], str],
                 committed_on_broker: Callable[[list[TP]], Awaitable[Mapping[TP, int | None]]]) -> None:
        self._app = app
        self._inputs_topic = inputs_topic
        self._changelog_topic = changelog_topic
        self._applied = applied
        self._durable_next = durable_next
        self._serial = serial
        self._idle = idle
        self._fill_hole = fill_hole
        self._apply_from_log = apply_from_log
        self._describe_agent = describe_agent
        self._committed_on_broker = committed_on_broker
        # A committed offset that has not moved for two commit intervals while behind is stalled.
        self._stalled_commits = StalledCommits(patience_s=2 * commit_interval_s + CHECK_EVERY_S)
        # Holes seen at the previous check: filled only when the next check sees them still there.
        self._seen_holes: dict[int, tuple[int, int]] = {}
        self._undelivered = UndeliveredInputs(patience_s=UNDELIVERED_PATIENCE_S)
        # A committed offset behind the log end that has not moved for long, whatever the cause.
        self._stalled_partitions = StalledCommits(patience_s=STALLED_PARTITION_ALARM_S)
        # A committed offset that crawls: behind where the log ended that long ago, the agent idle.
        self._lagging_commits = LaggingCommits(patience_s=STALLED_PARTITION_ALARM_S)
        # Since when asking for log end and committed offsets has failed (None: it last worked).
        self._blind_since: float | None = None

    def forget(self) -> None:
        """Drops what was seen (a rebalance: the next assignment is checked afresh)."""
        self._seen_holes.clear()
        self._stalled_commits.forget()
        self._undelivered.forget()
        self._stalled_partitions.forget()
        self._lagging_commits.forget()

    def describe(self) -> str:
        """What the watch sees of each input partition the consumer holds, one line each (for the task dump)."""
        app = self._app
        owned = self._owned()
        lines = [f"input watch: rebalancing={app.rebalancing}, recovered={app.tables.recovery.completed.is_set()}, "
                 f"idle={self._idle()}, owned={sorted(owned)}, blind since={self._blind_since}"]
        for tp in sorted(app.consumer.assignment()):
            if tp.topic == self._inputs_topic:
                lines.append(f"  position-inputs[{tp.partition}]: applied up to "
                             f"{self._applied.expected(tp.partition) if self._applied.known else '?'}, durable up to "
                             f"{self._durable_next.get(tp.partition)}; {fetch_state(app, tp)}")
        return "\n".join(lines)

    def _settled(self) -> bool:
        return not self._app.rebalancing and self._app.tables.recovery.completed.is_set()

    def _owned(self) -> frozenset[int]:
        return active_partitions(self._app, self._changelog_topic)

    async def check_within(self, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        """``check``, cancelled after ``timeout_s`` with a warning naming where it waited.

        The check awaits Faust's consumer (positions, end offsets), the agent's lock and
        log reads: one that never returns would end every later check unseen.
        """
        task = asyncio.ensure_future(self.check())
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if task in done:
            task.result()
            return
        where = " <- ".join(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})"
                            for frame in reversed(await_chain(task.get_coro())))
        logger.warning("the input watch's check did not finish in %gs, waiting in %s; cancelled", timeout_s, where)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def check(self) -> None:
        """One look at every input partition the worker owns (see the module's docstring)."""
        log_end, on_broker = await self._sound_stall_alarm()
        if not self._settled():
            self._seen_holes.clear()
            self._undelivered.forget()
            return
        app = self._app
        owned = self._owned()
        committed_by_partition = committed_offsets(app)
        # Idle, nothing fetched waits for the agent: a fetch position beyond what is applied is
        # a hole too (Faust can seek past inputs no one applied, then commit an older offset).
        idle = self._idle()
        inputs = [tp for tp in app.consumer.assignment() if tp.topic == self._inputs_topic and tp.partition in owned]
        committed = {tp.partition: committed_by_partition.get(tp) for tp in inputs}
        # Idle, every input applied is durable: the table's offsets count as much as the completions'.
        durable = dict(self._durable_next)
        if idle:
            for tp in inputs:
                durable[tp.partition] = max(durable.get(tp.partition, 0), self._applied.expected(tp.partition))
        await self._fill_confirmed_holes(inputs, committed, idle)
        # What the broker holds is the truth; Faust's belief stands in when the broker was not asked.
        truth = {partition: (on_broker[partition] if on_broker is not None and partition in on_broker else offset)
                 for partition, offset in committed.items()}
        for partition, next_offset in self._stalled_commits.check(truth, durable, time.monotonic()):
            await self._unstick_commit(TP(self._inputs_topic, partition), next_offset)
        if idle and log_end is not None:
            await self._apply_undelivered(inputs, committed, log_end)
        else:
            self._undelivered.forget()

    async def _unstick_commit(self, tp: TP, next_offset: int) -> None:
        # The broker's committed offset has stayed behind what is durably applied. Either Faust
        # does not commit (it waits on an offset it will never ack: note_done_before), or it
        # believes it committed what the broker never got (set back to the broker's first, or
        # Faust never commits the partition again). Asked afresh: a commit may have landed meanwhile.
        app = self._app
        believed = committed_offsets(app).get(tp)
        try:
            on_broker = (await self._committed_on_broker([tp]))[tp]
        except Exception:  # noqa: BLE001 - the assignment changed meanwhile: the next check looks again
            return
        if (believed or 0) > (on_broker or 0):
            logger.warning("position-inputs[%d]: Faust believes it committed offset %s, the broker holds %s (a "
                           "commit counted that did not happen); every input before %d is applied; committing "
                           "them again", tp.partition, believed, on_broker, next_offset)
            believe_committed(app, tp, on_broker)
        elif (on_broker or 0) < next_offset:
            logger.warning("position-inputs[%d]: the committed offset stays at %s (Faust believes %s) while every "
                           "input before %d is applied; telling Faust they are done", tp.partition, on_broker,
                           believed, next_offset)
        else:
            return  # committed meanwhile
        await note_done_before(app, tp, next_offset)

    async def _sound_stall_alarm(self) -> tuple[dict[int, int] | None, dict[int, int | None] | None]:
        # Every input partition the consumer holds, settled or not, owned by the assignor or not:
        # a stall the checks below cannot see (a rebalance that never ends, a partition the
        # assignor does not count as this worker's) is named too. Judged by the offsets the
        # broker holds, not by what Faust believes it committed. Returns the partitions' log end
        # offsets and committed offsets on the broker, asked once a check (None when the
        # assignment changed meanwhile).
        app = self._app
        try:
            inputs = [tp for tp in app.consumer.assignment() if tp.topic == self._inputs_topic]
            log_end = {tp.partition: end for tp, end in (await app.consumer.highwaters(*inputs)).items()}
            on_broker = {tp.partition: offset for tp, offset in (await self._committed_on_broker(inputs)).items()}
        except Exception as error:  # noqa: BLE001 - the assignment changed meanwhile: the next check looks again
            # Unless it keeps failing: then every check below is blind, which must not go unsaid.
            now = time.monotonic()
            if self._blind_since is None:
                self._blind_since = now
            elif now - self._blind_since >= STALLED_PARTITION_ALARM_S:
                logger.warning("the input watch has not been able to ask Faust's consumer for its input partitions' "
                               "log end and committed offsets for %.0fs (%s: %s); it cannot see stalls meanwhile",
                               now - self._blind_since, type(error).__name__, error)
                self._blind_since = now
            return None, None
        self._blind_since = None
        believed_by_partition = committed_offsets(app)
        believed = {tp.partition: believed_by_partition.get(tp) for tp in inputs}
        owned = self._owned()
        now = time.monotonic()
        for partition, end in self._stalled_partitions.check(on_broker, log_end, now):
            self._name_stall(partition, f"the committed offset has stayed at {on_broker[partition]} for "
                                        f"{STALLED_PARTITION_ALARM_S:.0f}s (Faust believes {believed[partition]}) "
                                        f"while the log ends at {end}", owned)
        for partition, old_end in self._lagging_commits.check(on_broker, log_end, self._idle(), now):
            self._name_stall(partition, f"the committed offset is at {on_broker[partition]} (Faust believes "
                                        f"{believed[partition]}) with the agent idle, behind where the log ended "
                                        f"{STALLED_PARTITION_ALARM_S:.0f}s ago ({old_end}; now {log_end[partition]})",
                             owned)
        return log_end, on_broker

    def _name_stall(self, partition: int, what: str, owned: frozenset[int]) -> None:
        app = self._app
        logger.warning("position-inputs[%d]: %s; %s, %s; applied up to %s, durable up to %s; the agent: %s; %s",
                       partition, what, "owned" if partition in owned else "NOT among the assignor's actives",
                       "settled" if self._settled() else
                       f"NOT settled (rebalancing={app.rebalancing}, "
                       f"recovered={app.tables.recovery.completed.is_set()})",
                       self._applied.expected(partition) if partition in owned else None,
                       self._durable_next.get(partition), self._describe_agent(),
                       fetch_state(app, TP(self._inputs_topic, partition)))

    async def _fill_confirmed_holes(self, inputs: list[TP], committed: Mapping[int, int | None], idle: bool) -> None:
        holes: dict[int, tuple[int, int]] = {}
        for tp in inputs:
            end = committed[tp.partition]
            position = await self._app.consumer.position(tp) if idle else None
            if position is not None and (end is None or position > end):
                end = position
            hole = self._applied.hole_before(tp.partition, end) if end is not None else None
            if hole is not None:
                holes[tp.partition] = hole
        confirmed = {partition: hole for partition, hole in holes.items() if self._seen_holes.get(partition) == hole}
        self._seen_holes.clear()
        self._seen_holes.update(holes)
        for partition, (start, end) in sorted(confirmed.items()):
            async with self._serial:
                if not self._still_owned(partition):
                    return  # a rebalance began: the next assignment is checked afresh
                if self._applied.hole_before(partition, end) == (start, end):  # the agent did not fill it meanwhile
                    await self._fill_hole(TP(self._inputs_topic, partition), start, end)

    async def _apply_undelivered(self, inputs: list[TP], committed: Mapping[int, int | None],
                                 log_end: Mapping[int, int]) -> None:
        # The log's end beyond both what is applied and what Faust committed, unchanged while the
        # agent stays idle: Faust is not fetching the partition (a tail of undecodable inputs
        # after a restart is behind the committed offset, so it is not taken for one).
        app = self._app
        next_to_apply = {tp.partition: self._applied.expected(tp.partition) for tp in inputs
                         if (committed[tp.partition] or 0) < log_end.get(tp.partition, 0)}
        for partition, start, end in self._undelivered.check(next_to_apply, log_end, time.monotonic()):
            tp = TP(self._inputs_topic, partition)
            logger.warning("position-inputs[%d]: offsets %d..%d are in the log and Faust delivered none of them "
                           "for %.0fs (%s); reading them from the log, then fetching on from %d",
                           partition, start, end - 1, UNDELIVERED_PATIENCE_S, fetch_state(app, tp), end)
            async with self._serial:
                if not self._still_owned(partition):
                    return  # a rebalance began: the next assignment is checked afresh
                if self._applied.hole_before(partition, end) != (start, end):
                    continue  # the agent was given them meanwhile
                await self._apply_from_log(tp, start, end)
                await note_done_before(app, tp, end)
                await fetch_on_from(app, tp, end)

    def _still_owned(self, partition: int) -> bool:
        return self._settled() and partition in self._owned()


__all__ = ["CHECK_EVERY_S", "CHECK_TIMEOUT_S", "STALLED_PARTITION_ALARM_S", "UNDELIVERED_PATIENCE_S", "InputWatch"]

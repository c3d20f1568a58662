"""Inputs applied without holes: what the agent has applied per partition, and the log read to fill a hole.

Faust's consumer can go past an input the agent never saw: it acks messages it drops for a
stale generation during a rebalance, treats a jump in fetched offsets as a gap it may commit
over, and commits from offset 0 without checking for a hole before the first acked offset
(all seen against faust-streaming 0.15.3 in the fault suite). Seeking Faust's consumer back
does not help: the fetcher drops every record below the highest offset it has handed out.

So the agent keeps its own truth. Every applied input writes its key's state with the
input's offset (``last_offset``), and inputs are applied in offset order without holes, so
after a restart, a rebalance or a failover the highest ``last_offset`` of a partition's keys
in the (changelog-restored) table says where that partition's inputs were applied to,
whatever offset Faust committed. An input delivered beyond that point means a hole: the
agent reads the missing offsets from the log itself (``LogRangeReader``), applies them, and
then the input in hand.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

logger = logging.getLogger(__name__)

#: Records fetched per read while filling a hole.
FILL_BATCH_RECORDS = 500


def applied_through(key_offsets: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Per partition, the offset after the highest applied input, from ``(partition, last_offset)`` pairs."""
    through: dict[int, int] = {}
    for partition, last_offset in key_offsets:
        if last_offset >= 0 and last_offset + 1 > through.get(partition, 0):
            through[partition] = last_offset + 1
    return through


class AppliedOffsets:
    """Per partition, the next offset the agent must apply: an input beyond it means a hole.

    ``recover`` gives the offsets the table shows applied (``applied_through`` of its keys);
    it is asked again after ``forget`` (a rebalance: another worker may have moved a
    partition on meanwhile). A partition whose table holds no key never had a valid input
    applied (every valid input writes its key's state, and keys are never removed), so
    everything from the start of its log is still to apply: its next offset is 0. (Records
    that were undecodable are dead-lettered again when such a partition is read from its start.)
    """

    def __init__(self, recover: Callable[[], Mapping[int, int]]) -> None:
        self._recover = recover
        self._next: dict[int, int] | None = None
        self._met: set[int] = set()

    def first_since_recovered(self, partition: int) -> bool:
        """True for the first input of ``partition`` met since the table was (re)asked, False after it."""
        if partition in self._met:
            return False
        self._met.add(partition)
        return True

    def expected(self, partition: int) -> int:
        """The next offset to apply in ``partition`` (0 when none of its inputs was applied)."""
        if self._next is None:
            self._next = dict(self._recover())
        return self._next.get(partition, 0)

    def hole_before(self, partition: int, offset: int) -> tuple[int, int] | None:
        """``(first missing, offset)`` when inputs before ``offset`` were never applied, else None."""
        expected = self.expected(partition)
        if offset <= expected:
            return None  # in order, or a redelivery (a no-op for its key's state)
        return expected, offset

    @property
    def known(self) -> bool:
        """False after ``forget`` until the table is asked again."""
        return self._next is not None

    def applied(self, partition: int, offset: int) -> None:
        """Records that ``offset`` of ``partition`` (and, by construction, all before it) was applied."""
        if self._next is None:
            self._next = dict(self._recover())
        if offset + 1 > self._next.get(partition, 0):
            self._next[partition] = offset + 1

    def forget(self) -> None:
        """Drops what is known: the table is asked again at the next input (after a rebalance)."""
        self._next = None
        self._met.clear()


class LogRangeReader:
    """Reads a range of one partition's offsets straight from the log, outside Faust's consumer."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic

    async def read(self, partition: int, start: int, end: int) -> AsyncIterator[list]:
        """Yields the records of offsets ``start`` to ``end - 1`` in batches, in offset order.

        Offsets that hold no record (removed by retention, or control records) are passed
        over: the read ends once the position reaches ``end``.
        """
        tp = TopicPartition(self.topic, partition)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_poll_records=FILL_BATCH_RECORDS)
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                fetched = await consumer.getmany(tp, timeout_ms=1000)
                records = [record for record in fetched.get(tp, []) if start <= record.offset < end]
                if records:
                    yield records
        finally:
            await consumer.stop()


async def group_committed_offsets(bootstrap_servers: str, group: str, topic: str,
                                  partitions: Iterable[int]) -> dict[int, int | None]:
    """The offsets ``group`` committed for ``partitions`` of ``topic`` (None where it committed none)."""
    tps = [TopicPartition(topic, partition) for partition in partitions]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    offsets: dict[int, int | None] = {}
    for tp in tps:
        found = committed.get(tp)
        offsets[tp.partition] = found.offset if found is not None and found.offset >= 0 else None
    return offsets


class CarriedOutCommands:
    """Per partition, the next command offset the executor must carry out.

    The executor's counterpart of ``AppliedOffsets``, without a table to ask. Two facts say
    what is done: the group's committed offset (each command before it was carried out and
    its report acknowledged; with no commit at all, nothing was) and the offsets this worker
    carried out itself. The next offset is the later of the two; the committed offset is
    asked again in each group generation (another worker may have moved the partition on).

    Faust can start a newly assigned partition beyond commands no worker carried out (seen:
    a worker that joined after the partition's owner was killed got its first command at
    offset 3 while the group had committed none, and the entry order at offset 2 was never
    placed). So a command delivered beyond the next offset, or a fetch position beyond it
    that stays so, means commands to read from the log and carry out first.
    """

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._resumed_in: dict[int, int] = {}
        self._looked: dict[int, tuple[int, int, int]] = {}

    def next_offset(self, partition: int, generation: int) -> int | None:
        """The next offset to carry out in ``partition``; None until ``resume`` in this generation."""
        if self._resumed_in.get(partition) != generation:
            return None
        return self._next.get(partition, 0)

    def resume(self, partition: int, generation: int, committed: int | None) -> None:
        """Takes in the group's committed offset of ``partition`` (None: it committed none) in ``generation``."""
        if committed is not None and committed > self._next.get(partition, 0):
            self._next[partition] = committed
        self._resumed_in[partition] = generation

    def carried_out(self, partition: int, offset: int) -> None:
        """Records that this worker carried out ``offset`` of ``partition`` (its report acknowledged)."""
        if offset + 1 > self._next.get(partition, 0):
            self._next[partition] = offset + 1

    def undelivered(self, partition: int, generation: int, position: int) -> tuple[int, int] | None:
        """``(next offset, position)`` when Faust's fetch position is beyond the next offset, as it was,
        unchanged, at the previous look: commands fetched past and never carried out."""
        known = self.next_offset(partition, generation)
        if known is None or position <= known:
            self._looked.pop(partition, None)
            return None
        now = (generation, known, position)
        before, self._looked[partition] = self._looked.get(partition), now
        return (known, position) if before == now else None


def note_durable(durable_next: dict[int, int], messages: Iterable[Any]) -> None:
    """Moves each partition's next offset past ``messages`` (inputs durably applied and acked)."""
    for message in messages:
        if message.offset >= durable_next.get(message.partition, 0):
            durable_next[message.partition] = message.offset + 1


class StalledCommits:
    """Partitions whose committed offset has stayed behind what is durably applied for too long.

    ``check`` is given, per partition, the offset Faust says it committed and the offset
    after the last input whose outputs and state are durable (``durable_next``). A committed
    offset behind it is normal for a commit interval; one that has not moved for
    ``patience_s`` while behind is stalled (see ``faust_consumer.note_done_before``).
    """

    def __init__(self, patience_s: float) -> None:
        self._patience_s = patience_s
        self._behind_since: dict[int, tuple[int | None, float]] = {}

    def check(self, committed: Mapping[int, int | None], durable_next: Mapping[int, int],
              now: float) -> list[tuple[int, int]]:
        """``(partition, durable_next)`` of each stalled partition; each is named again only after another wait."""
        stalled = []
        for partition, next_offset in durable_next.items():
            offset = committed.get(partition)
            # None: nothing committed yet, which is behind only once there is something to commit.
            if partition not in committed or (offset if offset is not None else 0) >= next_offset:
                self._behind_since.pop(partition, None)
                continue
            seen = self._behind_since.get(partition)
            if seen is None or seen[0] != offset:
                self._behind_since[partition] = (offset, now)
            elif now - seen[1] >= self._patience_s:
                stalled.append((partition, next_offset))
                self._behind_since[partition] = (offset, now)
        return stalled

    def forget(self) -> None:
        """Drops what was seen (a rebalance: the committed offsets are asked afresh)."""
        self._behind_since.clear()


class UndeliveredInputs:
    """Partitions whose log holds inputs beyond what is applied while Faust delivers none of them.

    Faust's fetcher can leave an assigned partition unfetched for good: seen once after a
    kill -9 and a restart (2026-12-03), where two partitions were applied to their ends and
    the third stayed 785 inputs behind for three minutes, its committed offset unmoved, with
    nothing delivered and no hole (the fetch position was the committed offset). ``check`` is
    given, while the agent is idle, each partition's next offset to apply and its log end
    offset; the same pair with inputs between them, for ``patience_s``, is a partition
    Faust does not deliver. Each is named again only after another wait.
    """

    def __init__(self, patience_s: float) -> None:
        self._patience_s = patience_s
        self._seen: dict[int, tuple[int, int, float]] = {}

    def check(self, next_to_apply: Mapping[int, int], log_end: Mapping[int, int],
              now: float) -> list[tuple[int, int, int]]:
        """``(partition, next to apply, log end)`` of each partition left undelivered for the patience."""
        undelivered = []
        for partition, start in next_to_apply.items():
            end = log_end.get(partition)
            if end is None or end <= start:
                self._seen.pop(partition, None)
                continue
            seen = self._seen.get(partition)
            if seen is None or seen[:2] != (start, end):
                self._seen[partition] = (start, end, now)
            elif now - seen[2] >= self._patience_s:
                undelivered.append((partition, start, end))
                self._seen[partition] = (start, end, now)
        for partition in set(self._seen) - set(next_to_apply):
            del self._seen[partition]
        return undelivered

    def forget(self) -> None:
        """Drops what was seen (the agent is busy, or a rebalance began)."""
        self._seen.clear()


class LaggingCommits:
    """Partitions whose committed offset, with the agent idle, is behind where the log ended ``patience_s`` ago.

    ``StalledCommits`` names a committed offset that does not move; one that crawls escapes
    it. Seen with workers joining and leaving (2026-12-03): every input applied, the agent
    idle, committed offsets moving one offset per commit interval, 300-1,000 inputs behind
    for minutes (``faust_consumer.commit_each_offset_once``). Under steady traffic the
    committed offset trails the log end by a commit interval; in a backlog the agent is not
    idle: neither is named, nor a committed offset that did not move meanwhile (that is
    ``StalledCommits``'s). ``check`` is given the committed offsets, the log end offsets,
    whether the agent is idle, and the time; each partition is named again only after
    another wait.
    """

    def __init__(self, patience_s: float) -> None:
        self._patience_s = patience_s
        # Per partition, (time, log end, committed) seen at the checks of the last patience, oldest first.
        self._ends: dict[int, deque[tuple[float, int, int]]] = {}
        self._named_at: dict[int, float] = {}

    def check(self, committed: Mapping[int, int | None], log_end: Mapping[int, int], idle: bool,
              now: float) -> list[tuple[int, int]]:
        """``(partition, where its log ended patience_s ago)`` of each partition whose commit lags that far."""
        lagging = []
        for partition, end in log_end.items():
            offset = committed.get(partition) or 0
            ends = self._ends.setdefault(partition, deque())
            ends.append((now, end, offset))
            while len(ends) > 1 and ends[1][0] <= now - self._patience_s:
                ends.popleft()  # keep the newest sample at least patience_s old
            seen_at, old_end, old_offset = ends[0]
            if (idle and now - seen_at >= self._patience_s and old_offset < offset < old_end
                    and now - self._named_at.get(partition, -self._patience_s) >= self._patience_s):
                lagging.append((partition, old_end))
                self._named_at[partition] = now
        for partition in set(self._ends) - set(log_end):
            del self._ends[partition]
        return lagging

    def forget(self) -> None:
        """Drops what was seen (a rebalance began)."""
        self._ends.clear()
        self._named_at.clear()


__all__ = ["AppliedOffsets", "CarriedOutCommands", "LaggingCommits", "LogRangeReader", "StalledCommits",
           "UndeliveredInputs", "applied_through", "group_committed_offsets", "note_durable"]

"""Each command carried out once, in offset order, none left out, whatever Faust delivers.

The carrier's parts (the exchange, the log, the group's commits) are in-memory here: this is
the ordering logic alone. tests/integration/worker/test_command_gaps.py runs it on the broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from streams.worker.command_agents import CommandCarrier, LoggedCommand
from streams.worker.gaps import CarriedOutCommands


class Parts:
    """A log of one partition's commands, the group's commits, and what was carried out."""

    def __init__(self, offsets: int, committed: dict[int, int | None] | None = None) -> None:
        self.log = {0: [LoggedCommand(0, offset, b"k", b"c%d" % offset, offset) for offset in range(offsets)]}
        self.committed_offsets = committed or {}
        self.carried: list[tuple[int, int]] = []
        self.noted: list[tuple[int, int]] = []
        self.generation_now = 1
        self.commits_asked = 0
        self.on_carry = None

    async def carry_out(self, command: LoggedCommand) -> None:
        self.carried.append((command.partition, command.offset))
        if self.on_carry is not None:
            self.on_carry(command)

    async def read_log(self, partition: int, start: int, end: int) -> AsyncIterator[list[LoggedCommand]]:
        yield [c for c in self.log[partition] if start <= c.offset < end]

    async def committed(self, partitions: list[int]) -> dict[int, int | None]:
        self.commits_asked += 1
        return {p: self.committed_offsets.get(p) for p in partitions}

    async def note_done(self, partition: int, end: int) -> None:
        self.noted.append((partition, end))

    def carrier(self) -> CommandCarrier:
        return CommandCarrier(self.carry_out, self.read_log, self.committed, self.note_done,
                              lambda: self.generation_now)

    def command(self, offset: int) -> LoggedCommand:
        return self.log[0][offset]


async def test_commands_delivered_in_order_are_carried_out_in_order_without_reading_the_log():
    parts = Parts(3, committed={0: 0})
    carrier = parts.carrier()

    for offset in range(3):
        await carrier.delivered(parts.command(offset))

    assert parts.carried == [(0, 0), (0, 1), (0, 2)]
    assert parts.noted == []
    assert parts.commits_asked == 1  # once per generation, not per command


async def test_a_first_command_beyond_the_committed_offset_brings_the_ones_before_it_from_the_log_first():
    # The seen case: the group committed 1, Faust's first delivery is offset 3.
    parts = Parts(4, committed={0: 1})
    carrier = parts.carrier()

    await carrier.delivered(parts.command(3))

    assert parts.carried == [(0, 1), (0, 2), (0, 3)]
    assert parts.noted == [(0, 3)]  # Faust is told 1..2 are done


async def test_with_no_commit_at_all_everything_from_the_start_of_the_log_is_carried_out():
    parts = Parts(3, committed={})
    carrier = parts.carrier()

    await carrier.delivered(parts.command(2))

    assert parts.carried == [(0, 0), (0, 1), (0, 2)]


async def test_a_command_delivered_again_after_it_was_carried_out_is_not_carried_out_again():
    parts = Parts(4, committed={0: 0})
    carrier = parts.carrier()
    await carrier.delivered(parts.command(2))  # 0 and 1 from the log, then 2

    await carrier.delivered(parts.command(1))  # Faust delivers what was read from the log
    await carrier.delivered(parts.command(3))

    assert parts.carried == [(0, 0), (0, 1), (0, 2), (0, 3)]


async def test_a_new_generation_asks_the_commits_again_and_resumes_at_the_later_of_the_two():
    parts = Parts(8, committed={0: 0})
    carrier = parts.carrier()
    await carrier.delivered(parts.command(0))
    # Another worker owned the partition for a while and carried out up to 5.
    parts.generation_now, parts.committed_offsets = 2, {0: 6}

    await carrier.delivered(parts.command(6))

    assert parts.carried == [(0, 0), (0, 6)]
    assert parts.commits_asked == 2


async def test_a_commit_behind_what_this_worker_carried_out_does_not_take_it_back():
    parts = Parts(5, committed={0: 0})
    carrier = parts.carrier()
    for offset in range(4):
        await carrier.delivered(parts.command(offset))
    parts.generation_now, parts.committed_offsets = 2, {0: 1}  # a rebalance; the commit lags

    await carrier.delivered(parts.command(4))

    assert parts.carried == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]


async def test_a_fetch_position_beyond_the_next_offset_is_carried_out_only_when_seen_twice_unchanged():
    parts = Parts(5, committed={0: 2})
    carrier = parts.carrier()

    await carrier.fetched_to({0: 5})
    assert parts.carried == []  # the actor may be about to take them
    await carrier.fetched_to({0: 5})

    assert parts.carried == [(0, 2), (0, 3), (0, 4)]
    assert parts.noted == [(0, 5)]


async def test_an_actor_moving_on_between_two_looks_is_left_to_do_its_work():
    parts = Parts(5, committed={0: 2})
    carrier = parts.carrier()

    await carrier.fetched_to({0: 5})
    await carrier.delivered(parts.command(2))
    await carrier.fetched_to({0: 5})

    assert parts.carried == [(0, 2)]


async def test_a_rebalance_while_reading_the_log_stops_before_the_next_command():
    parts = Parts(4, committed={0: 0})
    carrier = parts.carrier()

    def rebalance_after_the_first(command: LoggedCommand) -> None:
        parts.generation_now = 2

    parts.on_carry = rebalance_after_the_first

    await carrier.delivered(parts.command(3))

    assert parts.carried == [(0, 0)]  # neither 1, 2 nor the delivered 3: the next owner resumes
    assert parts.noted == []


def test_carried_out_commands_know_nothing_in_a_generation_until_resumed():
    carried = CarriedOutCommands()
    carried.carried_out(0, 4)

    assert carried.next_offset(0, 7) is None
    carried.resume(0, 7, None)
    assert carried.next_offset(0, 7) == 5

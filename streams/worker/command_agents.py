"""The worker's exchange agents: commands carried out at the exchange, and the exchange polled.

``execute_commands`` runs one actor per partition of ``position-commands``: a key's
commands stay in order, while other partitions are carried out at the same time. Each
command becomes an execution report on ``position-inputs``, acknowledged by Kafka before the
command's offset can be committed.

No command is left out. Faust can start a newly assigned partition beyond commands no worker
carried out (``streams.worker.gaps.CarriedOutCommands``), so the actor compares every
command's offset with the next one to carry out, and a once-a-second watch compares Faust's
fetch position with it; what lies between is read from the log and carried out first.
Carrying a command out twice is safe (the executor looks the order up by its client id, and
the attempt ledger tells it whether an earlier send may land), leaving one out is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from streams.edge.backoff import Backoff, retry_until_acknowledged
from streams.settings import Settings
from streams.telemetry import metrics
from streams.topics import TopicNames
from streams.wire import codec, serde
from streams.worker.faust_consumer import note_done_before
from streams.worker.gaps import CarriedOutCommands, LogRangeReader, group_committed_offsets
from streams.worker.processor import with_policy

logger = logging.getLogger(__name__)

#: Retries of an execution report Kafka did not acknowledge.
REPORT_BACKOFF = Backoff(0.1, 5.0)
#: Retries of reading the group's committed offsets.
COMMITTED_BACKOFF = Backoff(0.2, 5.0)
#: How often the worker looks for commands Faust fetched past without delivering them.
SKIPPED_COMMANDS_CHECK_S = 1.0


async def acknowledged(sending: Any) -> Any:
    """Awaits a Faust send (a coroutine resolving to the delivery future) and then the delivery."""
    return await (await sending)


@dataclass(frozen=True)
class LoggedCommand:
    """One record of ``position-commands``, as delivered by Faust or read from the log."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class CommandCarrier:
    """Carries out each partition's commands once each, in offset order, none left out.

    The Faust agent hands it what Faust delivers (``delivered``) and a timer what Faust
    fetched (``fetched_to``); commands between the next offset to carry out and either are
    read from the log first (see ``CarriedOutCommands``). Its parts are given:
    ``carry_out(command)`` (at the exchange, the report acknowledged), ``read_log(partition,
    start, end)`` (async batches of ``LoggedCommand``), ``committed(partitions)`` (the
    group's committed offsets), ``note_done(partition, end)`` (tells Faust every offset
    before ``end`` is done) and ``generation()`` (the group generation now).
    """

    def __init__(self, carry_out: Callable[[LoggedCommand], Awaitable[None]],
                 read_log: Callable[[int, int, int], AsyncIterator[list[LoggedCommand]]],
                 committed: Callable[[list[int]], Awaitable[dict[int, int | None]]],
                 note_done: Callable[[int, int], Awaitable[None]], generation: Callable[[], int]) -> None:
        self._carry_out = carry_out
        self._read_log = read_log
        self._committed = committed
        self._note_done = note_done
        self._generation = generation
        self._carried = CarriedOutCommands()
        # The actor and the watch carry out a partition's commands one at a time, in offset order.
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def delivered(self, command: LoggedCommand) -> None:
        """Carries out a command Faust delivered, after any before it that Faust never delivered."""
        generation = self._generation()
        async with self._locks[command.partition]:
            expected = (await self._next_offsets([command.partition], generation))[command.partition]
            if command.offset < expected:
                return  # carried out already (read from the log, or before the committed offset)
            if command.offset > expected and not await self._carry_out_from_log(
                    command.partition, generation, expected, command.offset):
                return
            await self._carry_out(command)
            self._carried.carried_out(command.partition, command.offset)

    async def fetched_to(self, positions: dict[int, int]) -> None:
        """Given Faust's fetch position per owned partition, carries out what it fetched past and
        never delivered (a position beyond the next offset, unchanged since the previous call)."""
        generation = self._generation()
        await self._next_offsets(sorted(positions), generation)
        for partition, position in sorted(positions.items()):
            lock = self._locks[partition]
            if lock.locked():
                continue  # its actor is carrying one out
            undelivered = self._carried.undelivered(partition, generation, position)
            if undelivered is None:
                continue
            async with lock:
                if self._generation() != generation or self._carried.next_offset(
                        partition, generation) != undelivered[0]:
                    continue  # the actor moved on meanwhile
                await self._carry_out_from_log(partition, generation, *undelivered)

    async def _next_offsets(self, partitions: list[int], generation: int) -> dict[int, int]:
        unknown = [p for p in partitions if self._carried.next_offset(p, generation) is None]
        if unknown:
            committed = await self._committed(unknown)
            for partition in unknown:
                self._carried.resume(partition, generation, committed.get(partition))
        return {p: self._carried.next_offset(p, generation) or 0 for p in partitions}

    async def _carry_out_from_log(self, partition: int, generation: int, start: int, end: int) -> bool:
        """Carries out offsets ``start`` to ``end - 1`` from the log; False when the partition moved meanwhile."""
        logger.warning("position-commands[%d]: offsets %d..%d were never delivered; reading them from the log",
                       partition, start, end - 1)
        metrics.observe_command_gap(end - start)
        async for commands in self._read_log(partition, start, end):
            for command in commands:
                if self._generation() != generation:
                    return False  # a rebalance: the partition's next owner resumes from the committed offset
                await self._carry_out(command)
                self._carried.carried_out(partition, command.offset)
        # Faust never handed these out: without gaps its committed offset would stop before them.
        await self._note_done(partition, end)
        return True


def add_exchange_agents(app: faust.App, settings: Settings, names: TopicNames, edge: Any, inputs_topic: Any,
                        output_topics: dict) -> None:
    """Adds the command executor agent, its watch for skipped commands, and the leader's exchange poll."""
    commands_topic = app.topic(names.commands, key_serializer="raw", value_serializer="raw",
                               partitions=settings.topic_partitions)
    log_reader = LogRangeReader(settings.kafka_bootstrap_servers, names.commands)

    async def carry_out(logged: LoggedCommand) -> None:
        try:
            command = serde.decode_command(logged.value)
        except codec.DecodeError as error:
            letter = serde.DeadLetter.of(names.commands, logged.partition, logged.offset, logged.key, logged.value,
                                         error, logged.timestamp_ms)
            await retry_until_acknowledged(
                lambda: acknowledged(output_topics[names.dead_letters].send(key=logged.key or b"",
                                                                            value=serde.encode_dead_letter(letter))),
                REPORT_BACKOFF, f"dead letter for position-commands[{logged.partition}]@{logged.offset}", logger)
            metrics.observe_dead_letter("executor", type(error).__name__)
            return
        await edge.ready.wait()  # extra services start after the agents
        report = await edge.executor.execute(command)
        if report.payload.error_code is not None:
            metrics.observe_exchange_error(report.payload.error_code)
        # Acknowledged before this command's offset can be committed; retried, never raised
        # (an agent that raises makes Faust skip the event silently).
        await retry_until_acknowledged(
            lambda: acknowledged(inputs_topic.send(key=report.key.encode(),
                                                   value=serde.encode_input(with_policy(report, settings)))),
            REPORT_BACKOFF, f"report for {command.command_id}", logger)

    async def read_log(partition: int, start: int, end: int) -> AsyncIterator[list[LoggedCommand]]:
        async for records in log_reader.read(partition, start, end):
            yield [LoggedCommand(partition, record.offset, record.key, record.value, record.timestamp)
                   for record in records]

    async def committed(partitions: list[int]) -> dict[int, int | None]:
        return await retry_until_acknowledged(
            lambda: group_committed_offsets(settings.kafka_bootstrap_servers, settings.app_id, names.commands,
                                            partitions),
            COMMITTED_BACKOFF, "the group's committed offsets of position-commands", logger)

    async def note_done(partition: int, end: int) -> None:
        await note_done_before(app, TP(names.commands, partition), end)

    carrier = CommandCarrier(carry_out, read_log, committed, note_done, lambda: app.consumer_generation_id)

    @app.agent(commands_topic, name="execute_commands", concurrency=1, isolated_partitions=True)
    async def execute_commands(stream: faust.StreamT) -> None:
        """Carries out each command at the exchange and publishes its execution report."""
        async for event in stream.events():
            message = event.message
            await carrier.delivered(LoggedCommand(message.partition, message.offset, message.key, message.value,
                                                  int(message.timestamp * 1000)))

    @app.timer(interval=SKIPPED_COMMANDS_CHECK_S)
    async def carry_out_fetched_past_commands() -> None:
        """Carries out commands Faust fetched past without delivering (no later command would show them)."""
        if app.rebalancing or not edge.ready.is_set():
            return
        try:
            generation = app.consumer_generation_id
            owned = [tp for tp in app.consumer.assignment() if tp.topic == names.commands]
            positions = {tp.partition: await app.consumer.position(tp) for tp in owned}
            if positions and app.consumer_generation_id == generation and not app.rebalancing:
                await carrier.fetched_to({p: at for p, at in positions.items() if at is not None})
        except Exception:  # noqa: BLE001 - an exception in a Faust timer crashes the whole worker
            logger.exception("looking for commands fetched past failed; looking again in %.0fs",
                             SKIPPED_COMMANDS_CHECK_S)

    @app.timer(interval=settings.sync_interval_s, on_leader=True)
    async def poll_exchange_positions() -> None:
        """Publishes what every exchange holds (the leader only: one snapshot per key and cycle)."""
        await edge.ready.wait()
        await edge.tracked.caught_up.wait()
        await edge.poller.poll_once()


__all__ = ["CommandCarrier", "LoggedCommand", "acknowledged", "add_exchange_agents"]

"""The Faust application: one agent applies every input of a key, in order, to the key's state.

``build_pipeline(settings)`` wires the topics, the changelog-backed table ``key_to_state``,
the agent ``apply_inputs`` and the deadline timer onto a new ``faust.App``. The agent is the
only writer of positions: it loads the key's ``KeyState``, calls the pure ``decide``, sends
the commands and updates, waits until Kafka has them, and only then writes the new state to
the table. A crash between the two replays the input, ``decide`` produces the same commands
with the same client order ids, and the exchange edge recognises them; a crash after the
table write makes the redelivered input a no-op (its offset is not above ``last_offset``).

Nothing the agent meets may escape as an exception: Faust would ack the event and skip it
silently. Undecodable bytes and inputs ``decide`` refuses as malformed go to the
dead-letter topic with the reason; a failed send is retried until Kafka takes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from streams import codec, serde
from streams.domain import (
    AppliedInput,
    Deadline,
    Decision,
    DomainError,
    InputEvent,
    Status,
    decide,
)
from streams.settings import Settings
from streams.topics import TopicNames
from streams.web import metrics, register_web

logger = logging.getLogger(__name__)

SEND_RETRY_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ConsumedRecord:
    """The parts of a consumed Kafka record the processor needs (no Faust types below here)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


Send = Callable[[str, bytes, bytes], Awaitable[Any]]


@dataclass
class InputProcessor:
    """Applies one consumed input to its key's state: decode, decide, send, then store.

    ``send(topic, key, value)`` returns an awaitable that resolves once Kafka has the
    record; ``load``/``store`` read and write the key's table value. Kept free of Faust
    so the control flow is testable with plain callables.
    """

    settings: Settings
    topics: TopicNames
    send: Send
    load: Callable[[bytes], dict | None]
    store: Callable[[bytes, dict], None]
    applied_inputs: int = 0
    dead_letters: int = 0
    _policy: Any = field(init=False)

    def __post_init__(self) -> None:
        self._policy = self.settings.policy()

    async def apply(self, record: ConsumedRecord) -> Decision | None:
        """Applies ``record``; returns the decision, or None when it went to the dead letters."""
        try:
            key, event = self._decode(record)
            stored = self.load(record.key)
            state = serde.key_state_from_record(stored) if stored is not None else None
            decision = decide(state, AppliedInput(record.offset, event), self._policy)
            metrics.observe_input(event)
            metrics.observe_decision(decision)
        except (codec.DecodeError, DomainError, InvalidInputRecord) as error:
            await self._dead_letter(record, error)
            return None
        except Exception as error:  # noqa: BLE001 - a bug must not make Faust skip the input silently
            logger.error("input %s[%d]@%d could not be applied:\n%s", record.topic, record.partition,
                         record.offset, traceback.format_exc())
            await self._dead_letter(record, error)
            return None

        outputs = [(self.topics.commands, serde.encode_command(command)) for command in decision.commands]
        position = decision.state.position
        if decision.position_changed and position is not None:
            outputs.append((self.topics.updates, serde.encode_position_update(key, record.offset, position)))
        if decision.audit is not None:
            outputs.append((self.topics.updates, serde.encode_audit_update(decision.audit)))
        await self._send_durably(record.key, outputs)
        if decision.state is not state:
            self.store(record.key, serde.key_state_to_record(decision.state))
        self.applied_inputs += 1
        return decision

    def _decode(self, record: ConsumedRecord) -> tuple[str, InputEvent]:
        if record.key is None:
            raise InvalidInputRecord("record has no key; inputs are keyed by SYMBOL@exchange")
        if record.value is None:
            raise InvalidInputRecord("record has no value")
        try:
            key = record.key.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInputRecord(f"key is not UTF-8: {record.key[:64]!r}") from error
        event = serde.decode_input(record.value)
        if event.key != key:
            raise InvalidInputRecord(f"record key {key!r} differs from the input's own key {event.key!r}")
        return key, event

    async def _send_durably(self, key: bytes, outputs: list[tuple[str, bytes]]) -> None:
        """Sends every output and waits for Kafka's acknowledgement, retrying until it comes.

        Only what Kafka did not acknowledge is sent again: an output acknowledged in an
        attempt that failed for another one is never repeated, so a partial failure puts no
        second PlaceEntry on position-commands. (An output Kafka wrote but whose
        acknowledgement was lost can still appear twice; the executor looks an order up by
        its client id before placing it, so that changes nothing at the exchange.)
        """
        unacknowledged = list(range(len(outputs)))
        attempt = 0
        while unacknowledged:
            failed: list[int] = []
            errors: list[BaseException] = []
            handed: list[tuple[int, Any]] = []
            for index in unacknowledged:
                topic, value = outputs[index]
                try:
                    handed.append((index, await self.send(topic, key, value)))
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - not handed to the producer: send it again
                    failed.append(index)
                    errors.append(error)
            for index, acknowledgement in handed:
                try:
                    await acknowledgement
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - Kafka unreachable: wait, never skip the input
                    failed.append(index)
                    errors.append(error)
            unacknowledged = sorted(failed)
            if unacknowledged:
                delay = SEND_RETRY_BACKOFF_S[min(attempt, len(SEND_RETRY_BACKOFF_S) - 1)]
                logger.warning("%d of %d outputs not acknowledged (%s); sending those again in %.1fs",
                               len(unacknowledged), len(outputs), errors[0], delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def _dead_letter(self, record: ConsumedRecord, error: BaseException) -> None:
        letter = serde.DeadLetter(
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            key=record.key,
            value=record.value,
            error_type=type(error).__name__,
            reason=str(error) or type(error).__name__,
            ts=record.timestamp_ms,
        )
        logger.warning("dead letter from %s[%d]@%d: %s: %s", record.topic, record.partition, record.offset,
                       letter.error_type, letter.reason)
        await self._send_durably(record.key or b"", [(self.topics.dead_letters, serde.encode_dead_letter(letter))])
        self.dead_letters += 1
        metrics.observe_dead_letter("agent", letter.error_type)


class InvalidInputRecord(ValueError):
    """A record on ``position-inputs`` that is not an input at all (no key, wrong key, no value)."""


def due_deadlines(states: list[dict], now_ms: int) -> list[InputEvent]:
    """Deadline inputs for every in-flight position whose deadline has passed."""
    events = []
    for record in states:
        position = record.get("position")
        if not position or position.get("deadline_at") is None:
            continue
        status = Status(position["status"])
        if not status.is_in_flight or position["deadline_at"] > now_ms:
            continue
        deadline = Deadline(position_id=position["id"], status=status, due_at=position["deadline_at"], ts=now_ms)
        events.append(InputEvent(
            event_id=f"deadline:{position['id']}:{status.value}:{position['deadline_at']}",
            key=record["key"],
            ts=now_ms,
            payload=deadline,
        ))
    return events


def _add_exchange_agents(app: faust.App, settings: Settings, names: TopicNames, edge: Any, inputs_topic: Any,
                         output_topics: dict) -> None:
    commands_topic = app.topic(names.commands, key_serializer="raw", value_serializer="raw",
                               partitions=settings.topic_partitions)

    # One actor per partition (isolated_partitions): a key's commands stay in order, while
    # the keys of other partitions are carried out at the same time.
    @app.agent(commands_topic, name="execute_commands", concurrency=1, isolated_partitions=True)
    async def execute_commands(stream: faust.StreamT) -> None:
        """Carries out each command at the exchange and publishes its execution report."""
        async for event in stream.events():
            message = event.message
            try:
                command = serde.decode_command(message.value)
            except codec.DecodeError as error:
                letter = serde.DeadLetter(message.topic, message.partition, message.offset, message.key,
                                          message.value, type(error).__name__, str(error),
                                          int(message.timestamp * 1000))
                await output_topics[names.dead_letters].send(key=message.key or b"",
                                                             value=serde.encode_dead_letter(letter))
                metrics.observe_dead_letter("executor", type(error).__name__)
                continue
            await edge.ready.wait()  # extra services start after the agents
            # Carried out once even when delivered twice: the executor looks the order up by
            # its client id, and the attempt ledger tells it whether an earlier send may land.
            report = await edge.executor.execute(command)
            if report.payload.error_code is not None:
                metrics.observe_exchange_error(report.payload.error_code)
            # Acknowledged before this command's offset can be committed; retried, never raised
            # (an agent that raises makes Faust skip the event silently).
            attempt = 0
            while True:
                try:
                    await (await inputs_topic.send(key=report.key.encode(), value=serde.encode_input(report)))
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - Kafka unreachable: wait, never drop the report
                    delay = SEND_RETRY_BACKOFF_S[min(attempt, len(SEND_RETRY_BACKOFF_S) - 1)]
                    logger.warning("report for %s not acknowledged (%s); retrying in %.1fs",
                                   command.command_id, error, delay)
                    attempt += 1
                    await asyncio.sleep(delay)

    @app.timer(interval=settings.sync_interval_s, on_leader=True)
    async def poll_exchange_positions() -> None:
        """Publishes what every exchange holds (the leader only: one snapshot per key and cycle)."""
        await edge.ready.wait()
        await edge.tracked.caught_up.wait()
        await edge.poller.poll_once()


class KeyStateTable(faust.Table):
    """The ``key_to_state`` table: raw key bytes, Avro ``KeyState`` values on every path.

    faust-streaming derives a table's value serializer from ``value_type`` (a Model) only,
    and the app's table manager builds the changelog topic, with that serializer, the
    moment the table is registered. Setting the serializer on the finished table therefore
    reached the store and the changelog *writes* but not the changelog topic's schema, and
    recovery and standby replicas read the changelog with JSON: every worker whose local
    store was behind the changelog stalled in recovery ("'utf-8' codec can't decode byte
    0xc3"). Setting it here, before registration, gives the store, the changelog writes,
    recovery and standbys one codec.
    """

    #: Faust codec name of the table's values (registered by ``codec.register_faust_codecs``).
    VALUE_CODEC = "avro-key-state"

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.value_serializer = self.VALUE_CODEC


@dataclass
class Pipeline:
    """The Faust app and the parts tests and commands reach for."""

    settings: Settings
    app: faust.App
    topics: TopicNames
    key_to_state: Any
    processor: InputProcessor


def build_pipeline(settings: Settings) -> Pipeline:
    """A Faust app with the pipeline's topics, table, agent and deadline timer."""
    codec.register_faust_codecs()
    names = TopicNames.for_prefix(settings.topic_prefix)
    app = faust.App(
        settings.app_id,
        broker=settings.broker_urls,
        store=settings.table_store,
        datadir=str(settings.data_dir),
        # faust-streaming's exactly_once has open defects (#517, #323): at-least-once plus
        # idempotence in the domain (last applied offset, seen signal and report ids).
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        # Hot copies of each table partition on other workers: a failover resumes at once.
        table_standby_replicas=settings.table_standby_replicas,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=settings.commit_interval_s,
        # A crashed worker's partitions move to the others only after this long.
        broker_session_timeout=settings.session_timeout_s,
        web_enabled=False,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
    )
    inputs_topic = app.topic(names.inputs, key_serializer="raw", value_serializer="raw",
                             partitions=settings.topic_partitions)
    output_topics = {
        name: app.topic(name, key_serializer="raw", value_serializer="raw", partitions=settings.topic_partitions)
        for name in (names.commands, names.updates, names.dead_letters)
    }
    # Keys are the raw key bytes of position-inputs, so the changelog is co-partitioned with it.
    key_to_state = app.tables.add(KeyStateTable(
        app,
        name="key_to_state",
        beacon=app.tables.beacon,
        partitions=settings.topic_partitions,
        key_type=bytes,  # faust maps key_type=bytes to the "raw" serializer
    ))

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await output_topics[topic].send(key=key, value=value)

    def store(key: bytes, value: dict) -> None:
        key_to_state[key] = value  # a new value every time: in-place mutation writes no changelog

    processor = InputProcessor(settings=settings, topics=names, send=send, load=key_to_state.get, store=store)

    # concurrency=1: more reorders a key's events, forbids table writes and can lose offsets
    # (faust-streaming #606).
    @app.agent(inputs_topic, name="apply_inputs", concurrency=1)
    async def apply_inputs(stream: faust.StreamT) -> None:
        """Applies every input of the partition, in offset order, to its key's state."""
        async for event in stream.events():
            message = event.message
            await processor.apply(ConsumedRecord(
                topic=message.topic, partition=message.partition, offset=message.offset,
                key=message.key, value=message.value, timestamp_ms=int(message.timestamp * 1000),
            ))

    edge = None
    if settings.exchange_edge_enabled:
        from streams.exchange.edge import ExchangeEdge

        async def publish_input(event: InputEvent) -> None:
            await inputs_topic.send(key=event.key.encode(), value=serde.encode_input(event))

        edge = ExchangeEdge(settings, key_to_state.changelog_topic.get_topic_name(), publish_input)

        @app.task
        async def start_exchange_edge() -> None:
            """Starts the edge with the worker; the app stops it on shutdown."""
            await app.add_runtime_dependency(edge)
        _add_exchange_agents(app, settings, names, edge, inputs_topic, output_topics)

    @app.timer(interval=settings.deadline_scan_interval_s)
    async def emit_due_deadlines() -> None:
        """Publishes a deadline input for every local in-flight position past its deadline."""
        now_ms = int(time.time() * 1000)  # the clock lives here, at the edge, never in decide()
        for event in due_deadlines(list(key_to_state.values()), now_ms):
            await inputs_topic.send(key=event.key.encode(), value=serde.encode_input(event))

    _add_replay_command(app, settings)
    register_web(app, settings, key_to_state)  # positions views, HTML page, /metrics, /health, /ready

    return Pipeline(settings=settings, app=app, topics=names, key_to_state=key_to_state, processor=processor)


def _add_replay_command(app: faust.App, settings: Settings) -> None:
    from faust.cli import option

    @app.command(
        option("--from-offset", type=int, default=None,
               help="Replay every partition from this offset (default: the log start)."),
        option("--from-timestamp", type=int, default=None,
               help="Replay from the first input at or after this epoch-ms time."),
        option("--truncate-sink", is_flag=True, default=False,
               help="Empty monitoring.positions and monitoring.position_events before re-driving the sink."),
        option("--force", is_flag=True, default=False,
               help="Skip the check that no worker of the group is running."),
        option("--no-progress", is_flag=True, default=False, help="No progress bar."),
    )
    async def replay(self: Any, from_offset: int | None, from_timestamp: int | None, truncate_sink: bool,
                     force: bool, no_progress: bool) -> None:
        """Rebuild the table from position-inputs and re-drive the sink (stop the workers first)."""
        from streams.replay import ReplayRefused
        from streams.replay import replay as run_replay

        try:
            summary = await run_replay(settings, from_offset=from_offset, from_timestamp_ms=from_timestamp,
                                       truncate_sink=truncate_sink, force=force, progress=not no_progress)
        except ReplayRefused as refusal:
            raise SystemExit(f"replay refused: {refusal}") from None
        self.say(summary.render())


__all__ = ["ConsumedRecord", "InputProcessor", "InvalidInputRecord", "KeyStateTable", "Pipeline", "build_pipeline", "due_deadlines"]

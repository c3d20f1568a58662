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
import dataclasses
import functools
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust

from streams.wire import codec, serde
from streams.wire.faust_codecs import register_faust_codecs
from streams.domain import (
    AppliedInput,
    Deadline,
    Decision,
    DomainError,
    InputEvent,
    KeyState,
    Policy,
    Status,
    decide,
)
from streams.gaps import AppliedOffsets, LogRangeReader, applied_through
from streams.settings import Settings
from streams.topics import TopicNames
from streams.web import metrics, register_web
from streams.web.routing import partition_for_key

logger = logging.getLogger(__name__)

SEND_RETRY_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
#: Decoded states the agent keeps between runs (cleared, not evicted one by one, past this).
KNOWN_STATES = 100_000


@dataclass(frozen=True)
class ConsumedRecord:
    """The parts of a consumed Kafka record the processor needs (no Faust types below here)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


Headers = list[tuple[str, bytes]]
Send = Callable[[str, bytes, bytes, Headers], Awaitable[Any]]


@dataclass(frozen=True)
class Output:
    """One record the agent sends for an input: its topic, key, value and input headers."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers

#: Kafka headers on every output of an input: which input it was decided for, so a decision
#: diff (``streams diff``) can put each recorded command beside the input that produced it.
INPUT_PARTITION_HEADER = "pipeline-input-partition"
INPUT_OFFSET_HEADER = "pipeline-input-offset"


def input_headers(partition: int, offset: int) -> Headers:
    """The headers naming the input ``partition``/``offset`` an output was decided for."""
    return [(INPUT_PARTITION_HEADER, str(partition).encode()), (INPUT_OFFSET_HEADER, str(offset).encode())]


def input_of(headers: Any) -> tuple[int, int] | None:
    """``(partition, offset)`` of the input an output record was decided for; None without the headers."""
    found = {name: value for name, value in (headers or ())}
    try:
        return int(found[INPUT_PARTITION_HEADER]), int(found[INPUT_OFFSET_HEADER])
    except (KeyError, ValueError):
        return None


@dataclass
class InputProcessor:
    """Applies one consumed input to its key's state: decode, decide, send, then store.

    ``send(topic, key, value, headers)`` returns an awaitable that resolves once Kafka has
    the record; ``load``/``store`` read and write the key's state (the caller's table). Kept free of Faust
    so the control flow is testable with plain callables.

    Each input is decided with the policy recorded in it (its producer's), or, for inputs
    written before policies were recorded, with the settings' policy; ``policy_overrides``
    (field -> value) change those fields on top (a decision diff trying another policy).
    """

    settings: Settings
    topics: TopicNames
    send: Send
    load: Callable[[bytes], KeyState | None]
    store: Callable[[bytes, KeyState], None]
    policy_overrides: Mapping[str, Any] | None = None
    applied_inputs: int = 0
    dead_letters: int = 0
    _default_policy: Policy = field(init=False)
    _overridden: dict[Policy, Policy] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._default_policy = self.settings.policy()

    def policy_for(self, event: InputEvent) -> Policy:
        """The policy ``event`` is decided with (see the class docstring)."""
        recorded = event.policy or self._default_policy
        if not self.policy_overrides:
            return recorded
        overridden = self._overridden.get(recorded)
        if overridden is None:
            overridden = self._overridden[recorded] = dataclasses.replace(recorded, **self.policy_overrides)
        return overridden

    async def apply(self, record: ConsumedRecord) -> Decision | None:
        """Applies one record; returns the decision, or None when it went to the dead letters."""
        return (await self.apply_batch([record]))[0]

    async def apply_batch(self, records: Sequence[ConsumedRecord], known: dict[bytes, KeyState | None] | None = None,
                          enter_partition: Callable[[int], None] | None = None) -> list[Decision | None]:
        """Applies a run of records in order; one decision (or None: a dead letter) per record.

        Each record is decided against the state the records before it produced (an
        in-memory overlay of the table), then every output of the run is sent and awaited
        together, and only then are the states stored. The crash rule is the one of a single
        input: no state is stored, and (the caller acks after this returns) no offset is
        committed, before Kafka has acknowledged the outputs that state implies. A crash in
        between replays the run: the same decisions, the same client order ids.

        ``known`` (optional) are decoded states the caller keeps from run to run, the one
        writer of those keys: a key found there is not read back from the table and decoded
        again. They become the run's overlay; the caller drops them if this raises.
        ``enter_partition(p)`` is called before the table is read or written for a key of
        partition ``p`` (Faust's table works on the current event's partition).
        """
        overlay: dict[bytes, KeyState | None] = {} if known is None else known
        to_store: dict[bytes, tuple[int, KeyState]] = {}
        outputs: list[Output] = []
        decisions: list[Decision | None] = []
        for record in records:
            if enter_partition is not None and record.key not in overlay:
                enter_partition(record.partition)
            decision = self._decide(record, overlay, to_store, outputs)
            decisions.append(decision)
        await self._send_durably(outputs)
        for key, (partition, state) in to_store.items():
            if enter_partition is not None:
                enter_partition(partition)
            self.store(key, state)
        self.applied_inputs += sum(1 for decision in decisions if decision is not None)
        return decisions

    def _decide(self, record: ConsumedRecord, overlay: dict[bytes, KeyState | None],
                to_store: dict[bytes, tuple[int, KeyState]], outputs: list[Output]) -> Decision | None:
        headers = input_headers(record.partition, record.offset)
        try:
            key, event = self._decode(record)
            # An input's time is the log's: the broker stamps position-inputs records as they
            # are appended (LogAppendTime), one clock for every producer whatever its host's,
            # kept with the record so a replay decides at the same times.
            event = dataclasses.replace(event, ts=record.timestamp_ms)
            state = overlay[record.key] if record.key in overlay else self.load(record.key)
            decision = decide(state, AppliedInput(record.offset, event), self.policy_for(event))
            metrics.observe_input(event)
            metrics.observe_decision(decision)
            encoded = [(self.topics.commands, serde.encode_command(command)) for command in decision.commands]
            position = decision.state.position
            if decision.position_changed and position is not None:
                encoded.append((self.topics.updates, serde.encode_position_update(key, record.offset, position)))
            if decision.audit is not None:
                encoded.append((self.topics.updates, serde.encode_audit_update(decision.audit)))
        except (codec.DecodeError, DomainError, InvalidInputRecord) as error:
            outputs.append(self._dead_letter(record, error, headers))
            return None
        except Exception as error:  # noqa: BLE001 - a bug must not make Faust skip the input silently
            logger.error("input %s[%d]@%d could not be applied:\n%s", record.topic, record.partition,
                         record.offset, traceback.format_exc())
            outputs.append(self._dead_letter(record, error, headers))
            return None
        outputs.extend(Output(topic, record.key, value, headers) for topic, value in encoded)
        redelivered = state is not None and record.offset <= state.last_offset
        if decision.state is not state or redelivered:
            # A redelivered input changes nothing, but its state is written again: a kill
            # between the local store write and the changelog flush left the changelog (and
            # so the standbys and the next owner) without it; rewriting converges them.
            overlay[record.key] = decision.state
            to_store[record.key] = (record.partition, decision.state)
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

    async def _send_durably(self, outputs: list[Output]) -> None:
        """Sends every output and waits for Kafka's acknowledgements, retrying until all came.

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
                output = outputs[index]
                try:
                    handed.append((index, await self.send(output.topic, output.key, output.value, output.headers)))
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

    def _dead_letter(self, record: ConsumedRecord, error: BaseException, headers: Headers) -> Output:
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
        self.dead_letters += 1
        metrics.observe_dead_letter("agent", letter.error_type)
        return Output(self.topics.dead_letters, record.key or b"", serde.encode_dead_letter(letter), headers)


class InvalidInputRecord(ValueError):
    """A record on ``position-inputs`` that is not an input at all (no key, wrong key, no value)."""


def with_policy(event: InputEvent, settings: Settings) -> InputEvent:
    """``event`` carrying the policy of this process: the state machine decides it with that, in any replay."""
    return dataclasses.replace(event, policy=settings.policy())


class DeadlineIndex:
    """The in-flight deadlines of this worker's keys, kept beside the table as states are stored.

    The timer asks it every ``PIPELINE_DEADLINE_SCAN_INTERVAL_S`` instead of decoding the
    whole table (100,000 keys would cost seconds per scan). It is rebuilt from the table
    once whenever the worker's partitions change, since another worker wrote them meanwhile.
    """

    def __init__(self) -> None:
        self._due: dict[str, tuple[int, str, Status]] = {}  # key -> (deadline_at, position id, status)
        self.partitions: frozenset[int] | None = None

    def note(self, record: dict) -> None:
        """Takes a stored ``KeyState`` record: its deadline if it has one in flight, else none."""
        position = record.get("position")
        key = record["key"]
        if position and position.get("deadline_at") is not None and Status(position["status"]).is_in_flight:
            self._due[key] = (position["deadline_at"], position["id"], Status(position["status"]))
        else:
            self._due.pop(key, None)

    def rebuild(self, records: list[dict], partitions: frozenset[int]) -> None:
        """Starts over from ``records`` (the table of ``partitions``)."""
        self._due.clear()
        for record in records:
            self.note(record)
        self.partitions = partitions

    def due(self, now_ms: int) -> list[InputEvent]:
        """A deadline input for every position whose deadline has passed."""
        return [InputEvent(event_id=f"deadline:{position_id}:{status.value}:{deadline_at}", key=key, ts=now_ms,
                           payload=Deadline(position_id=position_id, status=status, due_at=deadline_at, ts=now_ms))
                for key, (deadline_at, position_id, status) in self._due.items() if deadline_at <= now_ms]


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
                    await (await inputs_topic.send(key=report.key.encode(),
                                                   value=serde.encode_input(with_policy(report, settings))))
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

    #: Faust codec name of the table's values (registered by ``register_faust_codecs``).
    VALUE_CODEC = "avro-key-state"

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.value_serializer = self.VALUE_CODEC


def active_partitions(app: faust.App, changelog_topic: str) -> frozenset[int]:
    """The table partitions this worker owns as active (standby copies excluded)."""
    return frozenset(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog_topic)


async def _count_restored_record(app: faust.App, event: Any) -> None:
    """Counts a changelog record read into the local store, as an active or a standby replica.

    Active restores are the cost of a takeover; with standby replicas the new owner has
    already read its partitions as a standby, so a failover adds (almost) no active ones.
    """
    replica = "active" if event.message.tp in app.tables.recovery.active_tps else "standby"
    metrics.observe_restored_record(replica)


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
    register_faust_codecs()
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
        # A crashed worker's partitions move to the others only after this long (the bulk
        # of a failover: standby replicas make the recovery after it near-instant).
        broker_session_timeout=settings.session_timeout_s,
        # Kafka's rule of thumb: at most a third of the session, so one lost heartbeat is no failover.
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
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
        on_changelog_event=functools.partial(_count_restored_record, app),
    ))

    async def send(topic: str, key: bytes, value: bytes, headers: Headers) -> Any:
        # Straight to the app's producer (same connection, acks and idempotence): Faust's
        # Topic.send wraps each record in futures and callbacks that halve the agent's rate.
        # The key's partition is the Java client's murmur2 of the raw bytes, as for the inputs.
        return await app.producer.send(topic, key, value, None, None, headers)

    deadlines = DeadlineIndex()

    def load(key: bytes) -> KeyState | None:
        record = key_to_state.get(key)
        return serde.key_state_from_record(record) if record is not None else None

    def store(key: bytes, state: KeyState) -> None:
        record = serde.key_state_to_record(state)
        key_to_state[key] = record  # a new value every time: in-place mutation writes no changelog
        deadlines.note(record)

    processor = InputProcessor(settings=settings, topics=names, send=send, load=load, store=store)

    # One actor for all of the worker's partitions, each partition's inputs in offset order.
    # concurrency=1: more reorders a key's events, forbids table writes and can lose offsets
    # (faust-streaming #606). Inputs are applied one at a time: take_events batching lost
    # inputs across rebalances (events skipped for a stale generation are acked) and, with
    # isolated_partitions, a revoked actor's cancellation counted as a crash (three stop the worker).
    known: dict[bytes, KeyState | None] = {}
    changelog_name = key_to_state.changelog_topic.get_topic_name()

    def table_applied_through() -> dict[int, int]:
        owned = active_partitions(app, changelog_name)
        return applied_through(
            (partition, record["last_offset"]) for partition, record in (
                (partition_for_key(key, settings.topic_partitions), record) for key, record in list(key_to_state.items()))
            if partition in owned)

    applied = AppliedOffsets(table_applied_through)
    log_reader = LogRangeReader(settings.kafka_bootstrap_servers, names.inputs)

    @app.on_partitions_revoked.connect
    async def forget_known_states(app: faust.App, revoked: set, **kwargs: Any) -> None:
        """A revoked partition may be written by another worker before it comes back: read the table afresh."""
        known.clear()
        applied.forget()

    async def apply_records(records: Sequence[ConsumedRecord]) -> None:
        if len(known) > KNOWN_STATES:
            known.clear()
        try:
            await processor.apply_batch(records, known)
        except BaseException:
            known.clear()  # a state decided but maybe not stored: read the table again
            raise
        applied.applied(records[-1].partition, records[-1].offset)

    async def fill_hole(tp: Any, start: int, end: int) -> None:
        # Faust went past inputs the agent never applied (see streams.gaps): read them from the log.
        logger.warning("position-inputs[%d]: offsets %d..%d were never applied; reading them from the log",
                       tp.partition, start, end - 1)
        metrics.observe_input_gap(end - start)
        async for records in log_reader.read(tp.partition, start, end):
            await apply_records([ConsumedRecord(
                topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
                value=record.value, timestamp_ms=record.timestamp) for record in records])

    @app.agent(inputs_topic, name="apply_inputs", concurrency=1)
    async def apply_inputs(stream: faust.StreamT) -> None:
        """Applies every input of the worker's partitions, each partition in offset order, none skipped."""
        # noack: an event is acked here, once applied (its outputs acknowledged, its state stored).
        async for event in stream.noack().events():
            message = event.message
            if message.tp not in app.consumer.assignment():
                continue  # fetched before a rebalance took the partition away: its new owner applies it
            hole = applied.hole_before(message.partition, message.offset)
            if hole is not None:
                await fill_hole(message.tp, *hole)
            await apply_records([ConsumedRecord(
                topic=message.topic, partition=message.partition, offset=message.offset,
                key=message.key, value=message.value, timestamp_ms=int(message.timestamp * 1000),
            )])
            await stream.ack(event)

    edge = None
    if settings.exchange_edge_enabled:
        from streams.exchange.edge import ExchangeEdge

        async def publish_input(event: InputEvent) -> None:
            await inputs_topic.send(key=event.key.encode(), value=serde.encode_input(with_policy(event, settings)))

        edge = ExchangeEdge(settings, key_to_state.changelog_topic.get_topic_name(), publish_input)

        @app.task
        async def start_exchange_edge() -> None:
            """Starts the edge with the worker; the app stops it on shutdown."""
            await app.add_runtime_dependency(edge)
        _add_exchange_agents(app, settings, names, edge, inputs_topic, output_topics)

    @app.timer(interval=settings.deadline_scan_interval_s)
    async def emit_due_deadlines() -> None:
        """Publishes a deadline input for every in-flight position of this worker's partitions past its deadline."""
        now_ms = int(time.time() * 1000)  # the clock lives here, at the edge, never in decide()
        owned = active_partitions(app, key_to_state.changelog_topic.get_topic_name())
        if owned != deadlines.partitions:
            if app.rebalancing or not app.tables.recovery.completed.is_set():
                return  # the table of the new assignment is not there yet
            # Standby copies are another worker's to time out (a memory store iterates them too).
            deadlines.rebuild([record for key, record in list(key_to_state.items())
                               if partition_for_key(key, settings.topic_partitions) in owned], owned)
        for event in deadlines.due(now_ms):
            if partition_for_key(event.key.encode(), settings.topic_partitions) in owned:
                await inputs_topic.send(key=event.key.encode(), value=serde.encode_input(with_policy(event, settings)))

    _add_replay_command(app, settings)
    _add_diff_command(app, settings)
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
        option("--allow-partial", is_flag=True, default=False,
               help="Allow --truncate-sink when the replay does not start at offset 0 of the log."),
        option("--no-progress", is_flag=True, default=False, help="No progress bar."),
    )
    async def replay(self: Any, from_offset: int | None, from_timestamp: int | None, truncate_sink: bool,
                     force: bool, allow_partial: bool, no_progress: bool) -> None:
        """Rebuild the table from position-inputs and re-drive the sink (stop the workers first)."""
        from streams.replay import ReplayRefused
        from streams.replay import replay as run_replay

        try:
            summary = await run_replay(settings, from_offset=from_offset, from_timestamp_ms=from_timestamp,
                                       truncate_sink=truncate_sink, force=force, progress=not no_progress,
                                       allow_partial_truncate=allow_partial)
        except ReplayRefused as refusal:
            raise SystemExit(f"replay refused: {refusal}") from None
        self.say(summary.render())


def _add_diff_command(app: faust.App, settings: Settings) -> None:
    from faust.cli import option

    @app.command(
        option("--from-offset", type=int, default=0, help="Compare inputs from this offset of each partition."),
        option("--to-offset", type=int, default=None, help="Compare inputs up to this offset (inclusive)."),
        option("--policy", "policy_file", type=str, default=None,
               help="JSON file of policy fields to change in the policy recorded in each input."),
        option("--set", "assignments", multiple=True, default=(),
               help="Policy field to change, FIELD=VALUE (repeatable), e.g. --set default_stop_loss_pct=3."),
        option("--json", "json_file", type=str, default=None, help="Also write every difference to this JSON file."),
        option("--no-progress", is_flag=True, default=False, help="No progress bar."),
    )
    async def diff(self: Any, from_offset: int, to_offset: int | None, policy_file: str | None,
                   assignments: tuple[str, ...], json_file: str | None, no_progress: bool) -> None:
        """Replay the recorded inputs through this code and policy; list every decision that differs (exit 1 if any)."""
        from pathlib import Path

        from streams.diff import DiffError, diff_decisions, load_policy_file, policy_overrides, write_json

        try:
            overrides = load_policy_file(Path(policy_file)) if policy_file else {}
            for assignment in assignments:
                name, equals, value = assignment.partition("=")
                if not equals:
                    raise DiffError(f"--set takes FIELD=VALUE, got {assignment!r}")
                overrides[name.strip()] = value.strip()
            typed = policy_overrides(settings.policy(), overrides)
            result = await diff_decisions(settings, overrides=typed, from_offset=from_offset, to_offset=to_offset,
                                          progress=not no_progress)
        except DiffError as error:
            print(f"diff: {error}", file=sys.stderr)
            raise SystemExit(2) from None  # 1 means "decisions differ": a deploy gate must tell them apart
        if json_file:
            write_json(result, Path(json_file))
        self.say(result.render())
        if result.differences:
            raise SystemExit(1)


__all__ = ["INPUT_OFFSET_HEADER", "INPUT_PARTITION_HEADER", "ConsumedRecord", "DeadlineIndex", "InputProcessor", "InvalidInputRecord", "KeyStateTable", "with_policy", "Pipeline", "build_pipeline",
           "input_headers", "input_of"]

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
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from streams.wire import codec, serde
from streams.wire.faust_codecs import register_faust_codecs
from streams.wire.key_state_bytes import PositionBytes
from streams.domain import InputEvent, KeyState
from streams.worker.batch_send import BatchSender
from streams.worker.command_agents import add_exchange_agents
from streams.worker.deadlines import DeadlineIndex
from streams.worker.in_flight import InFlightInput, InFlightInputs
from streams.worker.processor import KNOWN_STATES, ConsumedRecord, DecidedRun, InputProcessor, latest_states, \
    with_policy
from streams.worker.state_store import StateStore
from streams.worker.gaps import AppliedOffsets, LogRangeReader, applied_through, note_durable
from streams.worker.input_watch import CHECK_EVERY_S, InputWatch
from streams.worker.faust_consumer import (
    RawRecords,
    active_partitions,
    commit_each_offset_once,
    committed_on_broker,
    consume_on_the_worker_loop,
    hand_records_over_inline,
    note_done_before,
    owned_by_generation,
    release_unowned,
)
from streams.worker.gathered_run import MAX_GATHER_S, GatheredRun, HandOverOnRebalance, RecordsAhead
from streams.settings import Settings
from streams.topics import TopicNames
from streams.telemetry import metrics
from streams.telemetry.task_dump import install_task_dump
from streams.web.faust_hooks import register_web
from streams.web.routing import partition_for_key

logger = logging.getLogger(__name__)

#: Table records the deadline index's rebuild decodes between two turns of the event loop.
REBUILD_STEP = 500
#: Seconds between two writes of the acknowledged changelog offsets (``StateStore.persist_offsets``).
PERSIST_OFFSETS_EVERY_S = 1.0
#: Inputs the agent decides as one run at most (those Faust has fetched already; see ``apply_inputs``).
MAX_RUN = 500
#: Events Faust may hold fetched for the agent (faust's ``stream_buffer_maxsize``, default 4,096).
#: Faust's fetcher waits while the queue is full, so a larger one keeps more fetched while the
#: agent decides a run. Quick e2e on one broker (1,000 keys, 54,000 and 72,000
#: inputs), alternating: 4,096 did 3,267/3,842/3,689/3,564/3,979 inputs/s, 16,384 did
#: 3,586/4,555/3,989/4,874/4,037 (higher in every pair). It costs at most this many fetched
#: records in memory (an input is about 130 bytes), and a revocation drops more of them for the
#: next owner to fetch again (never acked, so none is lost).
STREAM_BUFFER_EVENTS = 16_384


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


def scan_table(table: Any, from_bytes: Callable[[bytes], Any], from_record: Callable[[dict], Any],
               wanted: Callable[[bytes], bool] | None = None) -> Iterator[tuple[bytes, Any]]:
    """``(key, value read)`` of the table's keys this worker holds, each value read only as iterated.

    A rocksdb store (the deployed one) is iterated raw, its active partitions only, and each
    value given to ``from_bytes`` as stored (a caller needing one field reads only that);
    another store is iterated as a table, its decoded values given to ``from_record``.
    """
    store = table.data
    if hasattr(store, "_dbs_for_actives"):  # faust-streaming 0.15.3's rocksdb Store (pinned)
        items, read = list(store._iteritems()), from_bytes
    else:
        items, read = list(table.items()), from_record
    for key, value in items:
        if wanted is None or wanted(key):
            yield key, read(value)


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
        producer_linger=settings.producer_linger_ms / 1000,
        broker_commit_interval=settings.commit_interval_s,
        # A crashed worker's partitions move to the others only after this long (the bulk
        # of a failover: standby replicas make the recovery after it near-instant).
        broker_session_timeout=settings.session_timeout_s,
        # Kafka's rule of thumb: at most a third of the session, so one lost heartbeat is no failover.
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        stream_buffer_maxsize=STREAM_BUFFER_EVENTS,
        web_enabled=False,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
    )
    # aiokafka's consumer on the worker's loop, not in Faust's consumer thread (lower latency; see there).
    consume_on_the_worker_loop(app)
    # The agent reads each record's bytes itself (RawRecords: Faust decodes nothing).
    inputs_topic = app.topic(names.inputs, schema=RawRecords(), partitions=settings.topic_partitions)
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

    deadlines = DeadlineIndex()
    # A run's outputs, and the changelog records of its states, go as one record batch per
    # topic partition (streams.worker.batch_send) straight to the app's producer (its
    # connection, acks=all and idempotence; Faust's Topic.send wraps each record in futures and
    # callbacks), faust-streaming 0.15.3's aiokafka producer.
    batches = BatchSender(lambda: app.producer._ensure_producer())
    # A changed position's Avro body is encoded once, for its update and for the key's state.
    positions = PositionBytes()
    states = StateStore(key_to_state, batches.send_all, deadlines.note_state, positions)
    # The worker writes the states itself (StateStore), a batch at a time: the processor has no store.
    processor = InputProcessor(settings=settings, topics=names, send=None, load=states.load, store=None,
                               send_all=batches.send_all, encode_position_update=positions.update)

    # One actor for all of the worker's partitions, each partition's inputs in offset order.
    # concurrency=1: more reorders a key's events, forbids table writes and can lose offsets
    # (faust-streaming #606). Not take_events: it acks a batch's events when its generator is
    # closed, processed or not; and with isolated_partitions a revoked actor's cancellation
    # counted as a crash (three stop the worker). The agent gathers the inputs Faust has
    # already fetched into a run, decides it and hands its outputs over; the run is made
    # durable in the background, in order (streams.worker.in_flight).
    known: dict[bytes, KeyState | None] = {}
    changelog_name = key_to_state.changelog_topic.get_topic_name()

    def table_applied_through() -> dict[int, int]:
        owned = active_partitions(app, changelog_name)
        return applied_through(
            (partition, last_offset) for partition, last_offset in (
                (partition_for_key(key, settings.topic_partitions), last_offset)
                for key, last_offset in scan_table(key_to_state, serde.key_state_last_offset,
                                                   lambda record: record["last_offset"]))
            if partition in owned)

    applied = AppliedOffsets(table_applied_through)

    async def store(runs: list[DecidedRun]) -> None:
        # The runs' outputs are acknowledged: each key's latest state is written once.
        await states.write(latest_states(runs))
        processor.count_applied(runs)

    # Per partition, the offset after the last durable, acked input: all before it are applied.
    durable_next: dict[int, int] = {}

    async def store_and_ack(items: list[InFlightInput]) -> None:
        await store([item.run for item in items])
        for item in items:
            await item.ack()
            note_durable(durable_next, (event.message for event in item.events))

    def nothing_fetched_or_gathered() -> bool:
        return all(queue.empty() for queue in agent_queue) and not len(gathered)

    def more_coming() -> bool:
        # Inputs fetched, gathered, or reported by Kafka beyond the last delivered: a backlog,
        # so the completer stores several runs together (streams.worker.in_flight). Never while
        # a rebalance waits for every event to be acked.
        if app.rebalancing:
            return False
        return not nothing_fetched_or_gathered() or records_ahead.expected()

    in_flight = InFlightInputs(processor, store_and_ack, more_coming=more_coming)
    log_reader = LogRangeReader(settings.kafka_bootstrap_servers, names.inputs)

    @app.on_partitions_revoked.connect
    async def forget_known_states(app: faust.App, revoked: set, **kwargs: Any) -> None:
        """A revoked partition may be written by another worker before it comes back: read the table afresh."""
        await in_flight.drain()  # Faust waited for every event's ack; nothing decided stays unstored
        known.clear()
        applied.forget()
        durable_next.clear()
        watch.forget()
        records_ahead.forget()
        # Where the next recovery of these partitions starts (here or, later, as a standby).
        await app.producer.flush()
        states.persist_offsets()

    @app.timer(interval=PERSIST_OFFSETS_EVERY_S)
    async def persist_changelog_offsets() -> None:
        """Writes the changelog offsets acknowledged since the last time (a restart recovers from them)."""
        states.persist_offsets()

    async def bound_known_states() -> None:
        if len(known) > KNOWN_STATES:
            await in_flight.drain()  # the states only it holds are stored before it is dropped
            known.clear()

    async def apply_records(records: Sequence[ConsumedRecord]) -> None:
        await in_flight.drain()  # what it reads from the table must be stored first
        await bound_known_states()
        try:
            run = processor.decide_run(records, known)
            await processor.acknowledged(run, await processor.hand_over(run))
            await store([run])
        except BaseException:
            known.clear()  # a state decided but maybe not stored: read the table again
            raise
        applied.applied(records[-1].partition, records[-1].offset)

    async def apply_from_log(tp: Any, start: int, end: int) -> None:
        """Applies offsets ``start`` to ``end - 1`` of ``tp``, read from the log."""
        metrics.observe_input_gap(end - start)
        async for records in log_reader.read(tp.partition, start, end):
            await apply_records([ConsumedRecord(
                topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
                value=record.value, timestamp_ms=record.timestamp) for record in records])

    async def fill_hole(tp: Any, start: int, end: int) -> None:
        # Faust went past inputs the agent never applied (see streams.worker.gaps): read them from the log.
        logger.warning("position-inputs[%d]: offsets %d..%d were never applied; reading them from the log",
                       tp.partition, start, end - 1)
        await apply_from_log(tp, start, end)
        await note_done_before(app, tp, end)  # Faust never handed them out (see streams.worker.faust_consumer)

    # The agent and the watch apply inputs one at a time, each partition in offset order.
    serial = asyncio.Lock()

    def idle() -> bool:
        # Nothing fetched, gathered or in flight waits for the agent.
        return nothing_fetched_or_gathered() and not in_flight.pending

    def describe_agent() -> str:
        fetched = sum(queue.qsize() for queue in agent_queue)
        return (f"{fetched} fetched waiting, {len(gathered)} gathered, {in_flight.pending} runs in flight, "
                f"{'holding' if serial.locked() else 'not holding'} its lock")

    watch = InputWatch(app, names.inputs, changelog_name, applied, durable_next, serial, idle, fill_hole,
                       apply_from_log, settings.commit_interval_s, describe_agent,
                       committed_on_broker=lambda tps: committed_on_broker(app, tps))

    @app.timer(interval=CHECK_EVERY_S)
    async def apply_skipped_inputs() -> None:
        """Applies inputs Faust went past or never delivered, and unsticks stalled commits (streams.worker.input_watch)."""
        try:
            await watch.check_within()
        except Exception:  # noqa: BLE001 - an exception in a Faust timer crashes the whole worker
            # A hole half filled is seen again at a later check; its states were read again.
            logger.exception("looking for skipped inputs failed; looking again in %.0fs", CHECK_EVERY_S)

    async def hand_over_run(events: list[Any], ack: Callable[[Any], Awaitable[Any]]) -> None:
        """Decides ``events`` (in order) and hands their outputs over; the completer makes them durable."""
        if not events:
            return
        await bound_known_states()
        run = processor.decide_run([ConsumedRecord(
            topic=message.topic, partition=message.partition, offset=message.offset,
            key=message.key, value=message.value, timestamp_ms=int(message.timestamp * 1000),
        ) for message in (event.message for event in events)], known)
        handover = await processor.hand_over(run)

        async def ack_all() -> None:
            for event in events:
                await ack(event)

        await in_flight.add(InFlightInput(run, handover, events, ack_all))

    async def apply_events(events: list[Any], ack: Callable[[Any], Awaitable[Any]]) -> None:
        """Applies a run of events in order, filling first any hole a partition shows before one of them."""
        first = 0
        for index, event in enumerate(events):
            message = event.message
            first_of_partition = applied.first_since_recovered(message.partition)
            hole = applied.hole_before(message.partition, message.offset)
            if hole is not None:
                await hand_over_run(events[first:index], ack)  # decided before the hole's inputs are read
                first = index
                await fill_hole(message.tp, *hole)
            elif first_of_partition:  # Faust's committed offset may lag behind the table's
                await note_done_before(app, message.tp, message.offset)
            applied.applied(message.partition, message.offset)
        await hand_over_run(events[first:], ack)

    # The run the agent gathers; a rebalance hands it over too (streams.worker.gathered_run).
    gathered = GatheredRun(apply_events, serial)
    records_ahead = RecordsAhead(lambda tp: app.consumer.highwater(tp))
    agent_queue: list[Any] = []  # the agent's stream's queue, once it runs
    hand_over_on_rebalance = HandOverOnRebalance(app, gathered)
    app.sensors.add(hand_over_on_rebalance)

    @app.agent(inputs_topic, name="apply_inputs", concurrency=1)
    async def apply_inputs(stream: faust.StreamT) -> None:
        """Applies every input of the worker's partitions, each partition in offset order, none skipped.

        The inputs Faust has already fetched, and those Kafka reported as following them, form
        a run (up to ``MAX_RUN``, at most ``MAX_GATHER_S`` old; streams.worker.gathered_run):
        each is decided against the states decided before it and the run's outputs handed to the producer;
        ``InFlightInputs`` stores its states and acks its events, in order, once Kafka
        acknowledged them (see streams.worker.in_flight).
        """
        completer = asyncio.create_task(in_flight.complete_forever(), name="apply_inputs.complete")
        hand_records_over_inline(app.consumer)
        commit_each_offset_once(app.consumer)
        hand_over_on_rebalance.bind_loop(asyncio.get_running_loop())
        gathered.bind(stream.ack)
        # The queue Faust's conductor fills for this stream: while it holds more events, or the
        # partitions' high watermarks show more, the run grows; then it is applied. A
        # revocation can empty it meanwhile: HandOverOnRebalance then applies the run.
        fetched = stream.channel.queue
        agent_queue[:] = [fetched]
        owned = owned_by_generation(app)
        try:
            # noack: an event is acked by the completer, once durable (outputs acknowledged, state stored).
            async for event in stream.noack().events():
                message = event.message
                if owned(message.tp):
                    gathered.add(event)
                    records_ahead.delivered(message.tp, message.offset)
                else:
                    release_unowned(event)
                del event, message
                if not len(gathered):
                    continue
                if len(gathered) >= MAX_RUN or (fetched.empty() and not records_ahead.expected()):
                    await gathered.hand_over()
                else:
                    gathered.hand_over_within(MAX_GATHER_S)
        finally:
            # Stopping (or restarted by Faust's supervisor): what was decided but not stored is
            # dropped, never acked; the table is asked again, and those inputs come back as a hole.
            completer.cancel()
            gathered.drop()
            records_ahead.forget()
            in_flight.abandon()
            applied.forget()
            known.clear()

    edge = None
    if settings.exchange_edge_enabled:
        from streams.exchange.edge import ExchangeEdge
        from streams.worker.paper_exchange import EmbeddedEmulator

        async def publish_input(event: InputEvent) -> None:
            await inputs_topic.send(key=event.key.encode(), value=serde.encode_input(with_policy(event, settings)))

        edge = ExchangeEdge(settings, key_to_state.changelog_topic.get_topic_name(), publish_input,
                            paper_exchange=EmbeddedEmulator(settings.emulator_port))

        @app.task
        async def start_exchange_edge() -> None:
            """Starts the edge with the worker; the app stops it on shutdown."""
            await app.add_runtime_dependency(edge)
        add_exchange_agents(app, settings, names, edge, inputs_topic, output_topics)

    @app.timer(interval=settings.deadline_scan_interval_s)
    async def emit_due_deadlines() -> None:
        """Publishes a deadline input for every in-flight position of this worker's partitions past its deadline."""
        now_ms = int(time.time() * 1000)  # the clock lives here, at the edge, never in decide()
        owned = active_partitions(app, key_to_state.changelog_topic.get_topic_name())
        if owned != deadlines.partitions:
            if app.rebalancing or not app.tables.recovery.completed.is_set():
                return  # the table of the new assignment is not there yet
            # In steps, so that the agent decides meanwhile: decoding 100,000 states in one go
            # held a restarted worker's first decision back by seconds.
            deadlines.begin_rebuild()
            # Standby copies are another worker's to time out (a memory store iterates them too).
            records = scan_table(key_to_state, lambda value: codec.decode(serde.KEY_STATE_RECORD, value),
                                 lambda record: record,
                                 lambda key: partition_for_key(key, settings.topic_partitions) in owned)
            for count, (_key, record) in enumerate(records, start=1):
                deadlines.rebuild_note(record)
                if count % REBUILD_STEP == 0:
                    await asyncio.sleep(0)
                    if app.rebalancing or active_partitions(app, changelog_name) != owned:
                        deadlines.abandon_rebuild()  # the next tick starts over on the new assignment
                        return
            deadlines.finish_rebuild(owned)
        for event in deadlines.due(now_ms):
            if partition_for_key(event.key.encode(), settings.topic_partitions) in owned:
                await inputs_topic.send(key=event.key.encode(), value=serde.encode_input(with_policy(event, settings)))

    @app.task
    async def install_diagnostics() -> None:
        """``kill -USR2`` logs where every task waits (streams.telemetry.task_dump)."""
        install_task_dump(asyncio.get_running_loop(), watch.describe)

    register_web(app, settings, key_to_state)  # positions views, HTML page, /metrics, /health, /ready

    return Pipeline(settings=settings, app=app, topics=names, key_to_state=key_to_state, processor=processor)


__all__ = ["KeyStateTable", "Pipeline", "build_pipeline"]

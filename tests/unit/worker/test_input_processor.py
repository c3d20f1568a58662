"""The agent's input processor with plain callables: what it sends, and when it stores.

The seam of "kill -9 between the local store write and the changelog flush": after such a
kill the restarted worker's local store already holds the input's state, the changelog does
not, and the input is delivered again. Its decision is a no-op; the processor must still
write the state, so the changelog (standbys, the next owner) converges.

And the control flow around a partial failure: Kafka acknowledges some outputs of an input
and not others. Only the unacknowledged ones may be sent again, or a second PlaceEntry
lands on position-commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

from streams.wire import serde
from streams.edge.backoff import Backoff
from streams.worker.processor import ConsumedRecord, InputProcessor, input_of, load_from
from streams.domain import InputEvent, KeyState, PlaceEntry, Side, Signal, SignalAction
from streams.settings import Settings
from streams.topics import TopicNames

KEY = "APTUSDT@binance"
TOPICS = TopicNames.for_prefix("unit.")


def open_signal(signal_id: str, ts: int = 1_761_173_440_983) -> bytes:
    return serde.encode_input(InputEvent(
        event_id=f"signal:{signal_id}", key=KEY, ts=ts,
        payload=Signal(signal_id=signal_id, action=SignalAction.OPEN, symbol="APTUSDT", exchange="binance",
                       side=Side.BUY, quantity=Decimal("61.8"), stop_loss_pct=Decimal("2.5"), ts=ts)))


class Harness:
    """A processor over a dict table; every send is acknowledged at once and recorded."""

    def __init__(self) -> None:
        self.table: dict[bytes, KeyState] = {}
        self.stores: list[tuple[bytes, KeyState]] = []
        self.sent: list[tuple[str, bytes, bytes, list]] = []
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d"})
        self.processor = InputProcessor(settings=settings, topics=TOPICS, send=self._send, load=load_from(self.table),
                                        store=self._store)

    async def _send(self, topic: str, key: bytes, value: bytes, headers: list) -> asyncio.Future:
        self.sent.append((topic, key, value, headers))
        acknowledged = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged

    def _store(self, key: bytes, value: KeyState) -> None:
        self.stores.append((key, value))
        self.table[key] = value

    async def apply(self, offset: int, value: bytes):
        return await self.processor.apply(ConsumedRecord(TOPICS.inputs, 0, offset, KEY.encode(), value, 0))


async def test_an_input_is_sent_before_its_state_is_stored():
    # Arrange
    harness = Harness()

    # Act
    decision = await harness.apply(5, open_signal("s-1"))

    # Assert
    assert decision is not None and decision.commands
    assert [topic for topic, _, _, _ in harness.sent][0] == TOPICS.commands
    assert {input_of(headers) for _, _, _, headers in harness.sent} == {(0, 5)}  # each output names its input
    stored = harness.stores[-1][1]
    assert stored.last_offset == 5 and stored.live_position is not None


async def test_a_redelivered_input_is_a_no_op_that_writes_its_state_again():
    # Arrange: the local store already holds the state of offset 5 (its changelog write lost).
    harness = Harness()
    await harness.apply(5, open_signal("s-1"))
    state_before = harness.table[KEY.encode()]
    harness.sent.clear()
    harness.stores.clear()

    # Act: offset 5 delivered again.
    decision = await harness.apply(5, open_signal("s-1"))

    # Assert: nothing sent, nothing decided, the same state written once more.
    assert decision is not None and decision.commands == () and decision.audit is None
    assert harness.sent == []
    assert harness.stores == [(KEY.encode(), state_before)]


async def test_an_input_that_changes_nothing_and_is_not_redelivered_writes_no_state():
    # Arrange: a repeated signal id at a NEW offset is a refusal with an audit, not a redelivery.
    harness = Harness()
    await harness.apply(5, open_signal("s-1"))
    harness.stores.clear()

    # Act
    decision = await harness.apply(6, open_signal("s-1"))

    # Assert: refused and audited; stored once, because the decision moved the key's last offset.
    assert decision is not None and decision.audit is not None and decision.commands == ()
    assert [state.last_offset for _, state in harness.stores] == [6]


def test_the_deadline_index_follows_stored_states_and_names_only_passed_deadlines():
    # Arrange: one position in flight (deadline 1000), one active (none), one whose flight ended.
    from streams.worker.deadlines import DeadlineIndex
    from streams.domain import Deadline, Status

    def record(key: str, status: str, deadline_at: int | None) -> dict:
        return {"key": key, "position": {"id": f"{key}/1", "status": status, "deadline_at": deadline_at}}

    index = DeadlineIndex()
    index.rebuild([record("A@binance", "entry_placed", 1000), record("B@binance", "active", None),
                   record("C@binance", "pending_sl", 5000)], frozenset({0}))

    # Act
    before = index.due(999)
    at = index.due(1000)
    index.note(record("A@binance", "active", None))  # the entry was answered and stored
    after_answer = index.due(10_000)

    # Assert
    assert before == []
    (event,) = at
    assert event.key == "A@binance" and event.event_id == "deadline:A@binance/1:entry_placed:1000"
    assert event.payload == Deadline(position_id="A@binance/1", status=Status.ENTRY_PLACED, due_at=1000, ts=1000)
    assert [e.key for e in after_answer] == ["C@binance"]
    assert index.partitions == frozenset({0})


def test_a_rebuild_in_steps_keeps_what_the_agent_stored_meanwhile():
    # Arrange: the scan reads A in flight and B in flight; meanwhile the agent stores A answered
    # and C newly in flight (the scan read C before that, with nothing in flight).
    from streams.worker.deadlines import DeadlineIndex

    def record(key: str, status: str, deadline_at: int | None) -> dict:
        return {"key": key, "position": {"id": f"{key}/1", "status": status, "deadline_at": deadline_at}}

    index = DeadlineIndex()
    index.rebuild([record("OLD@binance", "entry_placed", 10)], frozenset({0}))

    # Act
    index.begin_rebuild()
    index.rebuild_note(record("B@binance", "pending_sl", 2000))
    index.note(record("A@binance", "active", None))
    index.note(record("C@binance", "closing", 3000))
    during = index.due(10_000)
    index.rebuild_note(record("A@binance", "entry_placed", 1000))  # older than the stored state
    index.rebuild_note(record("C@binance", "active", None))  # older too
    index.finish_rebuild(frozenset({0, 1}))

    # Assert: until the rebuild ends the old index answers (plus what was noted); then the scan's,
    # with the keys stored meanwhile as stored.
    assert sorted(e.key for e in during) == ["C@binance", "OLD@binance"]
    assert sorted(e.key for e in index.due(10_000)) == ["B@binance", "C@binance"]
    assert index.partitions == frozenset({0, 1})


class FlakyKafka:
    """A producer whose n-th acknowledgement of a chosen topic fails once."""

    def __init__(self, fail_ack_of_topic: str, fail_send_of_topic: str | None = None) -> None:
        self.fail_ack_of_topic = fail_ack_of_topic
        self.fail_send_of_topic = fail_send_of_topic
        self.sent: list[tuple[str, bytes]] = []  # handed to the producer
        self.acknowledged: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes, headers: list) -> asyncio.Future:
        if topic == self.fail_send_of_topic:
            self.fail_send_of_topic = None
            raise ConnectionError("producer buffer closed")
        self.sent.append((topic, value))
        acknowledgement: asyncio.Future = asyncio.get_running_loop().create_future()
        if topic == self.fail_ack_of_topic:
            self.fail_ack_of_topic = None
            acknowledgement.set_exception(TimeoutError("no acknowledgement from the broker"))
        else:
            self.acknowledged.append((topic, value))
            acknowledgement.set_result(None)
        return acknowledgement


def _open_record(offset: int = 0) -> ConsumedRecord:
    event = InputEvent(event_id="signal:sig-1", key=KEY, ts=1_761_173_440_000, payload=Signal(
        signal_id="sig-1", action=SignalAction.OPEN, symbol="APTUSDT", exchange="binance", side=Side.BUY,
        quantity=Decimal("61.8"), stop_loss_pct=None, ts=1_761_173_440_000))
    return ConsumedRecord(topic=TOPICS.inputs, partition=0, offset=offset, key=KEY.encode(),
                          value=serde.encode_input(event), timestamp_ms=1_761_173_440_000)


def _processor(kafka: FlakyKafka, table: dict) -> InputProcessor:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9092", database_url="postgresql://x@127.0.0.1/x")
    return InputProcessor(settings=settings, topics=TOPICS, send=kafka.send, load=load_from(table),
                          store=table.__setitem__)


def _commands(sent: list[tuple[str, bytes]]) -> list:
    return [serde.decode_command(value) for topic, value in sent if topic == TOPICS.commands]


def test_send_durably_partial_failure_resends_only_the_unacknowledged_output(monkeypatch):
    # Arrange: the command is acknowledged, the position update is not (once).
    monkeypatch.setattr("streams.worker.processor.SEND_BACKOFF", Backoff(1e-9, 1e-9))
    kafka, table = FlakyKafka(fail_ack_of_topic=TOPICS.updates), {}

    # Act
    decision = asyncio.run(_processor(kafka, table).apply(_open_record()))

    # Assert: one PlaceEntry on position-commands; the update sent twice, acknowledged once.
    assert decision is not None
    assert [type(c) for c in _commands(kafka.sent)] == [PlaceEntry]
    updates = [value for topic, value in kafka.sent if topic == TOPICS.updates]
    assert len(updates) == 3 and len(set(updates)) == 2  # position + audit, the first of them twice
    assert sorted(kafka.acknowledged) == sorted(set(kafka.sent))
    assert table[KEY.encode()].last_offset == 0  # stored only after everything was acknowledged


def test_send_durably_output_never_handed_to_the_producer_is_sent_again_alone(monkeypatch):
    # Arrange: handing the command to the producer fails once; the updates go through.
    monkeypatch.setattr("streams.worker.processor.SEND_BACKOFF", Backoff(1e-9, 1e-9))
    kafka, table = FlakyKafka(fail_ack_of_topic="none", fail_send_of_topic=TOPICS.commands), {}

    # Act
    asyncio.run(_processor(kafka, table).apply(_open_record()))

    # Assert
    assert [type(c) for c in _commands(kafka.sent)] == [PlaceEntry]
    assert len([1 for topic, _ in kafka.sent if topic == TOPICS.updates]) == 2  # not repeated


class FlakyBatches:
    """Hands outputs over as one batch per topic (one acknowledgement each); a chosen topic's batch fails once."""

    def __init__(self, fail_topic: str) -> None:
        self.fail_topic = fail_topic
        self.batches: list[list[tuple[str, bytes]]] = []

    async def send_all(self, outputs) -> list[asyncio.Future]:
        acknowledgements = {}
        for output in outputs:
            if output.topic not in acknowledgements:
                acknowledgement = acknowledgements[output.topic] = asyncio.get_running_loop().create_future()
                if output.topic == self.fail_topic:
                    self.fail_topic = None
                    acknowledgement.set_exception(TimeoutError("no acknowledgement from the broker"))
                else:
                    acknowledgement.set_result(None)
        self.batches.append([(output.topic, output.value) for output in outputs])
        return [acknowledgements[output.topic] for output in outputs]


def test_outputs_handed_over_in_batches_are_sent_again_only_where_a_batch_failed(monkeypatch):
    # Arrange: the updates' batch (position + audit) is not acknowledged once; the command's is.
    monkeypatch.setattr("streams.worker.processor.SEND_BACKOFF", Backoff(1e-9, 1e-9))
    batches, table = FlakyBatches(fail_topic=TOPICS.updates), {}
    processor = dataclasses.replace(_processor(FlakyKafka(fail_ack_of_topic="none"), table),
                                    send_all=batches.send_all)

    # Act
    asyncio.run(processor.apply(_open_record()))

    # Assert: everything went in one hand-over, then only the two updates again; stored after that.
    first, again = batches.batches
    assert sorted(topic for topic, _ in first) == sorted([TOPICS.commands, TOPICS.updates, TOPICS.updates])
    assert again == [(topic, value) for topic, value in first if topic == TOPICS.updates]
    assert table[KEY.encode()].last_offset == 0


def test_applied_offsets_name_a_hole_from_the_table_and_move_on_as_inputs_are_applied():
    from streams.worker.gaps import AppliedOffsets, applied_through

    # The table: keys of partition 0 applied up to offsets 4 and 6, one key of partition 1 at 2.
    recoveries = []

    def recover():
        recoveries.append(1)
        return applied_through([(0, 4), (0, 6), (1, 2), (2, -1)])

    applied = AppliedOffsets(recover)
    in_order = applied.hole_before(0, 7)
    applied.applied(0, 7)
    redelivered = applied.hole_before(0, 3)
    hole = applied.hole_before(0, 10)  # 8 and 9 never applied
    # No key of partition 2 applied anything: every input before 50 is still to apply (a
    # rebalance's skipped input can be the partition's very first).
    unknown = applied.hole_before(2, 50)
    first_ever = applied.hole_before(3, 0)
    after_restart = applied.hole_before(1, 5)

    assert (in_order, redelivered, hole, unknown, first_ever, after_restart) == (
        None, None, (8, 10), (0, 50), None, (3, 5))
    assert len(recoveries) == 1


def test_applied_offsets_ask_the_table_again_after_a_rebalance():
    from streams.worker.gaps import AppliedOffsets

    table = {0: 5}
    applied = AppliedOffsets(lambda: dict(table))
    applied.applied(0, 5)
    table[0] = 20  # another worker owned partition 0 meanwhile and applied up to 19
    before = applied.hole_before(0, 20)  # still the old view: 6..19 look missing
    applied.forget()
    after = applied.hole_before(0, 20)

    assert (before, after) == ((6, 20), None)


def test_applied_offsets_name_each_partition_s_first_input_once_per_view_of_the_table():
    from streams.worker.gaps import AppliedOffsets

    applied = AppliedOffsets(lambda: {0: 5})
    first_views = [applied.first_since_recovered(0), applied.first_since_recovered(1),
                   applied.first_since_recovered(0)]
    applied.forget()  # a rebalance: the next input of each partition is a first one again
    after_forget = applied.first_since_recovered(0)

    assert (first_views, after_forget) == ([True, True, False], True)


async def test_an_input_is_decided_with_the_policy_recorded_in_it_then_the_overrides_on_top():
    # Arrange: the processor's own settings say 30 s; the input's producer ran with 5 s.
    import dataclasses

    from streams.domain import Policy

    recorded = Policy(default_stop_loss_pct=Decimal("2"), entry_timeout_ms=5_000, stop_loss_timeout_ms=5_000,
                      close_timeout_ms=5_000)
    event = dataclasses.replace(serde.decode_input(open_signal("s-1")), policy=recorded)
    harness = Harness()
    overridden = Harness()
    overridden.processor.policy_overrides = {"entry_timeout_ms": 60_000}

    # Act
    plain = await harness.apply(0, serde.encode_input(event))
    changed = await overridden.apply(0, serde.encode_input(event))
    unrecorded = await Harness().apply(0, open_signal("s-2"))

    # Assert: deadline = the input's (log) time 0 + the entry timeout of the policy used
    assert plain.state.position.deadline_at == 5_000
    assert changed.state.position.deadline_at == 60_000
    assert unrecorded.state.position.deadline_at == 30_000  # no policy recorded: the settings'


def test_the_deadline_index_takes_a_stored_state_as_it_takes_its_table_record():
    # Arrange: every state of real position lives, noted as states and as table records.
    from benchmarks.lifecycle import POLICY, lifecycle_inputs
    from streams.domain import AppliedInput, decide
    from streams.wire import serde
    from streams.worker.deadlines import DeadlineIndex

    by_state, by_record = DeadlineIndex(), DeadlineIndex()
    states: dict = {}
    dues = []
    for offset, event in enumerate(lifecycle_inputs(keys=3, cycles=2)):
        states[event.key] = decide(states.get(event.key), AppliedInput(offset, event), POLICY).state

        # Act
        by_state.note_state(states[event.key])
        by_record.note(serde.key_state_to_record(states[event.key]))

        # Assert
        dues.append([e.event_id for e in by_state.due(2**62)])
        assert dues[-1] == [e.event_id for e in by_record.due(2**62)]
    assert len({len(due) for due in dues}) > 1  # keys entered and left the index

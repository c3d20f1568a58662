"""The seed's race scenarios A-D, a crash and a replay, on the real broker with the real worker.

Inputs go through ``position-inputs``; a scripted stand-in for the exchange edge answers the
commands the worker sends. Each test asserts exactly one position per key and its final
state as the worker published it on ``position-updates``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer

from streams.wire import serde
from streams.domain import (
    AppliedInput,
    AuditDecision,
    CancelOrder,
    ClosePosition,
    Command,
    KeyState,
    PlaceEntry,
    PlaceStopLoss,
    QueryOrder,
    ReportOutcome,
    Side,
    Status,
    decide,
)
from streams.settings import Settings
from tests.integration.pipeline_harness import (
    CommandsTap,
    InputSender,
    PipelineWorker,
    ScriptedExchange,
    UpdatesTap,
)

pytestmark = pytest.mark.integration

KEY = "APTUSDT@binance"


@dataclass
class Harness:
    worker: PipelineWorker
    updates: UpdatesTap
    commands: CommandsTap
    inputs: InputSender
    bootstrap: str
    exchange: ScriptedExchange | None = None

    async def answer_with(self, script) -> ScriptedExchange:
        self.exchange = await ScriptedExchange(self.bootstrap, self.worker.topics.commands, self.inputs,
                                               script).start()
        return self.exchange

    def positions(self, key: str = KEY):
        return self.updates.positions(key)

    def position_ids(self, key: str = KEY) -> list[str]:
        return sorted({p.id for p in self.positions(key)})

    def commands_of(self, kind: type, key: str = KEY) -> list[Command]:
        return [c for c in self.commands.commands(key) if isinstance(c, kind)]

    async def wait_status(self, status: Status, key: str = KEY, timeout_s: float = 60.0) -> None:
        await self.updates.wait_for(
            lambda: (latest := self.updates.latest(key)) is not None and latest.status == status,
            timeout_s, f"{key} to reach {status.value}; worker log:\n{self.worker.log_tail(3000)}")


@pytest.fixture
async def harness(kafka_bootstrap, unique_suffix, tmp_path) -> AsyncIterator[Harness]:
    worker = PipelineWorker(kafka_bootstrap, f"scenario-{unique_suffix}", tmp_path / "data",
                            tmp_path / "worker.log")
    await worker.start()
    updates = await UpdatesTap(kafka_bootstrap, worker.topics.updates).start()
    commands = await CommandsTap(kafka_bootstrap, worker.topics.commands).start()
    inputs = await InputSender(kafka_bootstrap, worker.topics.inputs).start()
    harness = Harness(worker, updates, commands, inputs, kafka_bootstrap)
    try:
        yield harness
    finally:
        if harness.exchange is not None:
            await harness.exchange.stop()
        await inputs.stop()
        await updates.stop()
        await commands.stop()
        worker.stop()


def fills_instantly(fill_quantity: str = "61.8", price: str = "10.00", stop_delay_s: float = 0.0,
                    entry_outcome: ReportOutcome = ReportOutcome.FILLED):
    """An exchange that fills entries at once and acknowledges stop-losses after a delay."""

    async def script(command: Command, inputs: InputSender) -> None:
        if isinstance(command, PlaceEntry):
            if entry_outcome is ReportOutcome.REJECTED:
                await inputs.report(command, ReportOutcome.REJECTED, error_code=-2019,
                                    error_message="Margin is insufficient.")
            else:
                await inputs.report(command, ReportOutcome.FILLED, filled_quantity=fill_quantity,
                                    average_price=price)
        elif isinstance(command, PlaceStopLoss):
            await asyncio.sleep(stop_delay_s)
            await inputs.report(command, ReportOutcome.ACCEPTED, stop_price=str(round(command.stop_price, 3)))
        elif isinstance(command, ClosePosition):
            await inputs.report(command, ReportOutcome.FILLED, filled_quantity=str(command.quantity),
                                average_price=price)
        elif isinstance(command, CancelOrder):
            await inputs.report(command, ReportOutcome.CANCELED)
        elif isinstance(command, QueryOrder):
            await inputs.report(command, ReportOutcome.NOT_FOUND)

    return script


async def test_scenario_a_two_opens_for_one_symbol_at_once_open_exactly_one_position(harness):
    # Arrange
    await harness.answer_with(fills_instantly())

    # Act: two signals for the same key, back to back, before any answer can arrive.
    await asyncio.gather(harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-a1"),
                         harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-a2"))
    await harness.wait_status(Status.ACTIVE)
    await harness.updates.wait_for(lambda: len(harness.updates.audits(KEY)) >= 4, what="the audit records")

    # Assert
    assert len(harness.position_ids()) == 1
    assert len(harness.commands_of(PlaceEntry)) == 1
    assert len(harness.commands_of(PlaceStopLoss)) == 1
    refusals = [a for a in harness.updates.audits(KEY) if a.decision == AuditDecision.REFUSED]
    assert len(refusals) == 1 and "already" in refusals[0].reason
    # Co-partitioned: the key's commands and updates sit on the partition of its inputs.
    (input_partition,) = {r.partition for r in await read_all(harness.bootstrap, harness.worker.topics.inputs, KEY)}
    assert {r.partition for r in harness.commands.records if r.key == KEY.encode()} == {input_partition}
    assert {r.partition for r in harness.updates.records if r.key == KEY.encode()} == {input_partition}


async def test_scenario_b_snapshot_during_stop_loss_wait_confirms_the_open_never_a_second_position(harness):
    # Arrange: instant fill, stop-loss acknowledged 3 s later, a snapshot every second.
    await harness.answer_with(fills_instantly(fill_quantity="61.8", stop_delay_s=3.0))

    # Act
    await harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-b1")
    await harness.updates.wait_for(lambda: any(p.status == Status.PENDING_SL for p in harness.positions()),
                                   what="the fill")
    for _ in range(4):
        await harness.inputs.snapshot("APTUSDT", Side.BUY, "61.0", "10.00")
        await asyncio.sleep(1.0)
    await harness.wait_status(Status.ACTIVE)

    # Assert
    final = harness.updates.latest(KEY)
    assert len(harness.position_ids()) == 1
    assert final.quantity == final.quantity.__class__("61.0")  # the exchange's quantity wins
    assert len(harness.commands_of(PlaceEntry)) == 1
    assert len(harness.commands_of(PlaceStopLoss)) == 1
    reasons = " ".join(a.reason for a in harness.updates.audits(KEY))
    assert "61.0" in reasons and "61.8" in reasons


async def test_scenario_c_retry_after_rejected_entry_leaves_one_rolled_back_and_one_active(harness):
    # Arrange: the first entry is rejected (margin insufficient), later ones fill.
    rejecting = fills_instantly(entry_outcome=ReportOutcome.REJECTED)
    filling = fills_instantly()
    seen_entries = 0

    async def script(command, inputs):
        nonlocal seen_entries
        if isinstance(command, PlaceEntry):
            seen_entries += 1
            await (rejecting if seen_entries == 1 else filling)(command, inputs)
        else:
            await filling(command, inputs)

    await harness.answer_with(script)

    # Act
    await harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-c1")
    await harness.wait_status(Status.ROLLED_BACK)
    await harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-c2")
    await harness.wait_status(Status.ACTIVE)

    # Assert: two positions over time, never two at once; the first ended rolled_back.
    ids = harness.position_ids()
    assert len(ids) == 2
    final_by_id = {p.id: p for p in harness.positions()}
    assert sorted(p.status for p in final_by_id.values()) == [Status.ACTIVE, Status.ROLLED_BACK]
    entries = harness.commands_of(PlaceEntry)
    assert len({c.client_order_id for c in entries}) == 2


async def test_scenario_d_entry_left_in_flight_is_resolved_by_its_deadline_not_left_hanging(harness):
    # Arrange: the exchange never answers the entry (the old bot crashed mid-open); a query
    # by client id finds no such order.
    async def script(command, inputs):
        if isinstance(command, QueryOrder):
            await inputs.report(command, ReportOutcome.NOT_FOUND)

    await harness.answer_with(script)

    # Act
    await harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-d1")
    await harness.wait_status(Status.ROLLED_BACK, timeout_s=60)

    # Assert: the deadline asked the exchange about the same client id, then let the key go.
    (entry,) = harness.commands_of(PlaceEntry)
    queries = harness.commands_of(QueryOrder)
    assert queries and all(q.client_order_id == entry.client_order_id for q in queries)
    assert len(harness.position_ids()) == 1


async def test_worker_killed_before_committing_offsets_resumes_without_new_order_ids(
        kafka_bootstrap, unique_suffix, tmp_path):
    # Arrange: offsets committed only every 120 s, so the kill lands after the inputs were
    # applied (and their commands sent) but before any offset commit.
    worker = PipelineWorker(kafka_bootstrap, f"crash-{unique_suffix}", tmp_path / "data", tmp_path / "worker.log",
                            extra_env={"PIPELINE_COMMIT_INTERVAL_S": "120"})
    await worker.start()
    updates = await UpdatesTap(kafka_bootstrap, worker.topics.updates).start()
    commands = await CommandsTap(kafka_bootstrap, worker.topics.commands).start()
    inputs = await InputSender(kafka_bootstrap, worker.topics.inputs).start()
    keys = [f"SYM{index}USDT@binance" for index in range(6)]
    try:
        for index in range(6):
            await inputs.open(f"SYM{index}USDT", Side.BUY, "5", signal_id=f"sig-crash-{index}")
        await updates.wait_for(lambda: all(updates.latest(k) is not None for k in keys), what="every open applied")
        state_before = {k: updates.latest(k) for k in keys}

        # Act: crash, restart (same data folder), and let the exchange answer the entries.
        worker.kill()
        await worker.start()
        exchange = await ScriptedExchange(kafka_bootstrap, worker.topics.commands, inputs, fills_instantly()).start()
        try:
            await updates.wait_for(
                lambda: all((p := updates.latest(k)) is not None and p.status == Status.ACTIVE for k in keys),
                timeout_s=90, what=f"every key active; log:\n{worker.log_tail(3000)}")
        finally:
            await exchange.stop()
    finally:
        await inputs.stop()
        await updates.stop()
        await commands.stop()
        worker.stop()

    # Assert: every entry command ever sent for a key carries one and the same client id.
    for key in keys:
        entry_ids = {c.client_order_id for c in commands.commands(key) if isinstance(c, PlaceEntry)}
        stop_ids = {c.client_order_id for c in commands.commands(key) if isinstance(c, PlaceStopLoss)}
        assert len(entry_ids) == 1 and len(stop_ids) == 1, (key, entry_ids, stop_ids)
        assert len({p.id for p in updates.positions(key)}) == 1
        assert state_before[key].id == updates.latest(key).id


async def test_replaying_a_keys_inputs_from_offset_zero_reproduces_the_table_state(harness):
    # Arrange: a full life of a position: open, fill, stop-loss, snapshot, close.
    await harness.answer_with(fills_instantly())
    await harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-r1")
    await harness.wait_status(Status.ACTIVE)
    await harness.inputs.snapshot("APTUSDT", Side.BUY, "61.0", "10.00")
    await harness.inputs.send(close_signal("sig-r2"))
    await harness.wait_status(Status.CLOSED)
    await harness.updates.wait_audited(harness.bootstrap, harness.worker.topics.inputs)

    # Act: fold decide() over the key's inputs exactly as they are in the log, each at the
    # log's time for it (the broker's append time, as the agent takes it).
    records = await read_all(harness.bootstrap, harness.worker.topics.inputs, KEY)
    policy = Settings.from_env(entry_timeout_s=5, stop_loss_timeout_s=5, close_timeout_s=5).policy()
    replayed: KeyState | None = None
    for record in records:
        event = dataclasses.replace(serde.decode_input(record.value), ts=record.timestamp)
        replayed = decide(replayed, AppliedInput(record.offset, event), policy).state
    table_state = await latest_table_value(harness.bootstrap, f"{harness.worker.app_id}-key_to_state-changelog", KEY)

    # Assert
    assert replayed == table_state
    assert replayed.position.status == Status.CLOSED


def close_signal(signal_id: str):
    from streams.domain import InputEvent, Signal, SignalAction
    from tests.integration.pipeline_harness import now_ms

    ts = now_ms()
    return InputEvent(event_id=f"signal:{signal_id}", key=KEY, ts=ts,
                      payload=Signal(signal_id=signal_id, action=SignalAction.CLOSE, symbol="APTUSDT",
                                     exchange="binance", side=None, quantity=None, stop_loss_pct=None, ts=ts))


async def read_all(bootstrap: str, topic: str, key: str) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.assignment() or set()
        while not partitions:
            await asyncio.sleep(0.1)
            partitions = consumer.assignment()
        end = await consumer.end_offsets(list(partitions))
        records = []
        while not await _caught_up(consumer, end):
            batch = await consumer.getmany(timeout_ms=500)
            for batch_records in batch.values():
                records.extend(batch_records)
    finally:
        await consumer.stop()
    return sorted((r for r in records if r.key == key.encode()), key=lambda r: r.offset)


async def _caught_up(consumer: AIOKafkaConsumer, end_offsets: dict) -> bool:
    for partition, end in end_offsets.items():
        if await consumer.position(partition) < end:
            return False
    return True


async def latest_table_value(bootstrap: str, changelog: str, key: str) -> KeyState:
    from streams.wire import codec

    records = await read_all(bootstrap, changelog, key)
    return serde.key_state_from_record(codec.decode("KeyState", records[-1].value))


async def test_undecodable_input_goes_to_dead_letters_and_the_stream_goes_on(harness):
    # Arrange
    from aiokafka import AIOKafkaProducer

    from tests.integration.pipeline_harness import TopicTap

    dead_letters = await TopicTap(harness.bootstrap, harness.worker.topics.dead_letters).start()
    producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap, acks="all")
    await producer.start()
    try:
        # Act: garbage, a valid input under the wrong key, then a good signal for the key.
        garbage = await producer.send_and_wait(harness.worker.topics.inputs, key=KEY.encode(), value=b"\x00not avro")
        await producer.send_and_wait(harness.worker.topics.inputs, key=b"BTCUSDT@binance",
                                     value=serde.encode_input(close_signal("sig-misrouted")))
        await harness.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-after-garbage")
        await harness.updates.wait_for(lambda: harness.updates.latest(KEY) is not None, what="the good signal")
        await dead_letters.wait_for(lambda: len(dead_letters.records) >= 2, what="two dead letters")
    finally:
        await producer.stop()
        await dead_letters.stop()

    # Assert
    # (two keys, two partitions of the dead-letter topic: their letters come in either order)
    letters = {letter.error_type: letter for letter in
               (serde.decode_dead_letter(record.value) for record in dead_letters.records)}
    assert sorted(letters) == ["InvalidInputRecord", "NotSingleObjectEncoded"]
    garbage_letter = letters["NotSingleObjectEncoded"]
    assert (garbage_letter.source_topic, garbage_letter.source_partition, garbage_letter.source_offset) == (
        harness.worker.topics.inputs, garbage.partition, garbage.offset)
    assert garbage_letter.value == b"\x00not avro" and garbage_letter.key == KEY.encode()
    assert "differs" in letters["InvalidInputRecord"].reason
    assert harness.updates.latest(KEY).status == Status.PENDING_ENTRY

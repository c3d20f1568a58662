"""The agent's send-then-store step, with plain callables for Kafka and the table.

What matters here is the control flow around a partial failure: Kafka acknowledges some
outputs of an input and not others. Only the unacknowledged ones may be sent again, or a
second PlaceEntry lands on position-commands.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from streams import serde
from streams.app import ConsumedRecord, InputProcessor
from streams.domain import InputEvent, PlaceEntry, Side, Signal, SignalAction
from streams.settings import Settings
from streams.topics import TopicNames

KEY = "APTUSDT@binance"
TOPICS = TopicNames.for_prefix("")


class FlakyKafka:
    """A producer whose n-th acknowledgement of a chosen topic fails once."""

    def __init__(self, fail_ack_of_topic: str, fail_send_of_topic: str | None = None) -> None:
        self.fail_ack_of_topic = fail_ack_of_topic
        self.fail_send_of_topic = fail_send_of_topic
        self.sent: list[tuple[str, bytes]] = []  # handed to the producer
        self.acknowledged: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
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
    return InputProcessor(settings=settings, topics=TOPICS, send=kafka.send, load=table.get,
                          store=table.__setitem__)


def _commands(sent: list[tuple[str, bytes]]) -> list:
    return [serde.decode_command(value) for topic, value in sent if topic == TOPICS.commands]


def test_send_durably_partial_failure_resends_only_the_unacknowledged_output(monkeypatch):
    # Arrange: the command is acknowledged, the position update is not (once).
    monkeypatch.setattr("streams.app.SEND_RETRY_BACKOFF_S", (0.0,))
    kafka, table = FlakyKafka(fail_ack_of_topic=TOPICS.updates), {}

    # Act
    decision = asyncio.run(_processor(kafka, table).apply(_open_record()))

    # Assert: one PlaceEntry on position-commands; the update sent twice, acknowledged once.
    assert decision is not None
    assert [type(c) for c in _commands(kafka.sent)] == [PlaceEntry]
    updates = [value for topic, value in kafka.sent if topic == TOPICS.updates]
    assert len(updates) == 3 and len(set(updates)) == 2  # position + audit, the first of them twice
    assert sorted(kafka.acknowledged) == sorted(set(kafka.sent))
    assert table[KEY.encode()]["last_offset"] == 0  # stored only after everything was acknowledged


def test_send_durably_output_never_handed_to_the_producer_is_sent_again_alone(monkeypatch):
    # Arrange: handing the command to the producer fails once; the updates go through.
    monkeypatch.setattr("streams.app.SEND_RETRY_BACKOFF_S", (0.0,))
    kafka, table = FlakyKafka(fail_ack_of_topic="none", fail_send_of_topic=TOPICS.commands), {}

    # Act
    asyncio.run(_processor(kafka, table).apply(_open_record()))

    # Assert
    assert [type(c) for c in _commands(kafka.sent)] == [PlaceEntry]
    assert len([1 for topic, _ in kafka.sent if topic == TOPICS.updates]) == 2  # not repeated

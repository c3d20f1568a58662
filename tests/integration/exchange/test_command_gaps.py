"""A command Faust never delivers is still carried out, before the ones after it.

The case seen in the three-worker scale-out test: a worker joined after the owner of a
commands partition was killed, the group had committed nothing for that partition, and
Faust's first delivery was offset 3, a query for the entry order at offset 2 that no worker
had placed. The executor fenced the id, found no order, and the position rolled back.

Here the commands are on a real topic, the group's commits on the real broker, and each
command is carried out by the real executor through ccxt against the emulator; only the
delivery order stands in for Faust's.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.domain import OrderRole, PlaceEntry, QueryOrder, ReportOutcome, Side
from streams.wire import serde
from streams.worker.command_agents import CommandCarrier, LoggedCommand
from streams.worker.gaps import LogRangeReader, group_committed_offsets
from tests.integration.exchange.test_executor_placement import exchange, executors  # noqa: F401 - fixtures
from tests.integration.pipeline_harness import create_plain_topics

pytestmark = pytest.mark.integration

KEY = "APTUSDT@binance"


def entry(position: int, client_order_id: str) -> PlaceEntry:
    position_id = f"{KEY}/{position}"
    return PlaceEntry(command_id=f"{position_id}/place_entry/{client_order_id}", key=KEY, position_id=position_id,
                      symbol="APTUSDT", exchange="binance", client_order_id=client_order_id, side=Side.BUY,
                      quantity=Decimal("1"))


def query(position: int, client_order_id: str) -> QueryOrder:
    position_id = f"{KEY}/{position}"
    return QueryOrder(command_id=f"{position_id}/query_order/{client_order_id}/9", key=KEY, position_id=position_id,
                      symbol="APTUSDT", exchange="binance", client_order_id=client_order_id, role=OrderRole.ENTRY)


async def publish(bootstrap: str, topic: str, commands: list) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for command in commands:
            await producer.send_and_wait(topic, serde.encode_command(command), key=KEY.encode(), partition=0)
    finally:
        await producer.stop()


async def commit(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(offset, "")})
    finally:
        await consumer.stop()


async def test_a_query_delivered_before_the_entry_it_asks_about_finds_the_entry_placed(
        kafka_bootstrap, unique_suffix, exchange, executors):  # noqa: F811 - fixtures
    # Arrange: an entry carried out and committed, a second entry and a query for it after.
    topic, group = f"gaps-{unique_suffix}.position-commands", f"gaps-{unique_suffix}"
    await create_plain_topics(kafka_bootstrap, [topic], partitions=2)
    await publish(kafka_bootstrap, topic, [entry(1, "ppe1-done"), entry(2, "ppe1-skipped"), query(2, "ppe1-skipped")])
    executor = await executors()
    reports = []

    async def carry_out(logged: LoggedCommand) -> None:
        reports.append(await executor.execute(serde.decode_command(logged.value)))

    await carry_out(LoggedCommand(0, 0, KEY.encode(), serde.encode_command(entry(1, "ppe1-done")), 0))
    await commit(kafka_bootstrap, group, TopicPartition(topic, 0), 1)
    reader = LogRangeReader(kafka_bootstrap, topic)
    noted = []

    async def read_log(partition: int, start: int, end: int):
        async for records in reader.read(partition, start, end):
            yield [LoggedCommand(partition, r.offset, r.key, r.value, r.timestamp) for r in records]

    async def note_done(partition: int, end: int) -> None:
        noted.append((partition, end))

    carrier = CommandCarrier(carry_out, read_log,
                             lambda partitions: group_committed_offsets(kafka_bootstrap, group, topic, partitions),
                             note_done, lambda: 1)
    query_record = (await anext(reader.read(0, 2, 3)))[0]

    # Act: Faust's first delivery is the query at offset 2.
    await carrier.delivered(LoggedCommand(0, 2, query_record.key, query_record.value, query_record.timestamp))

    # Assert: the skipped entry was placed first, so the query finds it filled.
    assert [(r.payload.client_order_id, r.payload.outcome) for r in reports] == [
        ("ppe1-done", ReportOutcome.FILLED), ("ppe1-skipped", ReportOutcome.FILLED),
        ("ppe1-skipped", ReportOutcome.FILLED)]
    assert len(exchange.orders(client_order_id="ppe1-skipped")) == 1
    assert len(exchange.orders(client_order_id="ppe1-done")) == 1  # the committed entry is not carried out again
    assert noted == [(0, 2)]


async def test_the_group_committed_offsets_say_none_for_a_partition_it_never_committed(kafka_bootstrap, unique_suffix):
    topic, group = f"gaps-{unique_suffix}.position-commands", f"gaps-{unique_suffix}"
    await create_plain_topics(kafka_bootstrap, [topic], partitions=2)
    await commit(kafka_bootstrap, group, TopicPartition(topic, 1), 5)

    assert await group_committed_offsets(kafka_bootstrap, group, topic, [0, 1]) == {0: None, 1: 5}

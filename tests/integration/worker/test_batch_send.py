"""A run's outputs sent as record batches land as ``send`` would put them: partition, order, headers.

Against the real broker, with batches small enough that a partition's records of one run
need several of them.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from streams.worker.batch_send import BatchSender
from streams.worker.processor import Output, input_headers
from tests.integration.pipeline_harness import create_plain_topics, read_topic

pytestmark = pytest.mark.integration

PARTITIONS = 12


async def test_a_run_sent_in_batches_lands_where_send_would_put_each_record_in_order_with_its_headers(
        kafka_bootstrap, unique_suffix):
    # Arrange: 600 outputs over 40 keys, two topics; batches of at most 2 KiB.
    topics = [f"batches-{unique_suffix}.commands", f"batches-{unique_suffix}.updates"]
    await create_plain_topics(kafka_bootstrap, topics, PARTITIONS)
    outputs = [Output(topics[index % 2], f"SYM{index % 40}USDT@binance".encode(), f"value-{index:04d}-".encode() * 8,
                      input_headers(index % PARTITIONS, index)) for index in range(600)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True,
                                max_batch_size=2048)
    await producer.start()
    sender = BatchSender(lambda: producer)
    try:
        # Act: a large run, then a run of two records.
        acknowledgements = await sender.send_all(outputs[:598])
        trickle = await sender.send_all(outputs[598:])
        await asyncio.gather(*set(acknowledgements), *trickle)
    finally:
        await producer.stop()

    # Assert: each record on its key's default partition, each partition in the order sent, headers kept.
    everything = list(range(PARTITIONS))
    for topic in topics:
        landed = await read_topic(kafka_bootstrap, topic)
        sent = [output for output in outputs if output.topic == topic]
        assert sum(len(records) for records in landed.values()) == len(sent)
        for partition, records in landed.items():
            expected = [output for output in sent
                        if DefaultPartitioner()(output.key, everything, everything) == partition]
            assert [(record.key, record.value, list(record.headers)) for record in records] == [
                (output.key, output.value, output.headers) for output in expected]
    assert len(set(map(id, acknowledgements))) > 2 * PARTITIONS  # several batches per partition
    assert trickle[0] is not trickle[1]

"""Faust's consumer on the worker's own event loop (streams.worker.faust_consumer.OnLoopTransport).

A real Faust app against the real broker, run in the test's loop: it consumes, commits and
stops as Faust's threaded consumer does, with no thread of its own, and its stop leaves the
loop's other tasks alone (mode's thread service would cancel every task of "its" loop).
"""

from __future__ import annotations

import asyncio
import threading

import faust
import pytest
from aiokafka import AIOKafkaProducer
from mode.threads import WorkerThread

from streams.worker.faust_consumer import OnLoopConsumer, OnLoopConsumerThread, consume_on_the_worker_loop
from tests.integration.pipeline_harness import create_plain_topics
from tests.integration.sink_support import committed_offsets

pytestmark = pytest.mark.integration

PARTITIONS = 4
RECORDS = 400


async def test_the_consumer_runs_on_the_apps_loop_consumes_commits_and_stops_without_touching_other_tasks(
        kafka_bootstrap, unique_suffix, tmp_path):
    # Arrange: a topic with records on every partition, and a Faust app consuming it on this loop.
    topic_name = f"onloop-{unique_suffix}.inputs"
    group = f"onloop-{unique_suffix}"
    await create_plain_topics(kafka_bootstrap, [topic_name], PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for index in range(RECORDS):
            await producer.send(topic_name, f"value-{index}".encode(), f"key-{index % 40}".encode(),
                                partition=index % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()
    app = faust.App(group, broker=f"kafka://{kafka_bootstrap}", store="memory://", datadir=str(tmp_path),
                    web_enabled=False, topic_partitions=PARTITIONS, consumer_auto_offset_reset="earliest",
                    broker_commit_interval=0.2)
    consume_on_the_worker_loop(app)
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen: list[tuple[int, int]] = []
    all_seen = asyncio.Event()

    @app.agent(topic)
    async def collect(stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            seen.append((event.message.partition, event.message.offset))
            await stream.ack(event)  # the last one too: Faust acks an event only when the next comes
            if len(seen) == RECORDS:
                all_seen.set()

    bystander = asyncio.create_task(asyncio.sleep(3600), name="a task of the worker's loop")

    # Act: run the app until it consumed everything and committed it, then stop it.
    await app.start()
    try:
        await asyncio.wait_for(all_seen.wait(), timeout=60)
        threads_while_running = [thread for thread in threading.enumerate() if isinstance(thread, WorkerThread)]
        consumer_loop = app.consumer._thread._ensure_consumer()._client._loop
        committed: dict[int, int] = {}
        for _attempt in range(100):
            committed = await committed_offsets(kafka_bootstrap, group, topic_name)
            if sum(committed.values()) == RECORDS:
                break
            await asyncio.sleep(0.2)
    finally:
        await app.stop()
    # Let the loop run the callbacks a stop schedules: a cancellation would land now.
    await asyncio.sleep(0.1)

    # Assert: Faust's own consumer classes, only on this loop; every record once, in offset order
    # per partition; all committed; the other task untouched.
    try:
        assert isinstance(app.consumer, OnLoopConsumer)
        assert isinstance(app.consumer._thread, OnLoopConsumerThread)
        assert threads_while_running == []
        assert consumer_loop is asyncio.get_running_loop()
        assert sorted(seen) == [(partition, offset) for partition in range(PARTITIONS)
                                for offset in range(RECORDS // PARTITIONS)]
        for partition in range(PARTITIONS):
            offsets = [offset for seen_partition, offset in seen if seen_partition == partition]
            assert offsets == sorted(offsets)
        assert committed == {partition: RECORDS // PARTITIONS for partition in range(PARTITIONS)}
        assert not bystander.done()
    finally:
        bystander.cancel()

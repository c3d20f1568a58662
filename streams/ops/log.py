"""Reading a whole topic from its start, outside any consumer group: what replay and diff fold."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.topics import topic_partitions

__all__ = ["TopicFromStart", "from_start"]


class TopicFromStart:
    """A group-less consumer assigned to every partition of a topic, positioned at its start."""

    def __init__(self, consumer: AIOKafkaConsumer | None, partitions: list[TopicPartition],
                 ends: dict[TopicPartition, int]) -> None:
        #: None when the topic does not exist (then there are no partitions to read).
        self.consumer = consumer
        #: Every partition of the topic (none when it does not exist).
        self.partitions = partitions
        #: Each partition's end offset when reading began: the read stops there.
        self.ends = ends


@asynccontextmanager
async def from_start(bootstrap_servers: str, topic: str) -> AsyncIterator[TopicFromStart]:
    """``topic`` read from the first offset of each partition; nothing is committed anywhere."""
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap_servers, topic)]
    if not partitions:
        # No consumer at all: aiokafka's stop() of one that never had an assignment raises
        # CancelledError, which a Faust command takes for a cancellation and exits silently.
        yield TopicFromStart(None, [], {})
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        yield TopicFromStart(consumer, partitions, await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()

"""Publishing the ingest's records to Kafka: valid signals to ``position-inputs``, refusals to the dead letters.

One idempotent producer (``acks=all``, ``enable_idempotence``): a record counts as
published only once every in-sync replica has it, and the producer's own retries never
write it twice. Records are keyed by the raw UTF-8 bytes of ``SYMBOL@exchange`` and placed
by aiokafka's murmur2 partitioner, the Java client's, so a key lands on the partition the
stream worker reads it from.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.edge.backoff import Backoff, retry_until_ready
from streams.ingest.exceptions import PublishFailed
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

__all__ = ["Delivery", "Publisher", "KafkaPublisher"]

logger = logging.getLogger(__name__)


class Delivery(NamedTuple):
    """Where Kafka stored a record."""

    topic: str
    partition: int
    offset: int


class Publisher(Protocol):
    """What the feed client needs from Kafka (a stub in unit tests)."""

    topics: TopicNames

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        """Writes one record and waits for the broker's acknowledgement; raises ``PublishFailed``."""
        ...


class KafkaPublisher:
    """A ``Publisher`` on the real broker, for the topics of ``settings``."""

    def __init__(self, settings: Settings, *, request_timeout_ms: int = 30000) -> None:
        self.settings = settings
        self.topics = TopicNames.for_prefix(settings.topic_prefix)
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Creates the pipeline's topics when missing, then starts the producer.

        The topics are created here too, with the pipeline's partition count: were the
        ingest to publish first, the broker would auto-create ``position-inputs`` with its
        own default count and the worker would refuse to start. Raises ``PublishFailed``
        when the broker cannot be reached, ``streams.topics.TopologyError`` when a topic
        has another partition count (no retry fixes that).
        """
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all",
                                    enable_idempotence=True, request_timeout_ms=self._request_timeout_ms)
        try:
            await ensure_topics(self.settings, self.topics)
            await producer.start()
        except (KafkaError, OSError) as error:
            await producer.stop()
            raise PublishFailed(f"Kafka at {self.settings.kafka_bootstrap_servers} unavailable: "
                                f"{type(error).__name__}: {error}") from error
        self._producer = producer

    async def start_until_ready(self, stop: asyncio.Event, backoff: Backoff) -> bool:
        """Retries ``start`` with backoff until it succeeds (True) or ``stop`` is set (False)."""
        return await retry_until_ready(self.start, PublishFailed, stop, backoff, logger)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        """Writes one record and waits until every in-sync replica has it."""
        if self._producer is None:
            raise PublishFailed("the producer is not started")
        try:
            metadata = await self._producer.send_and_wait(topic, key=key, value=value)
        except KafkaError as error:
            raise PublishFailed(f"{topic}: {type(error).__name__}: {error}") from error
        return Delivery(metadata.topic, metadata.partition, metadata.offset)

    async def stop(self) -> None:
        """Flushes what is pending and closes the producer."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

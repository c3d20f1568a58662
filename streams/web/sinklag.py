"""The PostgreSQL sink's lag, measured from Kafka by the worker: end offsets minus the sink's commits.

The sink is a process of its own (``python -m sinks``), so a gauge it set would live in its
registry, not on the worker's ``/metrics``; and a sink that is down, when its lag matters
most, reports nothing. Kafka knows the answer either way: for each partition of
``position-updates``, its end offset minus the offset the sink's consumer group last
committed (or minus its first offset when the group never committed there).

Measured when ``/metrics`` is scraped, at most every ``min_interval_s``, with a timeout; a
failed measurement keeps the last value. Every worker reports the same figure, so take
``max`` over workers, not ``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.telemetry import metrics

__all__ = ["SinkLagProbe"]

logger = logging.getLogger(__name__)


class SinkLagProbe:
    """Measures the lag of consumer ``group`` on ``topic`` and sets ``pipeline_sink_lag_records``."""

    def __init__(self, bootstrap_servers: str, group: str, topic: str, *, min_interval_s: float = 5.0,
                 timeout_s: float = 3.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group = group
        self.topic = topic
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.last_lag: int | None = None
        self._measured_at = float("-inf")
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> int | None:
        """Measures again unless measured recently; returns the lag (None until one measurement worked)."""
        async with self._lock:  # concurrent scrapes share one measurement
            if time.monotonic() - self._measured_at < self.min_interval_s:
                return self.last_lag
            self._measured_at = time.monotonic()
            try:
                lag = await asyncio.wait_for(self._measure(), self.timeout_s)
            except Exception as error:  # noqa: BLE001 - a metric must never break /metrics
                logger.debug("sink lag of %s on %s not measured: %r", self.group, self.topic, error)
                return self.last_lag
            self.last_lag = lag
            metrics.set_sink_lag(lag)
            return lag

    async def _measure(self) -> int:
        admin, consumer = await self._clients()
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # the topic is new to this client
            partitions = consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        committed = await admin.list_consumer_group_offsets(self.group, partitions=tps)
        ends = await consumer.end_offsets(tps)
        beginnings = await consumer.beginning_offsets(tps)
        lag = 0
        for tp in tps:
            commit = committed.get(tp)
            start = commit.offset if commit is not None and commit.offset >= 0 else beginnings[tp]
            lag += max(0, ends[tp] - start)
        return lag

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
            try:
                await admin.start()
            except BaseException:  # timeout or cancellation included: never keep a half-started client
                await admin.close()
                raise
            self._admin = admin
        if self._consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                        enable_auto_commit=False)
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        return self._admin, self._consumer

    async def close(self) -> None:
        """Closes the Kafka clients (the worker's web server calls this when it stops)."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

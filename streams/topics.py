"""Names and creation of the pipeline's topics.

Every topic but the order-attempt ledger is keyed by the raw UTF-8 bytes of
``SYMBOL@exchange`` (the ledger by the client order id) and has the same partition count as
``position-inputs``: the table's changelog and every topic an agent
reads beside it must be co-partitioned, or a key's state and its events end up on
different workers. Keys are placed by the murmur2 partitioner of the Java client (aiokafka
and Faust use the same), so a producer outside this project lands a key on the same
partition as ours.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Settings
from streams.domain.exceptions import PipelineError

logger = logging.getLogger(__name__)


ORDER_ATTEMPTS_RETENTION_MS = 7 * 24 * 3600 * 1000


class TopologyError(PipelineError, RuntimeError):
    """A topic exists with a partition count other than the pipeline's."""


@dataclass(frozen=True)
class TopicNames:
    """The pipeline's topic names, all under one configurable prefix."""

    inputs: str
    commands: str
    updates: str
    dead_letters: str
    # The executors' durable record of every order attempt (streams/exchange/attempts.py).
    order_attempts: str

    @classmethod
    def for_prefix(cls, prefix: str) -> "TopicNames":
        return cls(
            inputs=f"{prefix}position-inputs",
            commands=f"{prefix}position-commands",
            updates=f"{prefix}position-updates",
            dead_letters=f"{prefix}position-dead-letters",
            order_attempts=f"{prefix}position-order-attempts",
        )

    def all(self) -> tuple[str, ...]:
        return (self.inputs, self.commands, self.updates, self.dead_letters, self.order_attempts)

    def configs(self, inputs_retention_ms: int = -1) -> dict[str, dict[str, str]]:
        """Topic settings beyond the broker's defaults, applied when a topic is created."""
        return {
            # The inputs log is the source of truth: the broker's default retention (7 days)
            # would make a replay from its start forget every position opened before that.
            # Its records are stamped by the broker as they are appended: the one clock every
            # input's time comes from, whichever host produced it (see InputProcessor).
            self.inputs: {"retention.ms": str(inputs_retention_ms), "message.timestamp.type": "LogAppendTime"},
            # The ledger must outlive any command that can still be redelivered; set, not inherited.
            self.order_attempts: {"retention.ms": str(ORDER_ATTEMPTS_RETENTION_MS)},
        }


async def _describe_when_ready(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 15.0) -> list:
    """Topic descriptions, waiting out the moment after creation when a topic shows no partitions."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        descriptions = await admin.describe_topics(names)
        if all(d["partitions"] for d in descriptions) or asyncio.get_running_loop().time() > deadline:
            return descriptions
        await asyncio.sleep(0.2)


async def ensure_topics(settings: Settings, names: TopicNames | None = None) -> None:
    """Creates the missing topics and refuses existing ones with another partition count."""
    names = names or TopicNames.for_prefix(settings.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names.all() if name not in existing]
        if missing:
            configs = names.configs(settings.inputs_retention_ms)
            try:
                await admin.create_topics([
                    NewTopic(name, num_partitions=settings.topic_partitions,
                             replication_factor=settings.topic_replication_factor,
                             topic_configs=configs.get(name, {}))
                    for name in missing
                ])
            except TopicAlreadyExistsError:
                pass  # another worker created it between our list and create: fine
            logger.info("created topics %s with %d partitions", missing, settings.topic_partitions)
        inputs_config = await _topic_config(admin, names.inputs, ("retention.ms", "message.timestamp.type"))
        if inputs_config.get("message.timestamp.type", "LogAppendTime") != "LogAppendTime":
            logger.warning("topic %r stamps its records with the producers' clocks (message.timestamp.type=%s): "
                           "inputs from hosts whose clocks differ are timed differently; set it to LogAppendTime",
                           names.inputs, inputs_config["message.timestamp.type"])
        retention = int(inputs_config["retention.ms"]) if "retention.ms" in inputs_config else None
        if retention is not None and retention != settings.inputs_retention_ms and retention != -1:
            logger.warning("topic %r keeps inputs for %d ms only: a replay from its start will not see older "
                           "positions (PIPELINE_INPUTS_RETENTION_MS is %d; -1 keeps every input)",
                           names.inputs, retention, settings.inputs_retention_ms)
        order = {name: index for index, name in enumerate(names.all())}
        descriptions = await _describe_when_ready(admin, list(names.all()))
        # The brokers answer in any order; name the first topic of the pipeline's own order.
        for description in sorted(descriptions, key=lambda d: order.get(d["topic"], len(order))):
            count = len(description["partitions"])
            if count != settings.topic_partitions:
                raise TopologyError(
                    f"topic {description['topic']!r} has {count} partitions, the pipeline expects "
                    f"{settings.topic_partitions} (PIPELINE_TOPIC_PARTITIONS): keys would not be co-partitioned"
                )
    finally:
        await admin.close()


def sink_group(settings: Settings) -> str:
    """The PostgreSQL sink's consumer group on ``position-updates`` (the web's sink-lag gauge reads it too)."""
    return f"{settings.app_id}-postgres-sink"


def table_changelog_topic(settings: Settings) -> str:
    """The ``key_to_state`` table's changelog topic: Faust names it ``<app id>-<table>-changelog``."""
    return f"{settings.app_id}-key_to_state-changelog"


async def ensure_table_changelog(settings: Settings) -> str:
    """Creates the table's changelog topic when missing (compacted, co-partitioned); returns its name.

    Workers create it themselves on start; a replay onto a deployment where no worker ran
    yet must write the table before any worker exists.
    """
    topic = table_changelog_topic(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(topic, num_partitions=settings.topic_partitions,
                                                    replication_factor=settings.topic_replication_factor,
                                                    topic_configs={"cleanup.policy": "compact"})])
            except TopicAlreadyExistsError:
                pass
            await _describe_when_ready(admin, [topic])
    finally:
        await admin.close()
    return topic


async def _topic_config(admin: AIOKafkaAdminClient, topic: str, names: tuple[str, ...]) -> dict[str, str]:
    """The broker's values of the config entries ``names`` of ``topic`` (absent when it does not say)."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                             {name: None for name in names})])
    found: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            for entry in resource[4]:
                if entry[0] in names and entry[1] is not None:
                    found[entry[0]] = entry[1]
    return found


async def _retention_ms(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """``retention.ms`` of ``topic`` as the broker applies it (None when it cannot tell)."""
    value = (await _topic_config(admin, topic, ("retention.ms",))).get("retention.ms")
    return int(value) if value is not None else None


async def inputs_retention_ms(bootstrap_servers: str, topic: str) -> int | None:
    """``retention.ms`` of the inputs log (-1: forever); None when the broker does not say."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        return await _retention_ms(admin, topic)
    finally:
        await admin.close()


async def topic_partitions(bootstrap_servers: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty when it does not exist), from the brokers.

    A consumer's own metadata knows only the topics it has subscribed to or assigned, so
    tools that read a whole topic ask the admin client first.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if description.get("error_code", 0) != 0:
        return []
    return sorted(partition["partition"] for partition in description["partitions"])

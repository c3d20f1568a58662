"""`python -m streams.admin create-topics` (the compose `topics` service, the k8s Job) on the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.topics import TopicNames, inputs_retention_ms, topic_partitions

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]


def _create_topics(bootstrap: str, prefix: str, partitions: int, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PIPELINE_TOPIC_PREFIX": prefix,
           "PIPELINE_TOPIC_PARTITIONS": str(partitions), **env_overrides}
    return subprocess.run([sys.executable, "-m", "streams.admin", "create-topics", "--wait", "30"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env)


async def _delete(bootstrap: str, names: tuple[str, ...]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_suffix: str):
    prefix = f"deploy-{unique_suffix}-"
    yield prefix
    asyncio.run(_delete(kafka_bootstrap, TopicNames.for_prefix(prefix).all()))


def test_create_topics_creates_every_topic_with_the_partition_count_and_is_idempotent(kafka_bootstrap: str,
                                                                                      prefix: str):
    # Act
    first = _create_topics(kafka_bootstrap, prefix, 5)
    second = _create_topics(kafka_bootstrap, prefix, 5)

    # Assert
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    for topic in TopicNames.for_prefix(prefix).all():
        assert asyncio.run(topic_partitions(kafka_bootstrap, topic)) == list(range(5)), topic
    assert "have 5 partitions" in second.stdout


def test_create_topics_fails_on_topics_with_another_partition_count(kafka_bootstrap: str, prefix: str):
    # Arrange: topics made for 3 partitions, then a ConfigMap saying 4
    assert _create_topics(kafka_bootstrap, prefix, 3).returncode == 0

    # Act
    result = _create_topics(kafka_bootstrap, prefix, 4)

    # Assert: the Job fails, naming the topic and the variable; nothing was changed
    assert result.returncode == 1
    assert f"{prefix}position-inputs" in result.stderr and "PIPELINE_TOPIC_PARTITIONS" in result.stderr
    assert asyncio.run(topic_partitions(kafka_bootstrap, f"{prefix}position-inputs")) == [0, 1, 2]


def test_the_inputs_log_keeps_every_input_by_default_and_other_topics_the_brokers_retention(kafka_bootstrap: str,
                                                                                          prefix: str):
    # Act
    result = _create_topics(kafka_bootstrap, prefix, 2)

    # Assert: the source of truth is never trimmed by the broker's 7-day default
    names = TopicNames.for_prefix(prefix)
    assert result.returncode == 0, result.stderr
    assert asyncio.run(inputs_retention_ms(kafka_bootstrap, names.inputs)) == -1
    assert asyncio.run(inputs_retention_ms(kafka_bootstrap, names.commands)) == 7 * 24 * 3600 * 1000


def test_the_inputs_retention_is_configurable(kafka_bootstrap: str, prefix: str):
    # Act
    result = _create_topics(kafka_bootstrap, prefix, 2, PIPELINE_INPUTS_RETENTION_MS=str(30 * 24 * 3600 * 1000))

    # Assert
    assert result.returncode == 0, result.stderr
    assert asyncio.run(inputs_retention_ms(kafka_bootstrap, TopicNames.for_prefix(prefix).inputs)) == 2592000000

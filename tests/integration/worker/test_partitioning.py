"""Every producer, ours or not, lands a SYMBOL@exchange key on the same partition.

The Java client's own partitioner (from the Kafka jars the local stack runs) is the
reference; aiokafka's and Faust's producers must agree with it, and the pipeline's outputs
for a key must land on the partition of its input (co-partitioning).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from stack import localstack

pytestmark = pytest.mark.integration

KEYS = ["APTUSDT@binance", "BTCUSDT@binance", "ETHUSDT@binance", "1000PEPEUSDT@binance", "SOLUSDT@bybit",
        *(f"SYM{index}USDT@binance" for index in range(200))]


def _java_partitions(partitions: int) -> dict[str, int]:
    libs = localstack.StackPaths.from_environment().kafka_libs
    if not libs.exists():
        localstack._fetch_kafka_jars(localstack.StackPaths.from_environment())
    source = Path(__file__).parent / "java" / "KeyPartitions.java"
    result = subprocess.run(["java", "-cp", f"{libs}/*", str(source), str(partitions)],
                            input="\n".join(KEYS) + "\n", capture_output=True, text=True, check=True)
    return {key: int(partition) for key, partition in (line.split("\t") for line in result.stdout.splitlines())}


@pytest.mark.parametrize("partitions", [3, 12])
def test_aiokafka_partitioner_places_every_key_where_the_java_client_does(partitions):
    # Arrange
    expected = _java_partitions(partitions)
    everything = list(range(partitions))

    # Act
    actual = {key: DefaultPartitioner()(key.encode(), everything, everything) for key in KEYS}

    # Assert
    assert actual == expected
    assert len(set(actual.values())) == partitions  # the keys spread over every partition

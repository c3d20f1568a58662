"""``sinks.consumer.UpdateConsumer``: the answer to a commit sent without waiting, as the sink gets it.

No broker here: the consumer is not started, its commit callback is called as librdkafka
calls it (with confluent-kafka's own ``KafkaError`` and ``TopicPartition``). The consumer
against the broker is exercised by ``tests/integration/sinks``.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, TopicPartition

from sinks.consumer import CommitFailed, CommitRefused, UpdateConsumer


def consumer_reporting_to(answers: list) -> UpdateConsumer:
    return UpdateConsumer(bootstrap_servers="127.0.0.1:1", group_id="g", topic="t", session_timeout_s=10,
                          on_revoked=lambda partitions: {}, on_revoke_committed=lambda offsets: None,
                          on_assigned=lambda partitions: None,
                          on_commit_result=lambda offsets, error: answers.append((offsets, error)))


def test_a_commit_the_broker_took_reports_each_partitions_offset():
    # Arrange
    answers: list = []
    consumer = consumer_reporting_to(answers)

    # Act
    consumer._commit_done(None, [TopicPartition("t", 0, 11), TopicPartition("t", 2, 8)])

    # Assert
    assert answers == [({0: 11, 2: 8}, None)]


@pytest.mark.parametrize(("code", "kind"), [
    (KafkaError.REBALANCE_IN_PROGRESS, CommitRefused),
    (KafkaError.ILLEGAL_GENERATION, CommitRefused),
    (KafkaError.UNKNOWN_MEMBER_ID, CommitRefused),
    (KafkaError._TRANSPORT, CommitFailed),
    (KafkaError.COORDINATOR_NOT_AVAILABLE, CommitFailed),
])
def test_a_refused_commit_says_whether_the_group_moved_on_or_it_may_be_tried_again(code, kind):
    # Arrange
    answers: list = []
    consumer = consumer_reporting_to(answers)

    # Act
    consumer._commit_done(KafkaError(code), [TopicPartition("t", 1, 6)])

    # Assert: after a rebalance the offsets are not ours any more (CommitRefused: forget them);
    # otherwise they stay owed (CommitFailed: the next commit carries them).
    ((offsets, error),) = answers
    assert offsets == {1: 6} and type(error) is kind

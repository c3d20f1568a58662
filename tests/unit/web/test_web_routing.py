"""Routing of keys to the worker that owns them, merging the workers' parts, and the bearer check."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.settings import Settings
from streams.web.auth import bearer_token_matches
from streams.web.routing import (
    LocalAnswer,
    is_valid_key,
    merge_local_answers,
    owner_of,
    partition_for_key,
    partitions_by_owner,
    same_node,
)
from streams.web.server import advertised_url

CHANGELOG = "position-pipeline-key_to_state-changelog"


@pytest.mark.parametrize("key", ["APTUSDT@binance", "BTCUSDT@binance", "X@y", "1000PEPEUSDT@binance"])
@pytest.mark.parametrize("partitions", [1, 3, 4, 12])
def test_partition_for_key_is_the_java_clients_murmur2_partition(key, partitions):
    # Arrange
    everything = list(range(partitions))

    # Act / Assert
    assert partition_for_key(key.encode(), partitions) == DefaultPartitioner()(key.encode(), everything, everything)


def test_owners_come_from_the_assignment_map_of_the_changelog_topic_only():
    # Arrange: what app.router.tables_metadata() returns, plus an idle worker.
    metadata = {
        "http://127.0.0.1:7001": {CHANGELOG: [0, 2], "other-changelog": [1]},
        "http://127.0.0.1:7002": {CHANGELOG: [1, 3]},
        "http://127.0.0.1:7003": {},
    }

    # Act
    owners = partitions_by_owner(metadata, CHANGELOG)

    # Assert
    assert owners == {"http://127.0.0.1:7001": frozenset({0, 2}), "http://127.0.0.1:7002": frozenset({1, 3})}
    assert owner_of(3, owners) == "http://127.0.0.1:7002"
    assert owner_of(0, owners) == "http://127.0.0.1:7001"
    assert owner_of(4, owners) is None
    assert owner_of(0, {}) is None


def test_same_node_compares_host_and_port_like_faust():
    assert same_node("http://127.0.0.1:7001", "http://127.0.0.1:7001/")
    assert not same_node("http://127.0.0.1:7001", "http://127.0.0.1:7002")
    assert not same_node("http://10.0.0.1:7001", "http://127.0.0.1:7001")


@pytest.mark.parametrize(("key", "valid"), [
    ("APTUSDT@binance", True), ("1000PEPEUSDT@binance", True), ("APTUSDT", False), ("@binance", False),
    ("APTUSDT@", False), ("A@b@c", False), ("APT USDT@binance", False), ("APT/USDT@binance", False),
])
def test_only_symbol_at_exchange_is_a_key(key, valid):
    assert is_valid_key(key) is valid


def _answer(node: str, partitions: set[int], ids: list[str]) -> LocalAnswer:
    return LocalAnswer(node=node, partitions=frozenset(partitions),
                       positions=tuple({"id": i, "opened_at": f"2026-01-01T00:00:0{n}.000Z"} for n, i in enumerate(ids)))


def test_merge_combines_every_workers_part_newest_first():
    # Act
    merged = merge_local_answers([_answer("a", {0, 2}, ["A@x/1", "B@x/4"]), _answer("b", {1, 3}, ["C@x/2"])], 4)

    # Assert
    assert merged.missing == frozenset()
    assert [p["id"] for p in merged.positions] == ["B@x/4", "C@x/2", "A@x/1"]  # by opened_at, then id


def test_merge_names_the_partitions_nobody_answered_for():
    # Act: worker b did not answer (or is not ready: it claims nothing).
    merged = merge_local_answers([_answer("a", {0, 2}, ["A@x/1"]), _answer("b", set(), [])], 4)

    # Assert
    assert merged.missing == frozenset({1, 3})


def test_merge_counts_a_position_claimed_twice_mid_rebalance_once():
    # Act
    merged = merge_local_answers([_answer("a", {0, 1}, ["A@x/1"]), _answer("b", {1, 2, 3}, ["A@x/1", "C@x/2"])], 4)

    # Assert
    assert sorted(p["id"] for p in merged.positions) == ["A@x/1", "C@x/2"]
    assert merged.missing == frozenset()


@pytest.mark.parametrize(("header", "token", "granted"), [
    (None, None, True),
    ("anything", None, True),
    ("Bearer s3cret", "s3cret", True),
    ("bearer s3cret", "s3cret", True),
    ("Bearer  s3cret ", "s3cret", True),
    (None, "s3cret", False),
    ("", "s3cret", False),
    ("Bearer", "s3cret", False),
    ("Bearer s3cre", "s3cret", False),
    ("Bearer s3cretX", "s3cret", False),
    ("Basic s3cret", "s3cret", False),
    ("s3cret", "s3cret", False),
    ("Bearer ünïcode", "ünïcode", True),
])
def test_bearer_token_check(header, token, granted):
    assert bearer_token_matches(header, token) is granted


def test_advertised_url_is_the_bound_address_unless_told_otherwise():
    # Arrange
    base = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d"})

    # Act / Assert
    assert str(advertised_url(base)) == "http://127.0.0.1:6066"
    assert str(advertised_url(Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d", "WEB_HOST": "10.1.2.3",
         "WEB_BIND": "0.0.0.0", "WEB_PORT": "7000"}))) == "http://10.1.2.3:7000"
    wildcard = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d",
                                  "WEB_BIND": "0.0.0.0"})
    assert advertised_url(wildcard).host not in ("0.0.0.0", "")

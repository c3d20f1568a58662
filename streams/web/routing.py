"""Which worker answers for which key: partitions, owners, and checking a fan-out is complete.

A key's state lives on the worker that owns the key's partition of the table's changelog
(co-partitioned with ``position-inputs``: same key bytes, same partition count). Faust's
partition assignor publishes, with every assignment, which worker (by its canonical URL)
owns which changelog partition; ``app.router.tables_metadata()`` returns that map. The
functions here are pure so the routing rules can be tested without a cluster.

The partition of a key is computed here with the Java client's murmur2 (what aiokafka and
Faust use) rather than asked of Faust's producer: ``app.router.key_store`` needs the
producer to hold metadata for the changelog topic, which a worker that has not written to
its table yet does not have (it then fails with a ``TypeError``, not a routing answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.partitioner import murmur2
from yarl import URL

__all__ = [
    "ROUTED_HEADER",
    "LocalAnswer",
    "MergedAnswer",
    "is_valid_key",
    "merge_local_answers",
    "owner_of",
    "partition_for_key",
    "partitions_by_owner",
    "same_node",
]

#: Header a worker sets on a request it forwards to a peer; the peer answers locally,
#: whatever its own map says, so two workers with different maps mid-rebalance can
#: never bounce a request between them.
ROUTED_HEADER = "X-Positions-Routed-By"


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner gives ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def is_valid_key(key: str) -> bool:
    """True for ``SYMBOL@exchange`` with both parts non-empty and no whitespace or slash."""
    symbol, at, exchange = key.partition("@")
    if not at or not symbol or not exchange or "@" in exchange:
        return False
    return not any(character.isspace() or character == "/" for character in key)


def partitions_by_owner(tables_metadata: Mapping[str, Mapping[str, Iterable[int]]],
                        changelog_topic: str) -> dict[str, frozenset[int]]:
    """``{owner URL: partitions of changelog_topic it owns}`` from the router's host map.

    Owners with no partition of the topic (an idle worker) are left out.
    """
    owners: dict[str, frozenset[int]] = {}
    for url, topics in tables_metadata.items():
        partitions = frozenset(topics.get(changelog_topic, ()))
        if partitions:
            owners[str(url)] = partitions
    return owners


def owner_of(partition: int, owners: Mapping[str, frozenset[int]]) -> str | None:
    """The URL of the worker owning ``partition``, or None when no worker does (no assignment yet)."""
    for url, partitions in owners.items():
        if partition in partitions:
            return url
    return None


def same_node(url_a: str | URL, url_b: str | URL) -> bool:
    """True when two web server URLs name the same host and port (as Faust's router compares)."""
    a, b = URL(str(url_a)), URL(str(url_b))
    return (a.host or "", a.port or 80) == (b.host or "", b.port or 80)


@dataclass(frozen=True)
class LocalAnswer:
    """One worker's positions: the live ones of the partitions it owns and has recovered."""

    node: str
    partitions: frozenset[int]
    positions: tuple[dict, ...]


@dataclass(frozen=True)
class MergedAnswer:
    """The positions of every partition that answered, and the partitions none answered for."""

    positions: list[dict]
    missing: frozenset[int]


def merge_local_answers(answers: Iterable[LocalAnswer], partitions: int) -> MergedAnswer:
    """Combines the workers' answers; a partition two workers both claim counts once.

    A partition claimed twice can only happen mid-rebalance (the old owner answered before
    it saw its revocation). Both hold the same changelog-backed state for it, so the first
    answer's positions for it are kept and the second's dropped: position ids are unique,
    and rows are de-duplicated by id.
    """
    covered: set[int] = set()
    seen_ids: set[str] = set()
    positions: list[dict] = []
    for answer in answers:
        covered |= answer.partitions
        for position in answer.positions:
            if position["id"] in seen_ids:
                continue
            seen_ids.add(position["id"])
            positions.append(position)
    missing = frozenset(range(partitions)) - covered
    positions.sort(key=lambda p: (p["opened_at"], p["id"]), reverse=True)
    return MergedAnswer(positions=positions, missing=missing)

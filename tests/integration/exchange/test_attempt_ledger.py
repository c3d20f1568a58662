"""The order-attempt ledger on the real broker: the log orders racing claims, and a process
that starts later learns every attempt made before it, including by processes now gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from streams.exchange.attempts import AttemptKind, KafkaAttemptLedger
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

pytestmark = pytest.mark.integration

AT_MS = 1_761_173_440_000


@pytest.fixture
async def ledger_topic(kafka_bootstrap, unique_suffix) -> str:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, database_url="postgresql://unused@127.0.0.1/x",
                        topic_prefix=f"ledger-{unique_suffix}.", topic_partitions=3)
    await ensure_topics(settings)
    return TopicNames.for_prefix(settings.topic_prefix).order_attempts


@pytest.fixture
async def ledgers(kafka_bootstrap, ledger_topic) -> AsyncIterator:
    started: list[KafkaAttemptLedger] = []

    async def start(name: str) -> KafkaAttemptLedger:
        ledger = KafkaAttemptLedger(kafka_bootstrap, ledger_topic, executor=name)
        await ledger.start()
        started.append(ledger)
        return ledger

    yield start
    for ledger in started:
        await ledger.stop()


async def test_two_processes_claiming_one_id_at_once_are_ordered_by_the_log(ledgers):
    # Arrange
    first, second = await ledgers("host-a/1/aa"), await ledgers("host-b/2/bb")

    # Act
    claims = await asyncio.gather(first.claim("ppe1-race", "K@x/1", AttemptKind.SEND, AT_MS),
                                  second.claim("ppe1-race", "K@x/1", AttemptKind.SEND, AT_MS + 1))

    # Assert: exactly one sees the other before it; that one must wait.
    earlier_seen = sorted(len(claim.earlier) for claim in claims)
    assert earlier_seen == [0, 1]
    later = max(claims, key=lambda claim: claim.record.offset)
    (seen,) = later.earlier
    assert seen.executor != later.record.executor and seen.kind is AttemptKind.SEND


async def test_a_process_started_later_learns_the_attempts_and_fences_of_one_that_is_gone(ledgers):
    # Arrange: a process sends, another fences, both go away.
    gone = await ledgers("host-a/1/aa")
    await gone.claim("ppe1-learn", "K@x/1", AttemptKind.SEND, AT_MS)
    await gone.claim("ppe1-learn", "K@x/1", AttemptKind.FENCE, AT_MS + 5)
    await gone.stop()

    # Act
    successor = await ledgers("host-b/2/bb")
    claim = await successor.claim("ppe1-learn", "K@x/1", AttemptKind.SEND, AT_MS + 10_000)

    # Assert
    assert [(r.kind, r.at_ms, r.executor) for r in claim.earlier] == [
        (AttemptKind.SEND, AT_MS, "host-a/1/aa"), (AttemptKind.FENCE, AT_MS + 5, "host-a/1/aa")]
    assert claim.fenced
    assert claim.sends_still_landing(AT_MS + 10_000, settle_ms=8000) == ()
    assert claim.sends_still_landing(AT_MS + 7_999, settle_ms=8000) == (claim.earlier[0],)


async def test_a_withdrawn_claim_is_skipped_by_its_own_process_only(ledgers):
    # Arrange
    own, other = await ledgers("host-a/1/aa"), await ledgers("host-b/2/bb")
    unsent = await own.claim("ppe1-withdraw", "K@x/1", AttemptKind.SEND, AT_MS)
    own.withdraw(unsent.record)

    # Act
    own_next = await own.claim("ppe1-withdraw", "K@x/1", AttemptKind.SEND, AT_MS + 1)
    other_next = await other.claim("ppe1-withdraw", "K@x/1", AttemptKind.SEND, AT_MS + 2)

    # Assert: the other process cannot know it was never sent, so it waits its window out.
    assert own_next.earlier == ()
    assert [r.offset for r in other_next.earlier] == [unsent.record.offset, own_next.record.offset]

"""The open-positions page's feed of what was turned away: the latest refusals and dead letters.

``GET /refusals/`` answers ``{"refusals": [...], "dead_letters": [...], "problems": [...]}``,
newest first, and the page shows both under the positions. Each half comes from where it is
kept whole, so every worker answers the same:

- **refusals** from PostgreSQL: ``monitoring.position_events`` rows whose decision is
  ``refused`` (a second open while one is live, a close with nothing to close, ...), with
  their stable ``refusal_code``, through a partial index of refusals only (migration 0005).
  They are as current as the sink (``pipeline_sink_lag_records``).
- **dead letters** from the topic ``position-dead-letters`` itself: each worker follows it
  from a little before its end (``DeadLetterTail``, no consumer group, nothing committed)
  and keeps the newest ones in memory, so a letter any process wrote (the ingest, a
  worker, the sink) shows within a second, and a restarted worker shows the latest again.

A part that cannot be read (PostgreSQL away, the topic not there yet) is named in
``problems`` beside the other part; the feed never fails the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.edge.backoff import Backoff
from streams.telemetry import metrics
from streams.topics import topic_partitions
from streams.web.history import HistoryUnavailable, PositionHistory
from streams.web.render import iso_utc
from streams.wire import serde

__all__ = ["FEED_SIZE", "DeadLetterTail", "read_feed", "read_refusals"]

logger = logging.getLogger(__name__)

#: How many refusals and how many dead letters the feed holds.
FEED_SIZE = 20
#: How many characters of a dead letter's original bytes the feed shows (as text, undecodable bytes replaced).
PREVIEW_CHARS = 160

_REFUSALS = """
SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at, key, position_id, kind,
       refusal_code, reason, event_id, input_offset AS "offset"
FROM monitoring.position_events
WHERE decision = 'refused'
ORDER BY time DESC, key, input_offset DESC
LIMIT $1
"""


async def read_refusals(history: PositionHistory, limit: int = FEED_SIZE) -> list[dict[str, Any]]:
    """The newest refusals in the audit log; ``HistoryUnavailable`` when PostgreSQL cannot answer."""
    pool = await history.connections()
    try:
        async with pool.acquire() as connection:
            rows = await connection.fetch(_REFUSALS, limit)
    except asyncpg.UndefinedColumnError as error:
        raise HistoryUnavailable(f"the database schema is older than this worker (start the sink, it migrates "
                                 f"it): {error}") from error
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise HistoryUnavailable(f"PostgreSQL is unavailable: {type(error).__name__}: {error}") from error
    return [dict(row) for row in rows]


async def read_feed(history: PositionHistory, tail: DeadLetterTail) -> dict[str, Any]:
    """The page's feed: refusals (PostgreSQL) and dead letters (the topic), and what could not be read."""
    problems = []
    try:
        refusals = await read_refusals(history)
    except HistoryUnavailable as error:
        refusals = []
        problems.append(f"refusals: {error}")
    if tail.problem:
        problems.append(f"dead letters: {tail.problem}")
    return {"refusals": refusals, "dead_letters": tail.latest(), "problems": problems}


def dead_letter_to_json(partition: int, offset: int, value: bytes | None) -> dict[str, Any]:
    """One record of the dead-letter topic as the feed shows it; one that cannot be decoded says so."""
    where = {"partition": partition, "offset": offset}
    try:
        letter = serde.decode_dead_letter(value or b"")
    except Exception as error:  # noqa: BLE001 - a bad record of the dead-letter topic is shown, not fatal
        return {**where, "at": None, "ts": None, "key": None, "error_type": "UndecodableDeadLetter",
                "reason": f"{type(error).__name__}: {error}", "source": None, "preview": None}
    source = letter.source_topic if letter.source_offset < 0 else \
        f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
    return {
        **where, "at": iso_utc(letter.ts), "ts": letter.ts,
        "key": letter.key.decode("utf-8", errors="replace") if letter.key else None,
        "error_type": letter.error_type, "reason": letter.reason, "source": source,
        "preview": letter.value[:PREVIEW_CHARS].decode("utf-8", errors="replace") if letter.value else None,
    }


class DeadLetterTail:
    """The newest dead letters of the topic, kept in memory by following it from a little before its end.

    Reads every partition without a consumer group (so it commits nothing and moves no one's
    offsets) starting ``keep`` records before each partition's end, then follows. A failure
    is logged, counted (``pipeline_edge_failures_total{component="dead_letter_feed"}``), shown
    in the feed's ``problems`` and retried with backoff; the letters already held stay shown.
    """

    def __init__(self, bootstrap_servers: str, topic: str, keep: int = FEED_SIZE) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._keep = keep
        self._letters: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None
        #: Why the tail is not following right now (None while it follows).
        self.problem: str | None = "not started"
        #: Set once the tail has read up to the ends it found at its (latest) start.
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        """Starts following in the background (it retries on its own)."""
        self._task = asyncio.create_task(self._follow_for_good(), name="dead-letter-tail")

    async def stop(self) -> None:
        """Stops following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def latest(self) -> list[dict[str, Any]]:
        """The newest dead letters, newest first."""
        return list(self._letters)

    async def _follow_for_good(self) -> None:
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await self._follow(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - logged, counted, shown in the feed, retried
                delay = backoff.next_delay()
                self.problem = f"following {self._topic} failed ({type(error).__name__}: {error}); retrying"
                logger.warning("dead-letter feed: following %s failed (%s: %s); again in %.0fs", self._topic,
                               type(error).__name__, error, delay)
                metrics.observe_edge_failure("dead_letter_feed", "follow")
                await asyncio.sleep(delay)

    async def _follow(self, backoff: Backoff) -> None:
        partitions = await topic_partitions(self._bootstrap, self._topic)
        if not partitions:
            raise LookupError(f"topic {self._topic} does not exist yet")
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            assigned = [TopicPartition(self._topic, p) for p in partitions]
            consumer.assign(assigned)
            starts = await consumer.beginning_offsets(assigned)
            ends = await consumer.end_offsets(assigned)
            for partition in assigned:
                consumer.seek(partition, max(starts[partition], ends[partition] - self._keep))
            self.problem = None
            backoff.reset()
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                fresh = [dead_letter_to_json(record.partition, record.offset, record.value)
                         for records in batch.values() for record in records]
                if fresh:
                    self._hold(fresh)
                if not self.caught_up.is_set() and await _reached(consumer, ends):
                    self.caught_up.set()
        finally:
            await consumer.stop()

    def _hold(self, fresh: list[dict[str, Any]]) -> None:
        """Keeps the newest ``keep`` letters (a restart reads some again: each is kept once)."""
        held = {(letter["partition"], letter["offset"]): letter for letter in (*self._letters, *fresh)}
        newest = sorted(held.values(), key=lambda letter: (letter["ts"] or 0, letter["partition"], letter["offset"]),
                        reverse=True)
        self._letters = newest[:self._keep]


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """True once the consumer's position is at or past ``ends`` on every partition."""
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return False
    return True

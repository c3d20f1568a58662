"""The sink process killed by -9 right after a batch's transaction committed, before its offsets.

The sink sends its offset commit after the rows are durable and writes the next batch while
the broker answers, so a crash there leaves rows in PostgreSQL whose offsets Kafka never
got. The next sink reads those records again: the rows must come out exactly as one
uninterrupted run leaves them (versions guard the positions, audit rows are written once per
natural key), and the offsets must reach the end.
"""

from __future__ import annotations

import os
import signal
import time

import asyncpg
import pytest

from tests.integration.sink_support import (  # noqa: F401 - fresh_database is a fixture
    PARTITIONS,
    UpdateStream,
    assert_events_match,
    assert_rows_match,
    committed_offsets,
    create_topics,
    end_offsets,
    events_by_key,
    fresh_database,
    positions_by_id,
    publish_updates,
    sink_settings,
    wait_until,
)
from tests.integration.sinks.test_sink_pipeline import start_sink_process
from streams.topics import sink_group

pytestmark = pytest.mark.integration


async def test_a_sink_killed_between_a_commit_to_postgres_and_its_offsets_converges_after_a_restart(
        kafka_bootstrap, fresh_database, unique_suffix, tmp_path):
    # Arrange: a stream of many small batches, all published before the sink starts.
    stream = UpdateStream.lives(keys=8, cycles=6)
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix)
    topics = await create_topics(settings)
    await publish_updates(kafka_bootstrap, topics.updates, stream.updates)
    small_batches = {"PIPELINE_SINK_BATCH_SIZE": "15", "PIPELINE_SINK_LINGER_S": "0"}
    watcher = await asyncpg.connect(fresh_database)

    async def events_written() -> int:
        if not await watcher.fetchval("SELECT to_regclass('monitoring.position_events') IS NOT NULL"):
            return 0
        return await watcher.fetchval("SELECT count(*) FROM monitoring.position_events")

    # Act: kill -9 the moment a transaction's rows become visible (its offsets at best in flight).
    first = start_sink_process(kafka_bootstrap, fresh_database, settings.app_id, tmp_path / "sink-1.log",
                               partitions=PARTITIONS, extra_env=small_batches)
    try:
        deadline = time.monotonic() + 60
        while (written := await events_written()) < 30:
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "sink-1.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait(30)
    committed_at_kill = await committed_offsets(kafka_bootstrap, sink_group(settings), topics.updates)
    second = start_sink_process(kafka_bootstrap, fresh_database, settings.app_id, tmp_path / "sink-2.log",
                                partitions=PARTITIONS, extra_env=small_batches)
    try:
        ends = {p: o for p, o in (await end_offsets(kafka_bootstrap, topics.updates)).items() if o > 0}

        async def all_committed() -> bool:
            return await committed_offsets(kafka_bootstrap, sink_group(settings), topics.updates) == ends

        await wait_until(all_committed, 90, "the second sink to commit every offset")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    await watcher.close()

    # Assert: the kill came mid-stream, and the rows are those of one uninterrupted run.
    assert 30 <= written < len(stream.audits())
    assert sum(committed_at_kill.values()) < sum(ends.values())
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())

"""PostgreSQL stopped mid-stream and started again: the sink waits, catches up and skips nothing.

The test runs its own throwaway PostgreSQL (``stack.localstack`` with private paths and a
free port), so stopping it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import localstack
from tests.integration.sink_support import (
    RunningSink,
    UpdateStream,
    assert_events_match,
    assert_rows_match,
    committed_offsets,
    create_topics,
    events_by_key,
    positions_by_id,
    publish_updates,
    sink_settings,
    wait_until,
)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[localstack.StackPaths, str]]:
    """A PostgreSQL of this test alone: (its paths, its URL); stopped and removed afterwards."""
    paths = localstack.StackPaths(root=tmp_path / "stack", cache=tmp_path / "cache")
    paths.root.mkdir(parents=True)
    # ensure_postgres takes the recorded port: a free one, never the shared stack's.
    (paths.root / "postgres-port.json").write_text(json.dumps({"port": _free_port()}))
    url = localstack.ensure_postgres(paths)
    try:
        yield paths, url
    finally:
        localstack.stop_postgres(paths)
        # As root the cluster may live outside tmp_path (see localstack._postgres_home).
        if paths.postgres.is_symlink():
            shutil.rmtree(paths.postgres.resolve(), ignore_errors=True)


async def test_postgres_stopped_mid_stream_and_started_again_loses_nothing(
        kafka_bootstrap, unique_suffix, private_postgres):
    # Arrange: a sink writing to the private server; a stream published in three parts.
    paths, url = private_postgres
    stream = UpdateStream.lives(keys=8, cycles=4)
    third = len(stream.updates) // 3
    parts = [stream.updates[:third], stream.updates[third:2 * third], stream.updates[2 * third:]]
    settings = sink_settings(kafka_bootstrap, url, unique_suffix, sink_batch_size=25, sink_max_backoff_s=1.0)
    topics = await create_topics(settings)

    async with RunningSink(settings, health_interval_s=1.0) as sink:
        group = sink.sink.group_id
        await publish_updates(kafka_bootstrap, topics.updates, parts[0])
        await sink.wait_written(len(parts[0]))

        # Act 1: stop the server while the second part streams in (some batch is in flight).
        publishing = asyncio.create_task(publish_slowly(kafka_bootstrap, topics.updates, parts[1]))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(localstack.stop_postgres, paths)
        await publishing
        await publish_updates(kafka_bootstrap, topics.updates, parts[2])
        await wait_until(lambda: sink.stats.retries >= 3, 60, "the sink to retry")
        written_while_down = sink.stats.records_written
        committed_while_down = await committed_offsets(kafka_bootstrap, group, topics.updates)
        retries_then = sink.stats.retries
        await wait_until(lambda: sink.stats.retries >= retries_then + 2, 60, "two more failed attempts")

        # Assert 1: nothing more is written or committed while the server is down.
        assert sink.stats.records_written == written_while_down < len(stream.updates)
        assert await committed_offsets(kafka_bootstrap, group, topics.updates) == committed_while_down
        assert sum(committed_while_down.values()) == written_while_down
        assert sink.stats.waiting_since is not None

        # Act 2: start it again (same data folder, same port).
        await asyncio.to_thread(localstack.ensure_postgres, paths)
        await sink.wait_written(len(stream.updates), timeout_s=90)

        # Assert 2: caught up, every offset committed (the commit follows the write it records).
        async def all_committed() -> bool:
            return sum((await committed_offsets(kafka_bootstrap, group, topics.updates)).values()) \
                == len(stream.updates)

        await wait_until(all_committed, 30, "every written offset committed")
        assert sink.stats.reconnects >= 1 and sink.stats.waiting_since is None

    # Assert 3: complete and correct: every position's final state, every audit row.
    assert_rows_match(await positions_by_id(url), stream.positions())
    assert_events_match(await events_by_key(url), stream.audits())


async def publish_slowly(bootstrap: str, topic: str, updates: list) -> None:
    """Publishes in small slices so batches are being written while the server goes away."""
    for start in range(0, len(updates), 10):
        await publish_updates(bootstrap, topic, updates[start:start + 10])
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)


async def test_the_sink_started_while_postgres_is_down_waits_and_then_migrates_and_writes(
        kafka_bootstrap, unique_suffix, private_postgres):
    # Arrange: the server is down before the sink starts.
    paths, url = private_postgres
    stream = UpdateStream.lives(keys=2, cycles=2)
    settings = sink_settings(kafka_bootstrap, url, unique_suffix, sink_max_backoff_s=0.5)
    topics = await create_topics(settings)
    await publish_updates(kafka_bootstrap, topics.updates, stream.updates)
    await asyncio.to_thread(localstack.stop_postgres, paths)

    async with RunningSink(settings) as sink:
        await wait_until(lambda: sink.stats.retries >= 2, 30, "the sink to retry connecting")
        assert sink.stats.records_written == 0

        # Act
        await asyncio.to_thread(localstack.ensure_postgres, paths)
        await sink.wait_written(len(stream.updates), timeout_s=60)

    # Assert
    assert_rows_match(await positions_by_id(url), stream.positions())
    assert_events_match(await events_by_key(url), stream.audits())

"""Replay from offset 0 rebuilds the table and monitoring.positions exactly, row for row.

The real worker runs a scripted history (an active position, a rolled-back and reopened
one, a closed one, an adopted one) and the real sink writes PostgreSQL. Then the workers
stop, the database tables are emptied by the replay command itself (``--truncate-sink``),
and ``python -m streams replay --from-offset 0`` rebuilds the table from position-inputs and
re-drives the sink. The rebuilt table (on its changelog) and the rows equal the originals,
and a worker started afterwards, on its old data dir or an empty one, serves that table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg
import pytest

from streams.domain import Side, Status
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from streams.web.render import position_to_json
from tests.integration.pipeline_harness import (
    REPO_ROOT,
    InputSender,
    PipelineWorker,
    ScriptedExchange,
    UpdatesTap,
    changelog_states,
)
from tests.integration.sink_support import (  # noqa: F401 - fresh_database is a fixture
    fresh_database,
    positions_by_id,
    wait_until,
)
from tests.integration.test_sink_pipeline import close_signal, exchange_script, start_sink_process

pytestmark = pytest.mark.integration


def run_replay(bootstrap: str, database_url: str, app_id: str,
               arguments: tuple[str, ...] = ("--from-offset", "0", "--truncate-sink")) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
                   "PIPELINE_APP_ID": app_id, "PIPELINE_TOPIC_PREFIX": f"{app_id}.",
                   "PIPELINE_TOPIC_PARTITIONS": "3", "PIPELINE_EXCHANGE_EDGE": "off",
                   "PIPELINE_ENTRY_TIMEOUT_S": "5", "PIPELINE_STOP_LOSS_TIMEOUT_S": "5",
                   "PIPELINE_CLOSE_TIMEOUT_S": "5", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "streams", "replay", "--no-progress", *arguments],
                          cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)


async def test_replay_from_offset_zero_rebuilds_the_table_and_rows_and_restarted_workers_serve_it(
        kafka_bootstrap, fresh_database, unique_suffix, tmp_path):
    # Arrange: an original run, worker + sink, until the sink has written every state.
    app_id = f"replay-{unique_suffix}"
    worker = PipelineWorker(kafka_bootstrap, app_id, tmp_path / "data", tmp_path / "worker.log")
    await worker.start()
    sink = start_sink_process(kafka_bootstrap, fresh_database, app_id, tmp_path / "sink.log")
    updates = await UpdatesTap(kafka_bootstrap, worker.topics.updates).start()
    inputs = await InputSender(kafka_bootstrap, worker.topics.inputs).start()
    exchange = await ScriptedExchange(kafka_bootstrap, worker.topics.commands, inputs, exchange_script()).start()

    async def wait_status(key: str, status: Status) -> None:
        await updates.wait_for(lambda: (p := updates.latest(key)) is not None and p.status == status, 60,
                               f"{key} {status.value}; log:\n{worker.log_tail(2000)}")

    try:
        await inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="rp-apt-1")
        await wait_status("APTUSDT@binance", Status.ACTIVE)
        await inputs.open("BADUSDT", Side.SELL, "5", signal_id="rp-bad-1")
        await wait_status("BADUSDT@binance", Status.ROLLED_BACK)
        await inputs.open("BADUSDT", Side.SELL, "5", signal_id="rp-bad-2")
        await wait_status("BADUSDT@binance", Status.ACTIVE)
        await inputs.send(close_signal("BADUSDT", "rp-bad-3"))
        await wait_status("BADUSDT@binance", Status.CLOSED)
        await inputs.snapshot("ADOPTUSDT", Side.BUY, "3.25", "101.5")
        await wait_status("ADOPTUSDT@binance", Status.ACTIVE)
        expected_versions = {p.id: p.version for p in updates.positions()}

        async def sink_caught_up() -> bool:
            try:
                rows = await positions_by_id(fresh_database)
            except asyncpg.UndefinedTableError:  # the sink has not migrated the database yet
                return False
            return {i: r["version"] for i, r in rows.items()} == expected_versions

        await wait_until(sink_caught_up, 60, "the sink to write the original run")
    finally:
        await exchange.stop()
        await inputs.stop()
        await updates.stop()
        worker.stop()
        sink.send_signal(signal.SIGTERM)
        await asyncio.to_thread(sink.wait, 60)
    original_rows = await positions_by_id(fresh_database)
    changelog = f"{app_id}-key_to_state-changelog"
    original_table = await changelog_states(kafka_bootstrap, changelog)

    # Act: replay (it empties the tables first), then the sink catches up on the re-drive.
    result = await asyncio.to_thread(run_replay, kafka_bootstrap, fresh_database, app_id)
    assert result.returncode == 0, result.stdout + result.stderr
    rows_right_after_replay = await positions_by_id(fresh_database)
    sink = start_sink_process(kafka_bootstrap, fresh_database, app_id, tmp_path / "sink-after.log")
    try:
        await wait_until(lambda: _rows_equal(fresh_database, original_rows), 60, "the sink to rebuild the rows")
    finally:
        sink.send_signal(signal.SIGTERM)
        await asyncio.to_thread(sink.wait, 60)
    replayed_table = await changelog_states(kafka_bootstrap, changelog)

    # Assert
    assert rows_right_after_replay == {}  # truncated: whatever is there now came from the replay
    assert await positions_by_id(fresh_database) == original_rows
    assert replayed_table == original_table
    assert "replayed" in result.stdout and "positions by status" in result.stdout

    # Act, then assert: a worker restarted on its own data dir (its store now behind the
    # changelog the replay wrote) and one on an empty data dir both restore that table and
    # serve it.
    expected = sorted((position_to_json(state.live_position) for state in replayed_table.values()
                       if state.live_position is not None), key=lambda p: p["id"])
    assert expected, "the scripted history leaves live positions to serve"
    for data_dir in (tmp_path / "data", tmp_path / "empty-data"):
        restarted = PipelineWorker(kafka_bootstrap, app_id, data_dir, tmp_path / f"restart-{data_dir.name}.log")
        await restarted.start()
        try:
            status, served = await restarted.get_json("/positions/")
        finally:
            restarted.stop()
        assert status == 200, (data_dir.name, served, restarted.log_tail(3000))
        assert sorted(served, key=lambda p: p["id"]) == expected, data_dir.name
        assert "Error in recovery" not in restarted.log_path.read_text(errors="replace")


async def _rows_equal(database_url: str, expected: dict) -> bool:
    return await positions_by_id(database_url) == expected


async def test_replay_while_a_worker_runs_is_refused_and_changes_nothing(
        kafka_bootstrap, fresh_database, unique_suffix, tmp_path):
    # Arrange
    app_id = f"replay-busy-{unique_suffix}"
    worker = PipelineWorker(kafka_bootstrap, app_id, tmp_path / "data", tmp_path / "worker.log")
    await worker.start()
    try:
        # Act
        result = await asyncio.to_thread(run_replay, kafka_bootstrap, fresh_database, app_id)
    finally:
        worker.stop()

    # Assert
    assert result.returncode != 0
    assert "replay refused" in result.stderr + result.stdout and "stop every worker" in result.stderr + result.stdout


async def test_replay_not_from_offset_zero_refuses_to_truncate_the_sink_unless_told(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: a log with inputs, and a row in the sink that a partial replay could not rebuild.
    app_id = f"replay-partial-{unique_suffix}"
    await ensure_topics(Settings.from_env({}, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"{app_id}.",
                                          topic_partitions=3))
    inputs = await InputSender(kafka_bootstrap, TopicNames.for_prefix(f"{app_id}.").inputs).start()
    try:
        for index in range(4):
            await inputs.open(f"PART{index}USDT", Side.BUY, "1", signal_id=f"{unique_suffix}-{index}")
    finally:
        await inputs.stop()

    # Act
    refused = await asyncio.to_thread(run_replay, kafka_bootstrap, fresh_database, app_id,
                                      ("--from-offset", "1", "--truncate-sink"))
    allowed = await asyncio.to_thread(run_replay, kafka_bootstrap, fresh_database, app_id,
                                      ("--from-offset", "1", "--truncate-sink", "--allow-partial"))
    untruncated = await asyncio.to_thread(run_replay, kafka_bootstrap, fresh_database, app_id, ("--from-offset", "1"))

    # Assert
    assert refused.returncode != 0
    assert "--truncate-sink refused" in refused.stderr + refused.stdout and "--allow-partial" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert untruncated.returncode == 0, untruncated.stderr
    for result in (allowed, untruncated):
        assert "EMPTY table" in result.stdout and "positions opened before are missing" in result.stdout

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

from decimal import Decimal

import asyncpg
import pytest

from emulator.binance_usdm import BinanceUsdmEmulator
from streams.domain import Side, Status
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from streams.web.render import state_to_json
from tests.integration.pipeline_harness import (
    REPO_ROOT,
    InputSender,
    PipelineWorker,
    ScriptedExchange,
    UpdatesTap,
    changelog_states,
    fold_inputs_log,
    wait_until_applied,
)
from tests.integration.sink_support import (  # noqa: F401 - fresh_database is a fixture
    fresh_database,
    positions_by_id,
    wait_until,
)
from tests.integration.sinks.test_sink_pipeline import close_signal, exchange_script, start_sink_process

pytestmark = pytest.mark.integration


def run_replay(bootstrap: str, database_url: str, app_id: str,
               arguments: tuple[str, ...] = ("--from-offset", "0", "--truncate-sink"),
               **environment_overrides: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
                   "PIPELINE_APP_ID": app_id, "PIPELINE_TOPIC_PREFIX": f"{app_id}.",
                   "PIPELINE_TOPIC_PARTITIONS": "3", "PIPELINE_EXCHANGE_EDGE": "off",
                   "PIPELINE_ENTRY_TIMEOUT_S": "5", "PIPELINE_STOP_LOSS_TIMEOUT_S": "5",
                   "PIPELINE_CLOSE_TIMEOUT_S": "5", "PYTHONPATH": str(REPO_ROOT), **environment_overrides}
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
    expected = sorted((state_to_json(state) for state in replayed_table.values()
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
    assert allowed.returncode == 0 and allowed.stdout, (allowed.stdout, allowed.stderr[-3000:])
    assert untruncated.returncode == 0, untruncated.stderr
    for result in (allowed, untruncated):
        assert "EMPTY table" in result.stdout and "positions opened before are missing" in result.stdout


def unanswered_entries_script(silent_symbol: str):
    """Fills every entry but ``silent_symbol``'s (never answered; its query finds nothing) and accepts stops."""
    answer = exchange_script()

    async def script(command, inputs) -> None:
        from streams.domain import PlaceEntry

        if isinstance(command, PlaceEntry) and command.symbol == silent_symbol:
            return  # the answer is lost: the entry deadline queries the order
        await answer(command, inputs)

    return script


async def test_replays_in_environments_with_other_policies_decide_exactly_as_the_recorded_run(
        kafka_bootstrap, fresh_database, unique_suffix, tmp_path):
    # Arrange: a recorded run whose outcomes depend on the policy: a stop placed at the
    # DEFAULT stop-loss distance (2 %), and an entry rolled back after its 5 s deadline.
    app_id = f"replay-policy-{unique_suffix}"
    worker = PipelineWorker(kafka_bootstrap, app_id, tmp_path / "data", tmp_path / "worker.log",
                            extra_env={"DEFAULT_STOP_LOSS_PCT": "2"})
    await worker.start()
    updates = await UpdatesTap(kafka_bootstrap, worker.topics.updates).start()
    inputs = await InputSender(kafka_bootstrap, worker.topics.inputs).start()
    exchange = await ScriptedExchange(kafka_bootstrap, worker.topics.commands, inputs,
                                      unanswered_entries_script("BENCH2USDT")).start()
    emulator = BinanceUsdmEmulator()
    await emulator.start()
    try:
        # The signals go in the way an operator's do, through the ingest's CLI: the ingest
        # records its policy in each input (the worker records its own in reports and deadlines).
        for symbol, extra in (("BENCH1USDT", ()), ("BENCH2USDT", ("--stop-loss-pct", "3"))):
            published = await publish_with_the_cli(worker, emulator.base_url, "open", symbol, "BUY", "5", *extra)
            assert published.returncode == 0, published.stderr
        for key, status in (("BENCH1USDT@binance", Status.ACTIVE), ("BENCH2USDT@binance", Status.ROLLED_BACK)):
            await updates.wait_for(lambda k=key, s=status: (p := updates.latest(k)) is not None and p.status == s,
                                   60, f"{key} {status.value}; log:\n{worker.log_tail(2000)}")
        await wait_until_applied(kafka_bootstrap, app_id, worker.topics.inputs)
    finally:
        await emulator.stop()
        await exchange.stop()
        await inputs.stop()
        await updates.stop()
        worker.stop()
    changelog = f"{app_id}-key_to_state-changelog"
    original = await changelog_states(kafka_bootstrap, changelog)
    other_env = {"DEFAULT_STOP_LOSS_PCT": "7", "PIPELINE_ENTRY_TIMEOUT_S": "600", "PIPELINE_STOP_LOSS_TIMEOUT_S": "600",
                 "PIPELINE_CLOSE_TIMEOUT_S": "600"}

    # Act: replay in an environment with other deadlines and another default stop, then again
    # in the recorded run's; and fold the log under both.
    first = await asyncio.to_thread(run_replay, kafka_bootstrap, fresh_database, app_id, **other_env)
    after_first = await changelog_states(kafka_bootstrap, changelog)
    second = await asyncio.to_thread(run_replay, kafka_bootstrap, fresh_database, app_id)
    after_second = await changelog_states(kafka_bootstrap, changelog)
    base = PipelineWorker(kafka_bootstrap, app_id, tmp_path / "unused", tmp_path / "unused.log")
    fold_here = await fold_inputs_log(kafka_bootstrap, Settings.from_env(base.environment()))
    fold_elsewhere = await fold_inputs_log(kafka_bootstrap, Settings.from_env({**base.environment(), **other_env}))

    # Assert: the same table, states, commands and positions, whatever the environment says
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert after_first == after_second == original, _differences(after_first, original)
    assert original["BENCH1USDT@binance"].position.stop_loss_pct == Decimal("2")
    assert original["BENCH2USDT@binance"].position.status == Status.ROLLED_BACK
    assert fold_here.states == fold_elsewhere.states == original
    assert fold_here.commands == fold_elsewhere.commands
    assert fold_here.positions == fold_elsewhere.positions


def _differences(left: dict, right: dict) -> dict:
    """Field by field, what differs between two tables (for a readable failure)."""
    import dataclasses

    found = {}
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        if a == b:
            continue
        if a is None or b is None:
            found[key] = (a, b)
            continue
        for item in dataclasses.fields(a):
            x, y = getattr(a, item.name), getattr(b, item.name)
            if x != y and dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
                found[f"{key}.{item.name}"] = {f.name: (getattr(x, f.name), getattr(y, f.name))
                                               for f in dataclasses.fields(x) if getattr(x, f.name) != getattr(y, f.name)}
            elif x != y:
                found[f"{key}.{item.name}"] = (x, y)
    return found


async def publish_with_the_cli(worker: PipelineWorker, exchange_url: str, *arguments: str):
    """``python -m streams.ingest.cli ...`` with the worker's environment (its policy too)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.ingest.cli", *arguments, cwd=REPO_ROOT,
        env={**worker.environment(), "BINANCE_FUTURES_URL": exchange_url}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return subprocess.CompletedProcess(arguments, process.returncode, stdout.decode(), stderr.decode())

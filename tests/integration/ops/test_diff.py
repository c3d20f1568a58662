"""`python -m streams diff` on a recorded run: no difference with the same code and policy, exactly
the affected decisions with another policy, and nothing written anywhere.

The recorded run is the real worker deciding with a scripted exchange (entries filled at
10.00). One position is opened without a stop-loss percentage (the policy's default, 2 %
here, applies), another with 2.5 %. Deciding again with a 3 % default changes one decision
and only one: the stop-loss order placed when the first entry filled (9.80 -> 9.70), and
the audit reason that names its price.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from streams.domain import Side, Status
from tests.integration.pipeline_harness import (
    REPO_ROOT,
    InputSender,
    PipelineWorker,
    ScriptedExchange,
    UpdatesTap,
    wait_until_applied,
)
from tests.integration.sink_support import end_offsets
from tests.integration.sinks.test_sink_pipeline import exchange_script

pytestmark = pytest.mark.integration


def run_diff(worker: PipelineWorker, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", "diff", "--no-progress", *arguments], cwd=REPO_ROOT,
                          env={**worker.environment(), "PYTHONPATH": str(REPO_ROOT)}, capture_output=True,
                          text=True, timeout=300)


async def all_end_offsets(worker: PipelineWorker) -> dict[str, dict[int, int]]:
    topics = (*worker.topics.all(), f"{worker.app_id}-key_to_state-changelog")
    return {topic: await end_offsets(worker.bootstrap, topic) for topic in topics}


async def test_diff_lists_exactly_the_decisions_another_policy_changes_and_writes_nothing(
        kafka_bootstrap, unique_suffix, tmp_path):
    # Arrange: a recorded run, every input decided.
    app_id = f"diff-{unique_suffix}"
    worker = PipelineWorker(kafka_bootstrap, app_id, tmp_path / "data", tmp_path / "worker.log",
                            extra_env={"DEFAULT_STOP_LOSS_PCT": "2"})
    await worker.start()
    inputs = await InputSender(kafka_bootstrap, worker.topics.inputs).start()
    exchange = await ScriptedExchange(kafka_bootstrap, worker.topics.commands, inputs, exchange_script()).start()
    updates = await UpdatesTap(kafka_bootstrap, worker.topics.updates).start()
    try:
        await inputs.open("DEFUSDT", Side.BUY, "5", signal_id=f"{unique_suffix}-def", stop_loss_pct=None)
        await inputs.open("OWNUSDT", Side.BUY, "5", signal_id=f"{unique_suffix}-own", stop_loss_pct="2.5")
        for key in ("DEFUSDT@binance", "OWNUSDT@binance"):
            await updates.wait_for(lambda k=key: (p := updates.latest(k)) is not None and p.status == Status.ACTIVE,
                                   60, f"{key} active")
        await wait_until_applied(kafka_bootstrap, app_id, worker.topics.inputs)
    finally:
        await exchange.stop()
        await updates.stop()
        await inputs.stop()
        worker.stop()
    before = await all_end_offsets(worker)

    # Act
    same = await asyncio.to_thread(run_diff, worker)
    changed = await asyncio.to_thread(run_diff, worker, "--set", "default_stop_loss_pct=3", "--json",
                                      str(tmp_path / "diff.json"))
    after = await all_end_offsets(worker)

    # Assert: the same code and policy decide the same...
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 of 6 decided inputs decide differently" in same.stdout
    # ... a 3 % default changes the stop placed on DEFUSDT's fill, and nothing else.
    assert changed.returncode == 1, changed.stdout + changed.stderr
    report = json.loads((tmp_path / "diff.json").read_text())
    (difference,) = report["differences"]
    assert (difference["key"], difference["input_kind"], difference["changed"]) == \
        ("DEFUSDT@binance", "report", ["commands", "reason"])
    (recorded_stop,) = difference["recorded"]["commands"]
    (replayed_stop,) = difference["replayed"]["commands"]
    assert recorded_stop.startswith("PlaceStopLoss(") and "stop_price=9.80" in recorded_stop
    assert replayed_stop.startswith("PlaceStopLoss(") and "stop_price=9.70" in replayed_stop
    assert "9.80" in difference["recorded"]["reason"] and "9.70" in difference["replayed"]["reason"]
    assert report["changes_by_kind"] == {"commands": 1, "reason": 1}
    assert report["policy_overrides"] == {"default_stop_loss_pct": "3"}
    assert "DEFUSDT@binance" in changed.stdout and "1 of 6 decided inputs decide differently" in changed.stdout
    # ... and nothing was written: no topic grew.
    assert after == before
    assert os.path.exists(tmp_path / "diff.json")


async def test_diff_refuses_an_unknown_policy_field(kafka_bootstrap, unique_suffix, tmp_path):
    # Arrange
    worker = PipelineWorker(kafka_bootstrap, f"diff-bad-{unique_suffix}", tmp_path / "data", tmp_path / "w.log")

    # Act
    result = await asyncio.to_thread(run_diff, worker, "--set", "no_such_field=1")

    # Assert: a clear message, not a traceback; exit code other than 0 and 1
    assert result.returncode not in (0, 1)
    assert "unknown policy field 'no_such_field'" in result.stderr

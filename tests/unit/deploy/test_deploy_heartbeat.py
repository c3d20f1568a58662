"""streams.heartbeat (the sink's and the ingest's liveness file) and the parts of
``python -m streams.admin`` that need no broker. The probe commands are run exactly as
k8s/ and docker-compose.yml write them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from streams import heartbeat

REPO_ROOT = Path(__file__).resolve().parents[3]


def _probe(command: list[str], path: Path) -> subprocess.CompletedProcess:
    """A probe command from the manifests, its heartbeat path swapped for ``path``."""
    command = [sys.executable if part == "python" else part for part in command]
    command[command.index("check") + 1] = str(path)
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)


def _manifest_probe_commands() -> list[list[str]]:
    commands = []
    for name in ("sink-deployment.yaml", "ingest-deployment.yaml"):
        deployment = yaml.safe_load((REPO_ROOT / "k8s" / "base" / name).read_text())
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        commands += [container[probe]["exec"]["command"] for probe in ("livenessProbe", "readinessProbe")]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    commands += [compose["services"][name]["healthcheck"]["test"][1:] for name in ("sink", "ingest")]
    return commands


# --------------------------------------------------------------------------- touch / check


def test_touch_records_the_current_time_and_check_finds_it_fresh(tmp_path: Path):
    # Arrange
    path = tmp_path / "beat" / "sink"  # the directory is created

    # Act
    before = time.time()
    heartbeat.touch(path)

    # Assert
    assert before - 0.01 <= float(path.read_text()) <= time.time() + 0.01
    assert heartbeat.check(path, max_age_s=60)[0] is True


def test_touch_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path):
    # Act
    for stamp in (1000.0, 2000.0, 3000.0):
        heartbeat.touch(tmp_path / "ingest", now=stamp)

    # Assert
    assert [p.name for p in tmp_path.iterdir()] == ["ingest"]
    assert (tmp_path / "ingest").read_text() == "3000.000\n"


def test_check_reports_stale_missing_and_malformed_heartbeats(tmp_path: Path):
    # Arrange
    heartbeat.touch(tmp_path / "old", now=time.time() - 120)
    (tmp_path / "garbage").write_text("not a time\n")

    # Act
    stale = heartbeat.check(tmp_path / "old", max_age_s=60)
    missing = heartbeat.check(tmp_path / "none", max_age_s=60)
    malformed = heartbeat.check(tmp_path / "garbage", max_age_s=60)

    # Assert
    assert stale[0] is False and "more than 60s" in stale[1]
    assert missing[0] is False and "no heartbeat yet" in missing[1]
    assert malformed[0] is False and "unreadable" in malformed[1]


def test_heartbeat_touches_at_most_once_per_interval(tmp_path: Path):
    # Arrange
    beat = heartbeat.Heartbeat(tmp_path / "sink", min_interval_s=3600)

    # Act
    beat.beat()
    first = (tmp_path / "sink").read_text()
    (tmp_path / "sink").write_text("1.000\n")  # a second beat within the hour must not overwrite this
    beat.beat()

    # Assert
    assert float(first) > 1.0
    assert (tmp_path / "sink").read_text() == "1.000\n"


# --------------------------------------------------------------------------- the CLI, as probes run it


@pytest.mark.parametrize("command", _manifest_probe_commands(), ids=lambda c: c[4])
def test_probe_command_exits_0_on_a_fresh_heartbeat(command: list[str], tmp_path: Path):
    # Arrange
    heartbeat.touch(tmp_path / "beat")

    # Act
    result = _probe(command, tmp_path / "beat")

    # Assert
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", _manifest_probe_commands(), ids=lambda c: c[4])
def test_probe_command_exits_1_on_a_stale_or_missing_heartbeat(command: list[str], tmp_path: Path):
    # Arrange
    heartbeat.touch(tmp_path / "beat", now=time.time() - 61)

    # Act
    stale = _probe(command, tmp_path / "beat")
    missing = _probe(command, tmp_path / "missing")

    # Assert
    assert (stale.returncode, missing.returncode) == (1, 1)
    assert "more than 60s" in stale.stderr and "no heartbeat yet" in missing.stderr


def test_heartbeat_cli_touch_then_check(tmp_path: Path):
    # Act
    touched = subprocess.run([sys.executable, "-m", "streams.heartbeat", "touch", str(tmp_path / "b")], cwd=REPO_ROOT)
    checked = subprocess.run([sys.executable, "-m", "streams.heartbeat", "check", str(tmp_path / "b")],
                             capture_output=True, text=True, cwd=REPO_ROOT)

    # Assert
    assert (touched.returncode, checked.returncode) == (0, 0)
    assert "last heartbeat" in checked.stdout


def test_heartbeat_module_imports_nothing_heavy():
    # A probe runs every few seconds: the module must not pull Faust, Kafka or the database in.
    code = ("import sys, streams.heartbeat; heavy = {'faust', 'aiokafka', 'asyncpg', 'ccxt', 'streams.settings'}; "
            "print(sorted(heavy & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- streams.admin without a broker


def _admin(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.admin", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, env={**os.environ, **env})


def test_admin_without_a_command_is_a_usage_error():
    result = _admin(env={})
    assert result.returncode == 2
    assert "create-topics" in result.stderr


def test_admin_refuses_a_malformed_variable_naming_it(tmp_path: Path):
    result = _admin("create-topics", env={"PIPELINE_TOPIC_PARTITIONS": "twelve", "STACK_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "PIPELINE_TOPIC_PARTITIONS" in result.stderr


def test_admin_gives_up_when_kafka_never_answers(tmp_path: Path):
    # Arrange: a loopback port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # Act
    started = time.monotonic()
    result = _admin("create-topics", "--wait", "1", env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                                                         "STACK_DIR": str(tmp_path)})

    # Assert
    assert result.returncode == 1
    assert "Kafka error" in result.stderr
    assert time.monotonic() - started < 30


def test_beat_while_running_keeps_the_file_fresh_until_cancelled(tmp_path):
    import asyncio

    from streams.heartbeat import beat_while_running, check

    path = tmp_path / "heartbeat" / "sink"

    async def run_briefly() -> None:
        task = asyncio.create_task(beat_while_running(path, interval_s=0.01))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(run_briefly())

    fresh, _ = check(path, max_age_s=5)
    assert fresh

"""`make stack` is idempotent and `make stack-stop` ends exactly what it started.

Runs a second, private stack in a temporary folder (free ports, the shared jar cache) so the
stack the other tests use is left alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stack import localstack

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def test_stack_started_twice_reuses_processes_and_stop_ends_all_of_them(tmp_path, monkeypatch):
    # Arrange: free ports, so a stack already on 9092/5432 is not disturbed.
    for variable in ("STACK_KAFKA_PORT", "STACK_KAFKA_CONTROLLER_PORT", "STACK_POSTGRES_PORT"):
        monkeypatch.setenv(variable, str(localstack._free_port()))
    paths = localstack.StackPaths(root=tmp_path / "stack", cache=localstack.StackPaths.from_environment().cache)
    try:
        # Act
        first = localstack.ensure_running(paths)
        pids_after_first = localstack.status(paths)
        second = localstack.ensure_running(paths)
        pids_after_second = localstack.status(paths)
        postgres_children = _children_of(pids_after_second["postgres"])
    finally:
        localstack.stop(paths)
    pids_after_stop = localstack.status(paths)
    cluster_home = paths.postgres.resolve()
    localstack.purge(paths)

    # Assert
    assert first == second
    assert all(pids_after_first.values()), pids_after_first
    assert pids_after_first == pids_after_second
    assert pids_after_stop == {"kafka": None, "postgres": None}
    started = [pids_after_first["kafka"], pids_after_first["postgres"], *postgres_children]
    assert [pid for pid in started if _alive(pid)] == []
    assert first.env_lines() == [f"export KAFKA_BOOTSTRAP_SERVERS={first.kafka_bootstrap_servers}",
                                 f"export DATABASE_URL={first.database_url}"]
    assert not paths.root.exists() and not cluster_home.exists()  # purge leaves nothing behind


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children

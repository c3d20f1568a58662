"""A local Kafka (KRaft) and PostgreSQL for development and tests, without Docker.

Kafka runs from its Maven Central jars (fetched once into a cache folder, see
``stack/kafka/pom.xml``); PostgreSQL from the Debian packages. Everything the stack writes
(data, logs, pid files, chosen ports) lives under one git-ignored folder, ``.stack/``.

Starting is idempotent: a component whose recorded process still runs is reused. Stopping
ends exactly the processes recorded in the pid files, after checking that each pid still
belongs to the process we started (a recycled pid is left alone).

This module is the entry (``python -m stack``, the tests, the benchmarks): it starts and
stops the whole stack. The parts live beside it: ``layout`` (versions, folders, endpoints),
``processes`` (pids, ports, commands), ``kafka_broker`` and ``postgres_cluster``.
"""

from __future__ import annotations

import shutil

from stack.kafka_broker import ensure_kafka, fetch_kafka_jars, kafka_pid, stop_kafka
from stack.layout import KAFKA_VERSION, POSTGRES_MAJOR, StackEndpoints, StackError, StackPaths, log
from stack.postgres_cluster import DATABASE_NAME, ensure_postgres, postgres_pid, stop_postgres
from stack.processes import free_port, stack_lock

__all__ = [
    "DATABASE_NAME",
    "KAFKA_VERSION",
    "POSTGRES_MAJOR",
    "StackEndpoints",
    "StackError",
    "StackPaths",
    "ensure_kafka",
    "ensure_postgres",
    "ensure_running",
    "purge",
    "status",
    "stop",
    "stop_kafka",
    "stop_postgres",
]

# The old private names some tests still call (a private stack on free ports, the jar cache).
_free_port = free_port
_fetch_kafka_jars = fetch_kafka_jars


def ensure_running(paths: StackPaths | None = None) -> StackEndpoints:
    """Starts (or reuses) Kafka and PostgreSQL and records the variables in .stack/env."""
    paths = paths or StackPaths.from_environment()
    with stack_lock(paths):
        endpoints = StackEndpoints(
            kafka_bootstrap_servers=ensure_kafka(paths),
            database_url=ensure_postgres(paths),
        )
        (paths.root / "env").write_text("\n".join(endpoints.env_lines()) + "\n")
    return endpoints


def stop(paths: StackPaths | None = None) -> None:
    """Stops exactly the processes the stack started; data stays for the next start."""
    paths = paths or StackPaths.from_environment()
    if not paths.root.exists():
        log("nothing to stop: no stack folder")
        return
    with stack_lock(paths):
        stop_kafka(paths)
        stop_postgres(paths)
    log("stopped")


def purge(paths: StackPaths | None = None) -> None:
    """Stops the stack and removes all its data, the cluster kept in /var/tmp included."""
    paths = paths or StackPaths.from_environment()
    stop(paths)
    if paths.postgres.is_symlink():
        shutil.rmtree(paths.postgres.resolve(), ignore_errors=True)
    shutil.rmtree(paths.root, ignore_errors=True)
    log(f"removed {paths.root}")


def status(paths: StackPaths | None = None) -> dict[str, int | None]:
    """The pid of each running component, or None."""
    paths = paths or StackPaths.from_environment()
    return {"kafka": kafka_pid(paths), "postgres": postgres_pid(paths)}

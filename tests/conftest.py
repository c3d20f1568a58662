"""Session fixtures: the real Kafka broker and PostgreSQL every integration test runs against.

Order of preference, per service:
1. the variable is set (``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL``): use it, start nothing;
2. a Docker engine answers a ping: a testcontainers container;
3. otherwise the project's own local stack (``make stack``), started or reused.

A service that cannot be had fails the test session loudly: nothing here skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from stack import localstack


def _docker_engine_answers() -> bool:
    """True only when a Docker daemon answers; the CLI alone (`which docker`) is not enough."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no daemon, no socket, no permission: all mean "no engine"
        return False


@pytest.fixture(scope="session")
def stack_endpoints() -> Iterator[localstack.StackEndpoints]:
    """Bootstrap servers and database URL of real services, by the order of preference above."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if kafka and database:
        yield localstack.StackEndpoints(kafka, database)
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka_container, \
                PostgresContainer("postgres:16", driver=None) as postgres_container:
            yield localstack.StackEndpoints(
                kafka or kafka_container.get_bootstrap_server(),
                database or postgres_container.get_connection_url(),
            )
        return
    started = localstack.ensure_running()
    yield localstack.StackEndpoints(kafka or started.kafka_bootstrap_servers, database or started.database_url)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_endpoints: localstack.StackEndpoints) -> str:
    """``host:port[,host:port]`` of the real broker."""
    return stack_endpoints.kafka_bootstrap_servers


@pytest.fixture(scope="session")
def database_url(stack_endpoints: localstack.StackEndpoints) -> str:
    """``postgresql://`` URL of the real database."""
    return stack_endpoints.database_url


@pytest.fixture
def unique_suffix() -> str:
    """Keeps topics, groups and tables of one test apart from every other test and run."""
    return uuid.uuid4().hex[:10]

"""The ground every later test stands on is real: the broker, a Faust table's changelog, PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.pipeline_harness import create_plain_topics

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[tuple[str, str]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    received: list[tuple[str, str]] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(received) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    received.extend((r.key.decode(), r.value.decode()) for r in records)
    finally:
        await consumer.stop()
    return received


async def test_broker_produce_then_consume_keeps_every_record_in_key_order(kafka_bootstrap, unique_suffix):
    # Arrange
    topic = f"foundation-roundtrip-{unique_suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    sent = [(f"SYM{i % 4}USDT@binance", f"event-{i}") for i in range(40)]

    # Act
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in sent:
            await producer.send(topic, key=key.encode(), value=value.encode())
        await producer.flush()
    finally:
        await producer.stop()
    received = await _consume(kafka_bootstrap, topic, expected=len(sent))

    # Assert
    assert len(cluster["brokers"]) == 1
    assert sorted(received) == sorted(sent)
    for key in {k for k, _ in sent}:
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]


def _start_counting_worker(bootstrap: str, app_id: str, datadir: Path, log_path: Path) -> subprocess.Popen:
    environment = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "COUNTING_APP_ID": app_id,
                   "COUNTING_APP_DATADIR": str(datadir), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "tests.apps.counting_app", "worker", "--loglevel", "info",
         "--without-web"],
        cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL,
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def _stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


async def _send_events(bootstrap: str, topic: str, key: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for index in range(count):
            # Faust's str key/value serializer is raw UTF-8, like ours.
            await producer.send_and_wait(topic, key=key.encode(), value=f"tick-{index}".encode())
    finally:
        await producer.stop()


async def _wait_for_log_line(log_path: Path, line: str, occurrences: int, timeout_s: float) -> None:
    """Waits until ``line`` is in the workers' log ``occurrences`` times; fails with the log's end otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while log_path.read_text(errors="replace").count(line) < occurrences:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{line!r} not {occurrences} times in the workers' log in {timeout_s:.0f} s:\n"
                        f"{log_path.read_text(errors='replace')[-6000:]}")
        await asyncio.sleep(0.2)


async def _consume_or_show_log(bootstrap: str, topic: str, expected: int, log_path: Path) -> list[tuple[str, str]]:
    """``_consume`` within 90 s; on a timeout the test fails with the workers' log, the only witness."""
    try:
        return await _consume(bootstrap, topic, expected=expected, timeout_s=90)
    except TimeoutError:
        pytest.fail(f"fewer than {expected} counts on {topic} in 90 s; the workers' log ends:\n"
                    f"{log_path.read_text(errors='replace')[-6000:]}")


async def test_faust_table_is_recovered_from_its_changelog_after_worker_restart(
        kafka_bootstrap, unique_suffix, tmp_path):
    # Arrange
    app_id = f"foundation-counter-{unique_suffix}"
    log_path = tmp_path / "worker.log"
    # The table's changelog must match the source's partition count (co-partitioning).
    await create_plain_topics(kafka_bootstrap, [f"{app_id}-events", f"{app_id}-counts-out"], partitions=3)
    first = _start_counting_worker(kafka_bootstrap, app_id, tmp_path / "data-first", log_path)
    try:
        # Act: three events, then a restart with an empty data folder, then one more event.
        await _send_events(kafka_bootstrap, f"{app_id}-events", "APTUSDT@binance", 3)
        before_restart = await _consume_or_show_log(kafka_bootstrap, f"{app_id}-counts-out", 3, log_path)
    finally:
        _stop_worker(first)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()

    second = _start_counting_worker(kafka_bootstrap, app_id, tmp_path / "data-second", log_path)
    try:
        # Faust 0.15.3 can drop a record fetched while its recovery completes (the stream
        # partitions are resumed before the final seek, and the channel queues are emptied when
        # flow control resumes: clear_on_resume): a fourth event sent during the restart went
        # uncounted in 2 of 12 runs here, its offset never committed. The worker's agent fills
        # such holes itself (streams/worker/gaps.py, tests/integration/worker/test_input_holes.py);
        # this plain Faust app does not, and this test's subject is the changelog, so the event
        # goes in once the restarted worker is ready.
        await _wait_for_log_line(log_path, "[^Worker]: Ready", occurrences=2, timeout_s=90)
        await _send_events(kafka_bootstrap, f"{app_id}-events", "APTUSDT@binance", 1)
        after_restart = await _consume_or_show_log(kafka_bootstrap, f"{app_id}-counts-out", 4, log_path)
    finally:
        _stop_worker(second)

    # Assert: the restarted worker continued from 3, which only the changelog could tell it.
    assert f"{app_id}-event_counts-changelog" in topics, log_path.read_text()[-3000:]
    assert [value for _, value in before_restart] == ["1", "2", "3"], log_path.read_text()[-3000:]
    assert [value for _, value in after_restart] == ["1", "2", "3", "4"], log_path.read_text()[-3000:]


async def test_postgres_write_then_read_returns_exact_decimals(database_url, unique_suffix):
    # Arrange
    table = f"foundation_check_{unique_suffix}"
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(f"CREATE TABLE {table} (symbol text PRIMARY KEY, quantity numeric NOT NULL)")
        rows = [("APTUSDT", Decimal("61.8")), ("BTCUSDT", Decimal("0.001")), ("1000PEPEUSDT", Decimal("123456789.12345678"))]

        # Act
        await connection.executemany(f"INSERT INTO {table} (symbol, quantity) VALUES ($1, $2)", rows)
        read_back = await connection.fetch(f"SELECT symbol, quantity FROM {table} ORDER BY symbol")
        server_version = connection.get_server_version()
    finally:
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await connection.close()

    # Assert
    assert [(r["symbol"], r["quantity"]) for r in read_back] == sorted(rows)
    assert server_version.major >= 15

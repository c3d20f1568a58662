"""``python -m streams.ingest.cli`` as an operator runs it: a subprocess, the real broker, the emulator."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from emulator import BinanceUsdmEmulator, default_symbols
from streams.wire import serde
from streams.domain import InputEvent, Policy, Side, Signal, SignalAction
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tests.integration.pipeline_harness import free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 3
TIMEOUT_S = 60.0
PUBLISHED = re.compile(r"key=(?P<key>\S+) topic=(?P<topic>\S+) partition=(?P<partition>\d+) offset=(?P<offset>\d+)")


@pytest.fixture
async def emulator():
    """The Binance USD-M emulator with its real perpetuals, in-process (the CLI asks it for symbols)."""
    emulator = BinanceUsdmEmulator("127.0.0.1", 0, symbols=default_symbols(bench_count=0))
    await emulator.start()
    yield emulator
    await emulator.stop()


#: The policy the CLI runs with in the test that checks it is recorded in the input.
CLI_POLICY_ENV = {"DEFAULT_STOP_LOSS_PCT": "1.5", "PIPELINE_ENTRY_TIMEOUT_S": "12", "PIPELINE_STOP_LOSS_TIMEOUT_S": "13",
                  "PIPELINE_CLOSE_TIMEOUT_S": "14", "PIPELINE_SIGNAL_ID_RETENTION_S": "700000"}


@pytest.fixture
async def topics(kafka_bootstrap, unique_suffix, tmp_path) -> TopicNames:
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STACK_DIR": str(tmp_path),
                                  "PIPELINE_TOPIC_PREFIX": f"ingest-cli-{unique_suffix}.",
                                  "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS)})
    await ensure_topics(settings)
    return TopicNames.for_prefix(settings.topic_prefix)


@pytest.fixture
def run_cli(kafka_bootstrap, topics, emulator):
    """Runs the CLI with the test's topics and exchange; returns (exit code, stdout, stderr)."""

    async def run(*arguments: str, exchange_url: str | None = None,
                  extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
        env = {**os.environ, **(extra_env or {}), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
               "PIPELINE_TOPIC_PREFIX": topics.inputs.removesuffix("position-inputs"),
               "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS), "BINANCE_FUTURES_URL": exchange_url or emulator.base_url,
               "PYTHONPATH": str(REPO_ROOT)}
        # asyncio's subprocess, so the in-process emulator keeps answering while the CLI runs.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.ingest.cli", *arguments, cwd=REPO_ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
        return process.returncode, stdout.decode(), stderr.decode()

    return run


async def read_record(bootstrap: str, topic: str, partition: int, offset: int):
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        where = TopicPartition(topic, partition)
        consumer.assign([where])
        consumer.seek(where, offset)
        return await asyncio.wait_for(consumer.getone(), TIMEOUT_S)
    finally:
        await consumer.stop()


async def topic_is_empty(bootstrap: str, topic: str) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return all(offset == 0 for offset in (await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def test_cli_open_publishes_one_signal_and_prints_its_key_partition_and_offset(
        run_cli, kafka_bootstrap, topics, unique_suffix):
    # Arrange
    signal_id = f"cli-test-{unique_suffix}"

    # Act
    code, stdout, stderr = await run_cli("open", "APTUSDT", "BUY", "61.8", "--stop-loss-pct", "2.5",
                                         "--id", signal_id, "--ts", "1761173440983", extra_env=CLI_POLICY_ENV)

    # Assert
    assert code == 0, stderr
    printed = PUBLISHED.search(stdout)
    assert printed and (printed["key"], printed["topic"]) == ("APTUSDT@binance", topics.inputs), stdout
    record = await read_record(kafka_bootstrap, topics.inputs, int(printed["partition"]), int(printed["offset"]))
    assert record.key == b"APTUSDT@binance"
    event = serde.decode_input(record.value)
    # The signal keeps its own ts; the input is timed at receipt (deadlines count from it) and
    # carries the policy the CLI ran with, so a replay decides it as it was decided.
    assert event == InputEvent(
        f"signal:{signal_id}", "APTUSDT@binance", event.ts,
        Signal(signal_id, SignalAction.OPEN, "APTUSDT", "binance", Side.BUY, Decimal("61.8"), Decimal("2.5"),
               1761173440983),
        policy=Policy(default_stop_loss_pct=Decimal("1.5"), entry_timeout_ms=12_000, stop_loss_timeout_ms=13_000,
                      close_timeout_ms=14_000, signal_id_retention_ms=700_000_000))
    assert event.ts > 1761173440983


async def test_cli_close_publishes_a_close_with_a_generated_id(run_cli, kafka_bootstrap, topics):
    # Act
    code, stdout, stderr = await run_cli("close", "APTUSDT")

    # Assert
    assert code == 0, stderr
    printed = PUBLISHED.search(stdout)
    record = await read_record(kafka_bootstrap, topics.inputs, int(printed["partition"]), int(printed["offset"]))
    event = serde.decode_input(record.value)
    assert (event.key, event.payload.action, event.payload.side) == ("APTUSDT@binance", SignalAction.CLOSE, None)
    assert event.payload.signal_id.startswith("cli-") and event.event_id == f"signal:{event.payload.signal_id}"


@pytest.mark.parametrize(("arguments", "reason"), [
    (("open", "APTUSDT", "BUY", "0"), "'quantity' must be > 0, got \"0\""),
    (("open", "APTUSDT", "buy", "61.8"), "'side' must be \"BUY\" or \"SELL\", got \"buy\""),
    (("open", "APTUSDT", "BUY", "61.8", "--stop-loss-pct", "100"), "'stop_loss_pct' must be > 0 and < 100, got \"100\""),
    (("open", "APTUSDT", "BUY", "1e3"), "'quantity' must be a decimal string such as \"61.8\", got \"1e3\""),
    (("close", "APTUSDT", "--exchange", "kraken"), 'unknown exchange "kraken" (configured: binance)'),
    (("open", "DOGEUSDX", "BUY", "10"), 'unknown symbol "DOGEUSDX" on binance'),
])
async def test_cli_invalid_signal_exits_2_with_the_reason_and_publishes_nothing(
        run_cli, kafka_bootstrap, topics, arguments, reason):
    # Act
    code, stdout, stderr = await run_cli(*arguments)

    # Assert
    assert (code, stdout) == (2, "")
    assert stderr.strip() == f"refused: {reason}"
    assert await topic_is_empty(kafka_bootstrap, topics.inputs)


async def test_cli_exchange_unreachable_exits_3_and_publishes_nothing(run_cli, kafka_bootstrap, topics):
    # Act
    code, _stdout, stderr = await run_cli("open", "APTUSDT", "BUY", "61.8",
                                          exchange_url=f"http://127.0.0.1:{free_port()}")

    # Assert
    assert code == 3
    assert "cannot check the symbol" in stderr and "nothing was published" in stderr
    assert await topic_is_empty(kafka_bootstrap, topics.inputs)

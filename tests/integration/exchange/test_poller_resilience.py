"""The poller never stops silently: failures are logged, counted, shown by /ready, retried.

``TrackedKeys`` follows the table's changelog on the real broker, reached through a TCP relay
the test can cut (the broker itself keeps running for everyone else); ``PositionPoller``
fetches positions through the real ccxt client from the emulator, with faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from streams.wire import codec, serde
from streams.domain import InputEvent
from streams.edge.ccxt_client import create_binanceusdm
from streams.exchange.gateway import CcxtGateway
from streams.exchange.poller import PositionPoller, TrackedKeys
from streams.telemetry import health, metrics
from tests.unit.domain.domain_builders import feed_active

pytestmark = pytest.mark.integration


class Relay:
    """A TCP relay to the broker's bootstrap address that the test can close and reopen."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.server: asyncio.AbstractServer | None = None
        self.listen_port = 0

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.listen_port)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(Exception):
                sink.close()

        await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer))


def _failures(component: str, stage: str) -> float:
    return metrics.EDGE_FAILURES.labels(component=component, stage=stage)._value.get()


async def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def test_tracked_keys_follower_failing_is_logged_counted_shown_and_retried_until_it_catches_up(
        kafka_bootstrap, unique_suffix, caplog, monkeypatch):
    # Arrange: a changelog holding one active key; the broker unreachable at first.
    monkeypatch.setattr("streams.exchange.poller.BACKOFF_S", (0.2, 0.4))
    topic = f"resilience-{unique_suffix}-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    state = feed_active().state
    await producer.send_and_wait(topic, key=b"APTUSDT@binance",
                                 value=codec.encode("KeyState", serde.key_state_to_record(state)))
    await producer.stop()
    relay = Relay(kafka_bootstrap)
    await relay.open()
    bootstrap = relay.address
    await relay.close()
    before = _failures("poller", "follow_tracked_keys")
    tracked = TrackedKeys(bootstrap, topic)
    caplog.set_level(logging.ERROR, logger="streams.exchange.poller")

    try:
        # Act
        await tracked.start()
        await _wait(lambda: _failures("poller", "follow_tracked_keys") >= before + 2, 60, "two counted failures")
        shown = health.problems().get("tracked_keys")
        await relay.open()
        await asyncio.wait_for(tracked.caught_up.wait(), 60)
    finally:
        await tracked.stop()
        await relay.close()

    # Assert: logged, counted, shown by /ready's source, retried, then caught up and healthy.
    assert shown is not None and "failed" in shown
    assert "following the tracked keys" in caplog.text and "starting over" in caplog.text
    assert tracked.live_keys("binance") == {"APTUSDT@binance"}
    assert "tracked_keys" not in health.problems()


async def test_poll_failure_backs_off_is_counted_and_shown_then_recovers(monkeypatch):
    # Arrange: the real ccxt client against the emulator; a clock the test moves.
    exchange = BinanceUsdmEmulator()
    await exchange.start()
    gateway = CcxtGateway("binance", create_binanceusdm(exchange.base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET,
                                                        timeout_ms=2000))
    exchange.set_position("APTUSDT", "BUY", "10")
    published: list[InputEvent] = []
    now = [1_761_173_440_000]

    async def publish(event: InputEvent) -> None:
        published.append(event)

    poller = PositionPoller({"binance": gateway}, lambda exchange: set(), publish, lambda: now[0])
    before = _failures("poller", "fetch_positions")
    exchange.add_fault("http_error", count=None, method="GET", path="/fapi/v3/positionRisk", status=503)

    try:
        # Act
        failed = await poller.poll_once()
        shown = health.problems().get("poller:binance")
        now[0] += 500  # inside the first backoff (1 s): not even tried
        requests_before = len(exchange.requests(path="/fapi/v3/positionRisk"))
        skipped = await poller.poll_once()
        requests_after = len(exchange.requests(path="/fapi/v3/positionRisk"))
        exchange.clear_faults()
        now[0] += 1000
        recovered = await poller.poll_once()
    finally:
        await gateway.close()
        await exchange.stop()

    # Assert
    assert failed == {"binance": None} and skipped == {"binance": None}
    assert shown is not None and "position poll failed 1 time(s)" in shown
    assert _failures("poller", "fetch_positions") == before + 1
    assert requests_after == requests_before  # backed off
    assert recovered == {"binance": 1}
    assert [(e.payload.symbol, e.payload.quantity) for e in published] == [("APTUSDT", Decimal("10.0"))]
    assert "poller:binance" not in health.problems()


async def test_poll_whose_publish_fails_never_raises_and_is_counted():
    # Arrange: Kafka refuses the snapshot (a raising timer would stop polling for good).
    exchange = BinanceUsdmEmulator()
    await exchange.start()
    gateway = CcxtGateway("binance", create_binanceusdm(exchange.base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET))
    exchange.set_position("APTUSDT", "BUY", "10")

    async def publish(event: InputEvent) -> None:
        raise ConnectionError("broker gone")

    poller = PositionPoller({"binance": gateway}, lambda exchange: set(), publish, lambda: 1_761_173_440_000)
    before = _failures("poller", "publish")

    try:
        # Act
        result = await poller.poll_once()
    finally:
        await gateway.close()
        await exchange.stop()

    # Assert
    assert result == {"binance": None}
    assert _failures("poller", "publish") == before + 1
    assert "broker gone" in health.problems()["poller:binance"]
    health.set_healthy("poller:binance")

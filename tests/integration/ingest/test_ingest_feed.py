"""The signal ingest on the real broker, reading a real WebSocket server.

Each test has its own topics (``ingest-<suffix>.position-*``, 3 partitions). The feed is a
``websockets`` server in the test whose connections the test drives; the demo feed and the
``python -m streams.ingest`` entry point run with the Binance USD-M emulator for the
symbol list, through the real ccxt client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from websockets.asyncio.server import Server, ServerConnection, serve

from emulator import BinanceUsdmEmulator, default_symbols
from streams.wire import serde
from streams.domain import InputEvent, Side, Signal, SignalAction
from streams.edge.backoff import Backoff
from streams.ingest.demo_feed import DemoFeed
from streams.ingest.feed import SignalFeedClient
from streams.ingest.publish import KafkaPublisher
from streams.ingest.symbols import binance_directory
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.integration.pipeline_harness import TopicTap, free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 3
TIMEOUT_S = 30.0


class StaticSymbols:
    """The symbol list of the emulator's real perpetuals, without asking an exchange."""

    exchanges = frozenset({"binance"})

    def is_known_symbol(self, exchange: str, symbol: str) -> bool:
        return exchange == "binance" and symbol in {"APTUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"}

    async def refresh(self, exchange: str) -> bool:
        return False


class FeedServer:
    """A real WebSocket server; the test gets each connection the client makes and drives it."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self._server: Server | None = None
        self.url = ""

    async def start(self, port: int = 0) -> FeedServer:
        self._server = await serve(self._handle, "127.0.0.1", port)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, connection: ServerConnection) -> None:
        await self.connections.put(connection)
        await connection.wait_closed()

    async def next_connection(self) -> ServerConnection:
        return await asyncio.wait_for(self.connections.get(), TIMEOUT_S)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class InputsTap(TopicTap):
    """``position-inputs``, decoded on arrival: (record, InputEvent)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.events: list[tuple[object, InputEvent]] = []

    def on_record(self, record) -> None:
        self.events.append((record, serde.decode_input(record.value)))

    def ids(self) -> list[str]:
        return [event.event_id for _record, event in self.events]


class DeadLettersTap(TopicTap):
    """``position-dead-letters``, decoded on arrival: (record, DeadLetter)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.letters: list[tuple[object, serde.DeadLetter]] = []

    def on_record(self, record) -> None:
        self.letters.append((record, serde.decode_dead_letter(record.value)))


def expected_partition(key: bytes) -> int:
    everything = list(range(PARTITIONS))
    return DefaultPartitioner()(key, everything, everything)


def open_frame(signal_id: str, symbol: str, side: str, quantity: str, **extra) -> dict:
    return {"id": signal_id, "action": "open", "symbol": symbol, "exchange": "binance", "side": side,
            "quantity": quantity, "ts": 1761173440983, **extra}


@pytest.fixture
async def settings(kafka_bootstrap, unique_suffix, tmp_path) -> Settings:
    """Settings of a private set of topics on the real broker, created here."""
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STACK_DIR": str(tmp_path),
                                  "PIPELINE_TOPIC_PREFIX": f"ingest-{unique_suffix}.",
                                  "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS)})
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def taps(settings):
    """Taps on the test's position-inputs and position-dead-letters."""
    names = KafkaPublisher(settings).topics
    inputs = await InputsTap(settings.kafka_bootstrap_servers, names.inputs).start()
    dead_letters = await DeadLettersTap(settings.kafka_bootstrap_servers, names.dead_letters).start()
    yield inputs, dead_letters
    await inputs.stop()
    await dead_letters.stop()


@pytest.fixture
async def publisher(settings):
    """The ingest's real Kafka publisher on the test's topics."""
    publisher = KafkaPublisher(settings)
    await publisher.start()
    yield publisher
    await publisher.stop()


@pytest.fixture
async def feed_server():
    server = await FeedServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def emulator():
    """The Binance USD-M emulator with its real perpetuals, in-process."""
    emulator = BinanceUsdmEmulator("127.0.0.1", 0, symbols=default_symbols(bench_count=0))
    await emulator.start()
    yield emulator
    await emulator.stop()


class RunningClient:
    """A ``SignalFeedClient.run()`` task, stopped cleanly at the end of the test."""

    def __init__(self, client: SignalFeedClient) -> None:
        self.client = client
        self.task = asyncio.create_task(client.run())

    async def stop(self) -> None:
        self.client.stop()
        await asyncio.wait_for(self.task, TIMEOUT_S)


@pytest.fixture
async def start_client():
    running: list[RunningClient] = []

    def start(url: str, publisher, symbols=None) -> SignalFeedClient:
        client = SignalFeedClient(url, publisher, symbols or StaticSymbols(), backoff=Backoff(0.05, 0.2))
        running.append(RunningClient(client))
        return client

    yield start
    for each in running:
        await each.stop()


# --------------------------------------------------------------------------- frames


async def test_feed_valid_signals_bad_json_and_an_invalid_signal_in_an_array_go_to_inputs_and_dead_letters(
        settings, taps, publisher, feed_server, start_client):
    # Arrange
    inputs, dead_letters = taps
    client = start_client(feed_server.url, publisher)
    connection = await feed_server.next_connection()
    single = json.dumps(open_frame("s-apt", "APTUSDT", "BUY", "61.8", stop_loss_pct="2.5"))
    broken = '{"id": "s-broken", "action": "open", "symbol": '
    array = json.dumps([open_frame("s-btc", "BTCUSDT", "BUY", "0.002"),
                        open_frame("s-eth-bad", "ETHUSDT", "BUY", "-1"),
                        {"id": "s-apt-close", "action": "close", "symbol": "APTUSDT", "exchange": "binance",
                         "ts": 1761173500000}])

    # Act
    for frame in (single, broken, array):
        await connection.send(frame)
    await asyncio.wait_for(client.stats.wait_for(lambda s: s.published == 3 and s.dead_letters == 2), TIMEOUT_S)
    await inputs.wait_for(lambda: len(inputs.events) == 3, TIMEOUT_S, "3 inputs")
    await dead_letters.wait_for(lambda: len(dead_letters.letters) == 2, TIMEOUT_S, "2 dead letters")

    # Assert: the valid signals, decoded, on the partition of their key, in feed order per key
    by_id = {event.event_id: (record, event) for record, event in inputs.events}
    assert sorted(by_id) == ["signal:s-apt", "signal:s-apt-close", "signal:s-btc"]
    for record, event in inputs.events:
        assert record.key == event.key.encode() and record.partition == expected_partition(record.key)
    record, event = by_id["signal:s-apt"]
    # The input is timed at receipt (deadlines count from it); the signal keeps its own ts.
    assert event == InputEvent("signal:s-apt", "APTUSDT@binance", event.ts, Signal(
        "s-apt", SignalAction.OPEN, "APTUSDT", "binance", Side.BUY, Decimal("61.8"), Decimal("2.5"), 1761173440983))
    assert event.ts > 1761173440983
    assert by_id["signal:s-apt-close"][0].offset > record.offset
    assert by_id["signal:s-btc"][1].payload.quantity == Decimal("0.002")
    # ...and the refusals, with the reason and the original bytes
    letters = sorted(dead_letters.letters, key=lambda pair: pair[1].error_type)
    (json_record, json_letter), (quantity_record, quantity_letter) = letters
    assert (json_letter.error_type, json_letter.value, json_record.key) == ("invalid_json", broken.encode(), None)
    assert json_letter.reason.startswith("frame is not valid JSON: ")
    assert (quantity_letter.error_type, quantity_letter.reason, quantity_letter.value) == (
        "non_positive_quantity", "'quantity' must be > 0, got \"-1\" (item 1 of 3 in an array frame)", array.encode())
    assert quantity_record.key == b"ETHUSDT@binance"
    for _record, letter in letters:
        assert (letter.source_topic, letter.source_partition, letter.source_offset) == (feed_server.url, -1, -1)
    assert client.stats.connections == 1  # the connection went on


# --------------------------------------------------------------------------- reconnection


@pytest.mark.parametrize("drop", ["abort", "close"])
async def test_feed_connection_dropped_by_the_server_reconnects_and_signals_after_it_arrive(
        drop, settings, taps, publisher, feed_server, start_client):
    # Arrange
    inputs, _dead_letters = taps
    client = start_client(feed_server.url, publisher)
    first = await feed_server.next_connection()
    await first.send(json.dumps(open_frame("r-before", "APTUSDT", "BUY", "61.8")))
    await asyncio.wait_for(client.stats.wait_for(lambda s: s.published == 1), TIMEOUT_S)

    # Act: the server goes away (TCP reset without a close frame, or a clean close), then answers again
    if drop == "abort":
        first.transport.abort()
    else:
        await first.close(1001, "restarting")
    second = await feed_server.next_connection()
    await second.send(json.dumps(open_frame("r-after", "BTCUSDT", "SELL", "0.002")))
    await asyncio.wait_for(client.stats.wait_for(lambda s: s.published == 2), TIMEOUT_S)
    await inputs.wait_for(lambda: len(inputs.events) == 2, TIMEOUT_S, "2 inputs")

    # Assert
    assert sorted(inputs.ids()) == ["signal:r-after", "signal:r-before"]
    assert (client.stats.connections, client.stats.disconnects) == (2, 1)


async def test_feed_not_listening_at_start_is_retried_with_backoff_until_it_answers(
        settings, taps, publisher, start_client):
    # Arrange: a port nobody listens on yet
    inputs, _dead_letters = taps
    port = free_port()
    client = start_client(f"ws://127.0.0.1:{port}", publisher)
    await asyncio.wait_for(client.stats.wait_for(lambda s: s.connect_failures >= 2), TIMEOUT_S)

    # Act
    server = await FeedServer().start(port)
    try:
        connection = await server.next_connection()
        await connection.send(json.dumps(open_frame("late-feed", "SOLUSDT", "BUY", "3")))
        await asyncio.wait_for(client.stats.wait_for(lambda s: s.published == 1), TIMEOUT_S)
        await inputs.wait_for(lambda: len(inputs.events) == 1, TIMEOUT_S, "1 input")
    finally:
        await server.stop()

    # Assert
    assert inputs.ids() == ["signal:late-feed"]
    assert client.stats.connections == 1


# --------------------------------------------------------------------------- the demo feed


async def test_demo_feed_served_and_consumed_end_to_end_publishes_its_script(
        settings, taps, publisher, emulator, start_client):
    # Arrange: the demo feed at full speed; symbols from the emulator through the real ccxt client
    inputs, dead_letters = taps
    directory = binance_directory(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                                                     "BINANCE_FUTURES_URL": emulator.base_url}))
    await directory.load()
    demo = DemoFeed("127.0.0.1", 0, interval_s=0, run_id="demo-test")
    url = await demo.start()

    try:
        # Act
        client = start_client(url, publisher, directory)
        await asyncio.wait_for(client.stats.wait_for(lambda s: s.published == 7 and s.dead_letters == 3), TIMEOUT_S)
        await inputs.wait_for(lambda: len(inputs.events) == 7, TIMEOUT_S, "7 inputs")
        await dead_letters.wait_for(lambda: len(dead_letters.letters) == 3, TIMEOUT_S, "3 dead letters")
    finally:
        await demo.stop()
        await directory.close()

    # Assert: scenario B (delivered twice, byte for byte), the open in flight, the close
    apt = [(record, event) for record, event in inputs.events if event.key == "APTUSDT@binance"]
    assert [event.event_id for _record, event in apt] == ["signal:demo-test-apt-open", "signal:demo-test-apt-open",
                                                          "signal:demo-test-apt-close"]
    (first, opened), (again, opened_again), _close = apt
    assert (opened.payload.side, opened.payload.quantity, opened.payload.stop_loss_pct) == (
        Side.BUY, Decimal("61.8"), Decimal("2.5"))
    # The same signal twice (only the receipt time differs): the state machine drops the second by its id.
    assert opened_again.payload == opened.payload and first.key == again.key
    eth = [event.event_id for _record, event in inputs.events if event.key == "ETHUSDT@binance"]
    assert eth == ["signal:demo-test-eth-open", "signal:demo-test-eth-open-in-flight"]
    assert {event.key for _record, event in inputs.events} == {"APTUSDT@binance", "BTCUSDT@binance",
                                                              "ETHUSDT@binance", "SOLUSDT@binance"}
    assert sorted((letter.error_type, record.key) for record, letter in dead_letters.letters) == [
        ("invalid_json", None), ("non_positive_quantity", b"SOLUSDT@binance"), ("unknown_symbol", b"NOSUCHUSDT@binance")]
    assert {letter.source_topic for _record, letter in dead_letters.letters} == {url}


async def test_ingest_entry_point_without_signals_url_plays_the_demo_feed_waits_for_the_exchange_and_stops_on_sigterm(
        settings, taps):
    # Arrange: the worker's emulator is not up yet when the ingest starts
    inputs, dead_letters = taps
    emulator_port = free_port()
    env = {name: value for name, value in os.environ.items()
           if name not in ("SIGNALS_WS_URL", "BINANCE_FUTURES_URL", "BINANCE_API_KEY", "BINANCE_API_SECRET")}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                "PIPELINE_TOPIC_PREFIX": settings.topic_prefix, "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS),
                "EMULATOR_PORT": str(emulator_port), "DEMO_FEED_PORT": "0", "DEMO_FEED_INTERVAL_S": "0",
                "PIPELINE_INGEST_MAX_BACKOFF_S": "1", "PYTHONPATH": str(REPO_ROOT)})
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "streams.ingest", cwd=REPO_ROOT, env=env,
                                                   stdin=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
    log: list[str] = []
    waiting_for_exchange = asyncio.Event()

    async def read_log() -> None:
        async for line in process.stderr:
            log.append(line.decode(errors="replace"))
            if "cannot load markets" in log[-1]:
                waiting_for_exchange.set()

    reader = asyncio.create_task(read_log())
    emulator = BinanceUsdmEmulator("127.0.0.1", emulator_port, symbols=default_symbols(bench_count=0))
    try:
        await asyncio.wait_for(waiting_for_exchange.wait(), TIMEOUT_S)

        # Act: the exchange comes up; the ingest then reads the whole demo script; then SIGTERM
        await emulator.start()
        await inputs.wait_for(lambda: len(inputs.events) == 7, TIMEOUT_S, "7 inputs")
        await dead_letters.wait_for(lambda: len(dead_letters.letters) == 3, TIMEOUT_S, "3 dead letters")
        process.send_signal(signal.SIGTERM)
        return_code = await asyncio.wait_for(process.wait(), TIMEOUT_S)
        await reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await emulator.stop()

    # Assert
    text = "".join(log)
    assert return_code == 0, text
    assert "SIGNALS_WS_URL unset: playing the built-in demo feed at ws://127.0.0.1:" in text
    assert "signal feed client stopped" in text
    assert len({event.event_id for _record, event in inputs.events}) == 6  # one delivered twice


async def test_a_second_ingest_on_the_host_follows_the_demo_feed_the_first_one_plays(settings, taps):
    # Arrange: the first pipeline's demo feed and emulator already hold their ports
    inputs, _dead_letters = taps
    demo = DemoFeed("127.0.0.1", 0, interval_s=0, run_id="shared-demo")
    url = await demo.start()
    demo_port = int(url.rsplit(":", 1)[1])
    emulator = BinanceUsdmEmulator("127.0.0.1", 0, symbols=default_symbols(bench_count=0))
    await emulator.start()
    env = {name: value for name, value in os.environ.items()
           if name not in ("SIGNALS_WS_URL", "BINANCE_FUTURES_URL", "BINANCE_API_KEY", "BINANCE_API_SECRET")}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                "PIPELINE_TOPIC_PREFIX": settings.topic_prefix, "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS),
                "EMULATOR_PORT": str(emulator.port), "DEMO_FEED_PORT": str(demo_port),
                "PIPELINE_INGEST_MAX_BACKOFF_S": "1", "PYTHONPATH": str(REPO_ROOT)})
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "streams.ingest", cwd=REPO_ROOT, env=env,
                                                   stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        # Act: the second ingest cannot bind the demo port, so it listens to the feed there
        await inputs.wait_for(lambda: len(inputs.events) == 7, TIMEOUT_S, "7 inputs")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), TIMEOUT_S)
        log = (await process.stderr.read()).decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await demo.stop()
        await emulator.stop()

    # Assert: the first pipeline's run, signal ids and all
    assert process.returncode == 0, log
    assert "following the demo feed another pipeline on this host plays there" in log
    assert {event.event_id for _record, event in inputs.events} >= {"signal:shared-demo-apt-open",
                                                                    "signal:shared-demo-apt-close"}

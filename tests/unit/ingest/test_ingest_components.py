"""The feed client's frame handling, backoff, symbol directory and demo script, without a broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from decimal import Decimal

import pytest

from emulator.binance_usdm import REAL_SYMBOLS
from streams.wire import serde
from streams.domain import SignalAction
from streams.edge.backoff import Backoff
from streams.ingest.demo_feed import demo_script
from streams.ingest.exceptions import IngestError, InvalidFrame, InvalidSignal, PublishFailed, SymbolsUnavailable
from streams.ingest.feed import SignalFeedClient, display_url
from streams.ingest.publish import Delivery
from streams.ingest.symbols import SymbolDirectory
from streams.ingest.validation import parse_frame, validate_signal
from streams.settings import Settings, SettingsError
from streams.topics import TopicNames

FEED_URL = "ws://feed.example:9000/signals"


class RecordingPublisher:
    """A ``Publisher`` keeping every record; fails the first ``failures`` sends."""

    def __init__(self, failures: int = 0) -> None:
        self.topics = TopicNames.for_prefix("")
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self.failures = failures
        self.attempts = 0

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise PublishFailed(f"{topic}: KafkaTimeoutError")
        self.records.append((topic, key, value))
        return Delivery(topic, 0, len(self.records) - 1)

    def inputs(self):
        return [(key, serde.decode_input(value)) for topic, key, value in self.records if topic == "position-inputs"]

    def dead_letters(self):
        return [(key, serde.decode_dead_letter(value)) for topic, key, value in self.records
                if topic == "position-dead-letters"]


class StubSymbols:
    """A ``SymbolSource`` with a fixed list; a refresh adds ``listed_later``."""

    def __init__(self, symbols: Iterable[str], listed_later: Iterable[str] = (), refresh_allowed: bool = True) -> None:
        self.symbols = set(symbols)
        self.listed_later = set(listed_later)
        self.refresh_allowed = refresh_allowed
        self.refreshes = 0
        self.exchanges = frozenset({"binance"})

    def is_known_symbol(self, exchange: str, symbol: str) -> bool:
        return exchange == "binance" and symbol in self.symbols

    async def refresh(self, exchange: str) -> bool:
        if not self.refresh_allowed:
            return False
        self.refreshes += 1
        self.symbols |= self.listed_later
        return True


def open_signal(signal_id: str, symbol: str = "APTUSDT", quantity: str = "61.8") -> dict:
    return {"id": signal_id, "action": "open", "symbol": symbol, "exchange": "binance", "side": "BUY",
            "quantity": quantity, "stop_loss_pct": "2.5", "ts": 1761173440983}


def client_for(publisher: RecordingPublisher, symbols: StubSymbols | None = None) -> SignalFeedClient:
    return SignalFeedClient(FEED_URL, publisher, symbols or StubSymbols({"APTUSDT", "BTCUSDT", "ETHUSDT"}),
                            backoff=Backoff(0.001, 0.002), wall_clock_ms=lambda: 1761173999000)


# --------------------------------------------------------------------------- frames


async def test_handle_frame_array_with_an_invalid_signal_publishes_the_valid_ones_in_order_and_dead_letters_it():
    # Arrange
    publisher = RecordingPublisher()
    client = client_for(publisher)
    frame = json.dumps([open_signal("a"), open_signal("b", "BTCUSDT", "0"), open_signal("c", "ETHUSDT", "0.01")])

    # Act
    await client.handle_frame(frame)

    # Assert
    inputs = publisher.inputs()
    assert [(key, event.event_id, event.payload.quantity) for key, event in inputs] == [
        (b"APTUSDT@binance", "signal:a", Decimal("61.8")), (b"ETHUSDT@binance", "signal:c", Decimal("0.01"))]
    ((key, letter),) = publisher.dead_letters()
    assert key == b"BTCUSDT@binance"
    assert letter == serde.DeadLetter(source_topic=FEED_URL, source_partition=-1, source_offset=-1, key=None,
                                      value=frame.encode(), error_type="non_positive_quantity",
                                      reason="'quantity' must be > 0, got \"0\" (item 1 of 3 in an array frame)",
                                      ts=1761173999000)
    assert (client.stats.frames, client.stats.published, client.stats.dead_letters) == (1, 2, 1)


async def test_handle_frame_not_json_dead_letters_the_original_bytes_and_the_next_frame_goes_on():
    # Arrange
    publisher = RecordingPublisher()
    client = client_for(publisher)
    broken = '{"id": "x", "action": "open", "symbol": "APTUSDT"'

    # Act
    await client.handle_frame(broken)
    await client.handle_frame(json.dumps(open_signal("after")))

    # Assert
    ((key, letter),) = publisher.dead_letters()
    assert key is None
    assert (letter.error_type, letter.value) == ("invalid_json", broken.encode())
    assert letter.reason.startswith("frame is not valid JSON: ")
    assert [event.event_id for _key, event in publisher.inputs()] == ["signal:after"]


async def test_handle_frame_binary_frame_is_dead_lettered_as_sent():
    # Arrange
    publisher = RecordingPublisher()
    client = client_for(publisher)

    # Act
    await client.handle_frame(b"\x00\x01binary")

    # Assert
    ((_key, letter),) = publisher.dead_letters()
    assert (letter.error_type, letter.value) == ("invalid_frame", b"\x00\x01binary")


async def test_handle_frame_symbol_listed_since_the_last_load_is_published_after_a_refresh():
    # Arrange
    publisher = RecordingPublisher()
    symbols = StubSymbols({"APTUSDT"}, listed_later={"NEWUSDT"})
    client = client_for(publisher, symbols)

    # Act
    await client.handle_frame(json.dumps(open_signal("new", "NEWUSDT", "5")))

    # Assert
    assert symbols.refreshes == 1
    assert [key for key, _event in publisher.inputs()] == [b"NEWUSDT@binance"]


async def test_handle_frame_unknown_symbol_with_refresh_not_due_is_dead_lettered_with_the_reason():
    # Arrange
    publisher = RecordingPublisher()
    client = client_for(publisher, StubSymbols({"APTUSDT"}, listed_later={"NEWUSDT"}, refresh_allowed=False))

    # Act
    await client.handle_frame(json.dumps(open_signal("new", "NEWUSDT", "5")))

    # Assert
    ((key, letter),) = publisher.dead_letters()
    assert (key, letter.error_type, letter.reason) == (b"NEWUSDT@binance", "unknown_symbol",
                                                       'unknown symbol "NEWUSDT" on binance')
    assert publisher.inputs() == []


async def test_handle_frame_kafka_not_acknowledging_is_retried_until_it_does():
    # Arrange
    publisher = RecordingPublisher(failures=3)
    client = client_for(publisher)

    # Act
    await client.handle_frame(json.dumps(open_signal("a")))

    # Assert
    assert publisher.attempts == 4
    assert [event.event_id for _key, event in publisher.inputs()] == ["signal:a"]


async def test_handle_frame_kafka_failing_while_stopping_raises_publish_failed():
    # Arrange
    publisher = RecordingPublisher(failures=1_000_000)
    client = client_for(publisher)
    client.stop()

    # Act / Assert
    with pytest.raises(PublishFailed):
        await client.handle_frame(json.dumps(open_signal("a")))
    assert publisher.records == []


def test_signal_feed_client_with_an_invalid_url_is_refused():
    # Act / Assert
    with pytest.raises(IngestError, match="not a WebSocket URL"):
        SignalFeedClient("http://feed.example", RecordingPublisher(), StubSymbols(()))


@pytest.mark.parametrize(("url", "shown"), [
    ("ws://user:secret@feed.example:9000/signals?token=abc", "ws://feed.example:9000/signals"),
    ("wss://feed.example/v1", "wss://feed.example/v1"),
    ("ws://127.0.0.1:6071", "ws://127.0.0.1:6071"),
])
def test_display_url_drops_credentials_and_query(url, shown):
    # Act / Assert
    assert display_url(url) == shown


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_up_to_the_cap_keeping_the_upper_half_jittered():
    # Arrange
    highest = Backoff(0.5, 4.0, rng=lambda: 1.0)
    lowest = Backoff(0.5, 4.0, rng=lambda: 0.0)

    # Act
    high = [highest.next_delay() for _ in range(6)]
    low = [lowest.next_delay() for _ in range(6)]

    # Assert
    assert high == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert low == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_backoff_reset_starts_again_from_the_first_delay():
    # Arrange
    backoff = Backoff(0.5, 30.0, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()

    # Act
    backoff.reset()

    # Assert
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize(("initial", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_backoff_with_impossible_bounds_is_refused(initial, cap):
    # Act / Assert
    with pytest.raises(ValueError):
        Backoff(initial, cap)


# --------------------------------------------------------------------------- symbol directory


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedLoader:
    """Answers each load with the next entry: a set of symbols, or an exception to raise."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_symbol_directory_refresh_within_the_interval_does_not_ask_the_exchange():
    # Arrange
    clock = FakeClock()
    loader = ScriptedLoader({"APTUSDT"}, {"APTUSDT", "NEWUSDT"})
    directory = SymbolDirectory({"binance": loader}, refresh_interval_s=60, clock=clock)
    await directory.load()
    clock.now += 59

    # Act
    refreshed = await directory.refresh("binance")

    # Assert
    assert (refreshed, loader.calls, directory.is_known_symbol("binance", "NEWUSDT")) == (False, 1, False)


async def test_symbol_directory_refresh_after_the_interval_finds_a_new_symbol():
    # Arrange
    clock = FakeClock()
    loader = ScriptedLoader({"APTUSDT"}, {"APTUSDT", "NEWUSDT"})
    directory = SymbolDirectory({"binance": loader}, refresh_interval_s=60, clock=clock)
    await directory.load()
    clock.now += 60

    # Act
    refreshed = await directory.refresh("binance")

    # Assert
    assert (refreshed, loader.calls) == (True, 2)
    assert directory.is_known_symbol("binance", "NEWUSDT") and not directory.is_known_symbol("bybit", "NEWUSDT")


async def test_symbol_directory_failed_refresh_keeps_the_known_symbols_and_waits_the_interval_again():
    # Arrange
    clock = FakeClock()
    loader = ScriptedLoader({"APTUSDT"}, SymbolsUnavailable("binance: down"), {"APTUSDT", "NEWUSDT"})
    directory = SymbolDirectory({"binance": loader}, refresh_interval_s=60, clock=clock)
    await directory.load()
    clock.now += 60

    # Act
    failed = await directory.refresh("binance")
    clock.now += 30
    too_soon = await directory.refresh("binance")

    # Assert
    assert (failed, too_soon, loader.calls) == (False, False, 2)
    assert directory.is_known_symbol("binance", "APTUSDT")


async def test_symbol_directory_load_until_ready_retries_until_the_exchange_answers():
    # Arrange
    loader = ScriptedLoader(SymbolsUnavailable("down"), SymbolsUnavailable("down"), {"APTUSDT"})
    directory = SymbolDirectory({"binance": loader})

    # Act
    ready = await directory.load_until_ready(asyncio.Event(), Backoff(0.001, 0.002))

    # Assert
    assert (ready, loader.calls, directory.is_known_symbol("binance", "APTUSDT")) == (True, 3, True)


async def test_symbol_directory_load_until_ready_gives_up_when_stopped():
    # Arrange
    stop = asyncio.Event()
    stop.set()
    directory = SymbolDirectory({"binance": ScriptedLoader(SymbolsUnavailable("down"))})

    # Act / Assert
    assert await directory.load_until_ready(stop, Backoff(0.001, 0.002)) is False


# --------------------------------------------------------------------------- demo script


def _demo_outcomes():
    """Every frame of the demo script as the ingest judges it, against the emulator's symbols."""
    listed = {spec.symbol for spec in REAL_SYMBOLS}
    sent: dict[str, str] = {}
    outcomes = []
    for step in demo_script("demo-1"):
        text = sent[step.repeat_of] if step.repeat_of else step.text(1761173440983)
        sent[step.name] = text
        try:
            items = parse_frame(text)
        except InvalidFrame as refusal:
            outcomes.append((step.name, refusal.code))
            continue
        for item in items:
            try:
                outcomes.append((step.name, validate_signal(item, lambda e, s: s in listed)))
            except InvalidSignal as refusal:
                outcomes.append((step.name, refusal.code))
    return outcomes


def test_demo_script_plays_scenario_b_a_duplicate_an_open_in_flight_a_close_and_refusals():
    # Act
    outcomes = _demo_outcomes()

    # Assert
    shown = [(name, o if isinstance(o, str) else f"{o.action.value} {o.symbol} {o.side and o.side.value} "
              f"{o.quantity} {o.stop_loss_pct} {o.signal_id}") for name, o in outcomes]
    assert shown == [
        ("apt-open", "open APTUSDT BUY 61.8 2.5 demo-1-apt-open"),
        ("btc-open", "open BTCUSDT BUY 0.002 None demo-1-btc-open"),
        ("apt-open-again", "open APTUSDT BUY 61.8 2.5 demo-1-apt-open"),
        ("eth-open-twice", "open ETHUSDT SELL 0.01 3 demo-1-eth-open"),
        ("eth-open-twice", "open ETHUSDT BUY 0.02 None demo-1-eth-open-in-flight"),
        ("broken-json", "invalid_json"),
        ("bad-signals", "non_positive_quantity"),
        ("bad-signals", "unknown_symbol"),
        ("bad-signals", "open SOLUSDT SELL 3 2 demo-1-sol-open"),
        ("apt-close", "close APTUSDT None None None demo-1-apt-close"),
    ]


def test_demo_script_opens_pass_the_emulators_filters_at_its_mark_prices():
    # Arrange
    specs = {spec.symbol: spec for spec in REAL_SYMBOLS}
    opens = [o for _name, o in _demo_outcomes() if not isinstance(o, str) and o.action is SignalAction.OPEN]

    # Act / Assert
    for signal in opens:
        spec = specs[signal.symbol]
        assert signal.quantity % spec.step_size == 0, signal
        assert spec.min_qty <= signal.quantity <= spec.market_max_qty, signal
        assert signal.quantity * spec.mark_price >= spec.min_notional, signal


# --------------------------------------------------------------------------- settings


def test_settings_ingest_defaults_are_the_demo_feed_on_6071_every_1_5_s():
    # Act
    settings = Settings.from_env({})

    # Assert
    assert (settings.demo_feed_port, settings.demo_feed_interval_s, settings.ingest_max_backoff_s) == (6071, 1.5, 30.0)


@pytest.mark.parametrize(("variable", "value"), [
    ("SIGNALS_WS_URL", "http://feed.example"), ("DEMO_FEED_PORT", "70000"), ("DEMO_FEED_PORT", "x"),
    ("DEMO_FEED_INTERVAL_S", "-1"), ("PIPELINE_INGEST_MAX_BACKOFF_S", "0"),
])
def test_settings_bad_ingest_value_raises_an_error_naming_the_variable(variable, value):
    # Act / Assert
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_ingest_without_a_signal_feed_refuses_to_play_the_demo_against_the_production_exchange():
    import asyncio

    import pytest

    from streams.ingest.exceptions import IngestError
    from streams.ingest.feed import run_ingest
    from streams.settings import Settings

    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BINANCE_FUTURES_URL": "https://fapi.binance.com",
                                  "BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"})

    with pytest.raises(IngestError, match="production"):
        asyncio.run(run_ingest(settings, asyncio.Event()))


@pytest.mark.parametrize("url", ["https://fapi.binance.com:443", "HTTPS://FAPI.BINANCE.COM/", "https://fapi.binance.com",
                                 "https://fapi1.binance.com/", " https://fapi.binance.com.:443 "])
def test_ingest_without_a_signal_feed_refuses_the_production_exchange_however_its_url_is_spelt(url):
    from streams.ingest.feed import run_ingest

    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BINANCE_FUTURES_URL": url,
                                  "BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"})

    with pytest.raises(IngestError, match="production"):
        asyncio.run(run_ingest(settings, asyncio.Event()))


@pytest.mark.parametrize(("url", "production"), [
    (None, True), ("https://fapi.binance.com:443/", True), ("https://dapi.binance.com", True),
    ("http://127.0.0.1:6070", False), ("https://testnet.binancefuture.com", False),
    ("https://binance.com.evil.example", False), ("http://emulator:6070", False),
])
def test_is_production_url_compares_parsed_hosts(url, production):
    from streams.edge.ccxt_client import is_production_url

    assert is_production_url(url) is production


async def test_a_feed_that_turns_out_to_be_the_demo_is_refused_when_trading_for_real():
    # Arrange: the demo feed named by URL only (as compose does), and a production exchange
    from streams.ingest.demo_feed import DemoFeed
    from streams.ingest.exceptions import DemoFeedOnProduction

    demo = DemoFeed("127.0.0.1", 0, interval_s=0, run_id="guard")
    url = await demo.start()
    publisher = RecordingPublisher()
    client = SignalFeedClient(url, publisher, StubSymbols({"APTUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"}),
                              backoff=Backoff(0.001, 0.002), refuse_demo_feed=True)
    try:
        # Act / Assert: refused at the handshake, before any frame is read
        with pytest.raises(DemoFeedOnProduction, match="demo feed"):
            await asyncio.wait_for(client.run(), 10)
    finally:
        await demo.stop()
    assert publisher.records == []


async def test_the_demo_feed_is_read_normally_on_a_paper_exchange():
    # Arrange: the same feed, trading on an emulator
    from streams.ingest.demo_feed import DemoFeed

    demo = DemoFeed("127.0.0.1", 0, interval_s=0, run_id="paper")
    url = await demo.start()
    publisher = RecordingPublisher()
    client = SignalFeedClient(url, publisher, StubSymbols({"APTUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"}),
                              backoff=Backoff(0.001, 0.002), refuse_demo_feed=False)
    runner = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.stats.wait_for(lambda s: s.published >= 7), 10)
    finally:
        client.stop()
        await asyncio.wait_for(runner, 10)
        await demo.stop()
    assert len(publisher.inputs()) >= 7


async def test_a_frame_over_the_size_limit_drops_the_connection_and_the_next_valid_frame_after_reconnecting_goes_on():
    # Arrange: a feed that sends a frame over the client's limit first, then (on the next
    # connection) a valid signal
    from websockets.asyncio.server import serve

    connections = []

    async def feed(connection) -> None:
        connections.append(connection)
        if len(connections) == 1:
            await connection.send("[" + " " * 4096 + "]")
        else:
            await connection.send(json.dumps(open_signal("after-the-big-one")))
        await connection.wait_closed()

    server = await serve(feed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = RecordingPublisher()
    client = SignalFeedClient(f"ws://127.0.0.1:{port}", publisher, StubSymbols({"APTUSDT"}),
                              backoff=Backoff(0.001, 0.002), max_frame_bytes=1024)
    runner = asyncio.create_task(client.run())
    try:
        # Act
        await asyncio.wait_for(client.stats.wait_for(lambda s: s.published >= 1), 10)
    finally:
        client.stop()
        await asyncio.wait_for(runner, 10)
        server.close()
        await server.wait_closed()

    # Assert: the oversized frame was never read into memory as a signal; the connection
    # was dropped (1009) and the valid signal of the next one published
    assert [event.event_id for _key, event in publisher.inputs()] == ["signal:after-the-big-one"]
    assert client.stats.connections == 2

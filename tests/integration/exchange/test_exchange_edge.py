"""The exchange edge for real: the worker's executor and poller, the real ccxt client, the emulator.

The worker runs as its own process with ``BINANCE_FUTURES_URL`` pointing at a Binance USD-M
emulator served from the test's event loop; the test publishes signals, moves mark prices,
opens and closes positions by hand and injects faults, then checks what the exchange holds
and what the pipeline decided.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import pytest

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from streams.wire import serde
from streams.domain import (
    ExchangeSnapshot,
    PlaceEntry,
    PositionSource,
    ReportOutcome,
    Side,
    Status,
)
from streams.exchange.attempts import KafkaAttemptLedger
from streams.edge.ccxt_client import create_binanceusdm
from streams.worker.paper_exchange import EmbeddedEmulator
from streams.exchange.executor import OrderExecutor
from streams.exchange.gateway import CcxtGateway
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tests.integration.pipeline_harness import (
    CommandsTap,
    InputSender,
    PipelineWorker,
    TopicTap,
    UpdatesTap,
)

pytestmark = pytest.mark.integration

KEY = "APTUSDT@binance"


@dataclass
class EdgeHarness:
    exchange: BinanceUsdmEmulator
    worker: PipelineWorker
    updates: UpdatesTap
    commands: CommandsTap
    inputs: InputSender
    raw_inputs: TopicTap

    async def wait_status(self, status: Status, key: str = KEY, timeout_s: float = 60.0) -> None:
        await self.updates.wait_for(
            lambda: (latest := self.updates.latest(key)) is not None and latest.status == status,
            timeout_s, f"{key} to reach {status.value}; worker log:\n{self.worker.log_tail(4000)}")

    def snapshots(self) -> list[ExchangeSnapshot]:
        decoded = (serde.decode_input(record.value) for record in self.raw_inputs.records)
        return [event.payload for event in decoded if isinstance(event.payload, ExchangeSnapshot)]


@pytest.fixture
async def attempt_ledger(kafka_bootstrap, unique_suffix) -> AsyncIterator[KafkaAttemptLedger]:
    """The executor's order-attempt ledger on a topic of its own on the real broker."""
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, database_url="postgresql://unused@127.0.0.1/x",
                        topic_prefix=f"ledger-{unique_suffix}.", topic_partitions=3)
    await ensure_topics(settings)
    ledger = KafkaAttemptLedger(kafka_bootstrap, TopicNames.for_prefix(settings.topic_prefix).order_attempts)
    await ledger.start()
    yield ledger
    await ledger.stop()


@pytest.fixture
async def edge(kafka_bootstrap, unique_suffix, tmp_path) -> AsyncIterator[EdgeHarness]:
    exchange = BinanceUsdmEmulator()
    base_url = await exchange.start()
    worker = PipelineWorker(kafka_bootstrap, f"edge-{unique_suffix}", tmp_path / "data", tmp_path / "worker.log",
                            extra_env={"PIPELINE_EXCHANGE_EDGE": "on", "BINANCE_FUTURES_URL": base_url,
                                       "BINANCE_API_KEY": DEFAULT_API_KEY, "BINANCE_API_SECRET": DEFAULT_API_SECRET,
                                       "SYNC_INTERVAL_S": "1"})
    await worker.start()
    harness = EdgeHarness(
        exchange=exchange, worker=worker,
        updates=await UpdatesTap(kafka_bootstrap, worker.topics.updates).start(),
        commands=await CommandsTap(kafka_bootstrap, worker.topics.commands).start(),
        inputs=await InputSender(kafka_bootstrap, worker.topics.inputs).start(),
        raw_inputs=await TopicTap(kafka_bootstrap, worker.topics.inputs).start(),
    )
    try:
        yield harness
    finally:
        for tap in (harness.updates, harness.commands, harness.raw_inputs):
            await tap.stop()
        await harness.inputs.stop()
        worker.stop()
        await exchange.stop()


async def test_full_loop_with_seed_scenario_b_timings_opens_exactly_one_protected_position(edge):
    # Arrange: instant fill, stop-loss request answered only after 3 s, a snapshot every second.
    edge.exchange.set_latency(3.0, method="POST", path="/fapi/v1/algoOrder")

    # Act
    await edge.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-loop-1", stop_loss_pct="2.5")
    await edge.wait_status(Status.ACTIVE)

    # Assert: one entry and one stop at the exchange, one position in the pipeline.
    orders = edge.exchange.orders(symbol="APTUSDT")
    entries = [o for o in orders if o["kind"] == "regular"]
    stops = [o for o in orders if o["kind"] == "algo"]
    assert len(entries) == 1 and len(stops) == 1, orders
    (stop,) = stops
    assert (stop["side"], stop["type"], stop["reduce_only"]) == ("SELL", "STOP_MARKET", True)
    assert Decimal(stop["stop_price"]) == Decimal("9.75")  # 10.00 fill - 2.5 %
    assert len({p.id for p in edge.updates.positions(KEY)}) == 1
    final = edge.updates.latest(KEY)
    assert (final.quantity, final.entry_price, final.stop_loss_price) == (Decimal("61.8"), Decimal("10.0000"),
                                                                          Decimal("9.7500"))
    assert len(edge.snapshots()) >= 2  # the poller did run during the 3 s stop-loss wait


async def test_entry_accepted_but_response_lost_leaves_exactly_one_order_and_an_active_position(edge):
    # Arrange: the exchange creates the entry, then drops the connection instead of answering.
    edge.exchange.add_fault("accept_then_timeout", method="POST", path="/fapi/v1/order", seconds=0)

    # Act
    await edge.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-lost-1")
    await edge.wait_status(Status.ACTIVE)

    # Assert
    entries = edge.exchange.orders(symbol="APTUSDT", kind="regular")
    assert len(entries) == 1, entries  # the documented rule would accept the id again: never re-sent
    placements = [r for r in edge.exchange.requests(path="/fapi/v1/order") if r["method"] == "POST"]
    assert len(placements) == 1
    lookups = [r for r in edge.exchange.requests(path="/fapi/v1/order") if r["method"] == "GET"]
    assert len(lookups) >= 2  # looked up before the send, and after the lost answer
    (entry_command,) = [c for c in edge.commands.commands(KEY) if isinstance(c, PlaceEntry)]
    assert entries[0]["client_order_id"] == entry_command.client_order_id
    assert edge.updates.latest(KEY).quantity == Decimal("61.8")


async def test_stop_loss_rejected_closes_the_position_at_once_and_keeps_it_tracked_until_flat(edge):
    # Arrange
    edge.exchange.add_fault("reject", method="POST", path="/fapi/v1/algoOrder", code=-2021)

    # Act
    await edge.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-sl-reject")
    await edge.wait_status(Status.CLOSED)

    # Assert: the emergency close is reduce-only, the exchange is flat, the path went via closing.
    statuses = [p.status for p in edge.updates.positions(KEY)]
    assert Status.CLOSING in statuses and statuses[-1] == Status.CLOSED
    assert edge.exchange.positions() == []
    closes = [o for o in edge.exchange.orders(symbol="APTUSDT", kind="regular") if o["reduce_only"]]
    assert len(closes) == 1 and closes[0]["side"] == "SELL"


async def test_poller_stop_hit_at_the_exchange_reaches_the_key_as_flat_and_closes_it(edge):
    # Arrange
    await edge.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-stop-hit", stop_loss_pct="2.5")
    await edge.wait_status(Status.ACTIVE)

    # Act: the mark price falls through the stop at 9.75.
    triggered = edge.exchange.set_mark_price("APTUSDT", "9.7000")
    await edge.wait_status(Status.CLOSED)

    # Assert
    assert len(triggered) == 1
    assert edge.exchange.positions() == []


async def test_poller_position_closed_by_hand_closes_the_key_and_cancels_its_stop(edge):
    # Arrange
    await edge.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-by-hand")
    await edge.wait_status(Status.ACTIVE)

    # Act
    edge.exchange.set_position("APTUSDT", "BUY", "0")
    await edge.wait_status(Status.CLOSED)

    # Assert: the orphaned stop was cancelled at the exchange.
    await edge.updates.wait_for(
        lambda: all(o["status"] != "NEW" for o in edge.exchange.orders(symbol="APTUSDT", kind="algo")),
        timeout_s=30, what="the stop to be cancelled")


async def test_poller_snapshot_carries_the_exchange_mark_price_and_unrealized_pnl_exactly(edge):
    # Arrange: an active long of 61.8 filled at the mark, 10.00
    await edge.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-mark", stop_loss_pct="2.5")
    await edge.wait_status(Status.ACTIVE)

    # Act: the mark moves up (the stop at 9.75 stays untouched)
    edge.exchange.set_mark_price("APTUSDT", "10.2000")
    await edge.raw_inputs.wait_for(
        lambda: any(s.symbol == "APTUSDT" and s.mark_price == Decimal("10.2") for s in edge.snapshots()),
        what="a snapshot with the new mark price")

    # Assert: what positionRisk said, to the last digit, as Decimal: 61.8 x (10.20 - 10.00)
    snapshot = next(s for s in edge.snapshots() if s.symbol == "APTUSDT" and s.mark_price == Decimal("10.2"))
    assert isinstance(snapshot.unrealized_pnl, Decimal)
    assert (snapshot.side, snapshot.quantity, snapshot.unrealized_pnl) == (Side.BUY, Decimal("61.8"), Decimal("12.36"))
    risk = edge.exchange.requests(path="/fapi/v3/positionRisk")
    assert risk, "the poller read positionRisk v3 through ccxt"


async def test_poller_failed_fetch_publishes_nothing_never_flat(edge):
    # Arrange: a live position, then every position fetch fails.
    await edge.inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-fetch-fail")
    await edge.wait_status(Status.ACTIVE)
    def failed_fetches() -> int:
        return sum(1 for entry in edge.exchange.requests(path="/fapi/v3/positionRisk") if entry["status"] == 503)

    edge.exchange.add_fault("http_error", count=None, method="GET", path="/fapi/v3/positionRisk", status=503)
    # The marker: a fetch has failed, so a cycle that began before the fault is over.
    await edge.raw_inputs.wait_for(lambda: failed_fetches() >= 1, what="the first failed fetch")
    failing_since_ms = int(time.time() * 1000)

    # Act: three more cycles fail
    await edge.raw_inputs.wait_for(lambda: failed_fetches() >= 4, what="three more failed fetches")
    failing_until_ms = int(time.time() * 1000)
    edge.exchange.clear_faults()
    await edge.raw_inputs.wait_for(lambda: any(s.fetched_at > failing_until_ms for s in edge.snapshots()),
                                   what="snapshots to resume")

    # Assert: nothing was published while fetching failed, and the position is still active.
    assert [s for s in edge.snapshots() if failing_since_ms <= s.fetched_at <= failing_until_ms] == []
    assert failed_fetches() >= 4
    assert edge.updates.latest(KEY).status == Status.ACTIVE


async def test_poller_position_opened_outside_is_adopted_once_and_protected(edge):
    # Arrange / Act: a position appears on the exchange that no signal opened.
    edge.exchange.set_position("SOLUSDT", "SELL", "3", entry_price="150.00")
    await edge.wait_status(Status.ACTIVE, key="SOLUSDT@binance")

    # Assert: one adopted position, protected by a BUY stop above the entry (default 2 %).
    positions = edge.updates.positions("SOLUSDT@binance")
    assert len({p.id for p in positions}) == 1
    final = positions[-1]
    assert (final.source, final.side, final.quantity) == (PositionSource.EXCHANGE, Side.SELL, Decimal("3"))
    (stop,) = edge.exchange.orders(symbol="SOLUSDT", kind="algo")
    assert (stop["side"], stop["reduce_only"], Decimal(stop["stop_price"])) == ("BUY", True, Decimal("153.00"))


async def test_executor_backs_off_on_429_and_then_places_the_order_once(attempt_ledger):
    # Arrange: the executor, its attempt ledger on the real broker, the real ccxt client, the emulator.
    exchange = BinanceUsdmEmulator()
    base_url = await exchange.start()
    gateway = CcxtGateway("binance", create_binanceusdm(base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET))
    executor = OrderExecutor({"binance": gateway}, clock_ms=lambda: int(time.time() * 1000), ledger=attempt_ledger)
    entry = PlaceEntry(command_id="c1", key=KEY, position_id=f"{KEY}/1", symbol="APTUSDT", exchange="binance",
                       client_order_id="ppe1-backoff", side=Side.BUY, quantity=Decimal("1"))
    try:
        await gateway.unified_symbol("APTUSDT")  # markets loaded before the fault is armed
        exchange.add_fault("rate_limit", method="POST", path="/fapi/v1/order", retry_after_s=1)

        # Act
        report = await executor.execute(entry)
    finally:
        await gateway.close()
        await exchange.stop()

    # Assert
    placements = [r for r in exchange.requests(path="/fapi/v1/order") if r["method"] == "POST"]
    assert [r["status"] for r in placements] == [429, 200]
    assert placements[1]["time_ms"] - placements[0]["time_ms"] >= 900  # waited for the limiter's pause
    assert report.payload.outcome is ReportOutcome.FILLED
    assert len(exchange.orders(kind="regular")) == 1


async def test_executor_with_bad_credentials_reports_an_error_naming_the_exchange_not_the_secret(
        caplog, attempt_ledger):
    # Arrange
    exchange = BinanceUsdmEmulator()
    base_url = await exchange.start()
    wrong_secret = "wrong-secret-that-must-never-be-printed"
    gateway = CcxtGateway("binance", create_binanceusdm(base_url, DEFAULT_API_KEY, wrong_secret))
    executor = OrderExecutor({"binance": gateway}, clock_ms=lambda: int(time.time() * 1000), ledger=attempt_ledger)
    entry = PlaceEntry(command_id="c1", key=KEY, position_id=f"{KEY}/1", symbol="APTUSDT", exchange="binance",
                       client_order_id="ppe1-badkey", side=Side.BUY, quantity=Decimal("1"))
    try:
        # Act
        report = await executor.execute(entry)
    finally:
        await gateway.close()
        await exchange.stop()

    # Assert
    assert report.payload.outcome is ReportOutcome.REJECTED
    assert report.payload.error_message.startswith("binance:")
    assert report.payload.error_code == -1022
    assert wrong_secret not in report.payload.error_message
    assert wrong_secret not in caplog.text and "binance" in caplog.text
    assert exchange.orders() == []


async def test_a_second_worker_on_the_host_trades_on_the_emulator_the_first_one_serves():
    # Arrange: a first worker's built-in emulator holds EMULATOR_PORT
    first = BinanceUsdmEmulator("127.0.0.1", 0)
    shared_url = await first.start()
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATABASE_URL": "postgresql://u@h:1/d",
                                  "EMULATOR_PORT": str(first.port)})
    second = EmbeddedEmulator(settings.emulator_port)
    try:
        # Act
        url = await second.start()
        client = create_binanceusdm(url, DEFAULT_API_KEY, DEFAULT_API_SECRET)
        try:
            await client.create_order("APTUSDT", "market", "buy", 1.0, params={"newClientOrderId": "shared-1"})
        finally:
            await client.close()
    finally:
        await first.stop()

    # Assert: one book for both workers; the second started no emulator of its own
    assert url == shared_url and second._emulator is None
    assert [order["client_order_id"] for order in first.orders()] == ["shared-1"]

"""Each order placed at most once: the executor, the real ccxt client and the emulator.

The emulator follows Binance's documented client-id rule ("a unique id among open
orders"): a filled market order's id is accepted again, so only the executor's protocol
(look the order up by its client id, and place only when no earlier attempt can still
arrive) keeps a lost answer, a 5xx, a redelivered command or a second executor from
becoming a second order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from streams.domain import OrderRole, PlaceEntry, QueryOrder, ReportOutcome, Side
from streams.exchange.attempts import KafkaAttemptLedger
from streams.edge.ccxt_client import create_binanceusdm
from streams.exchange.executor import OrderExecutor, PlacementTiming
from streams.exchange.gateway import CcxtGateway
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

pytestmark = pytest.mark.integration

KEY = "APTUSDT@binance"
POSITION_ID = f"{KEY}/7"
# A short recvWindow keeps the waits short; the protocol is the same at Binance's 5000.
TIMING = PlacementTiming(recv_window_ms=2000, clock_margin_ms=1000)


def _entry(client_order_id: str) -> PlaceEntry:
    return PlaceEntry(command_id=f"{POSITION_ID}/place_entry/{client_order_id}", key=KEY, position_id=POSITION_ID,
                      symbol="APTUSDT", exchange="binance", client_order_id=client_order_id, side=Side.BUY,
                      quantity=Decimal("61.8"))


@pytest.fixture
async def exchange():
    emulator = BinanceUsdmEmulator()
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def executors(kafka_bootstrap, unique_suffix, exchange) -> AsyncIterator:
    """Builds executors as separate processes would have them: own ccxt client, own ledger
    follower and producer, one shared ledger topic on the real broker."""
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, database_url="postgresql://unused@127.0.0.1/x",
                        topic_prefix=f"exec-{unique_suffix}.", topic_partitions=3)
    await ensure_topics(settings)
    topic = TopicNames.for_prefix(settings.topic_prefix).order_attempts
    built: list[tuple[CcxtGateway, KafkaAttemptLedger]] = []

    async def build(timeout_ms: int = 3000) -> OrderExecutor:
        gateway = CcxtGateway("binance", create_binanceusdm(exchange.base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET,
                                                            timeout_ms=timeout_ms,
                                                            recv_window_ms=TIMING.recv_window_ms))
        await gateway.unified_symbol("APTUSDT")  # markets loaded before any fault is armed
        ledger = KafkaAttemptLedger(kafka_bootstrap, topic)
        await ledger.start()
        built.append((gateway, ledger))
        return OrderExecutor({"binance": gateway}, clock_ms=lambda: int(time.time() * 1000), ledger=ledger,
                             timing=TIMING)

    yield build
    for gateway, ledger in built:
        with contextlib.suppress(Exception):
            await gateway.close()
        await ledger.stop()


async def test_entry_answer_lost_after_the_fill_is_looked_up_not_placed_again(exchange, executors):
    # Arrange
    executor = await executors()
    exchange.add_fault("accept_then_timeout", method="POST", path="/fapi/v1/order")

    # Act
    report = await executor.execute(_entry("ppe1-lost"))

    # Assert
    assert [o["status"] for o in exchange.orders(client_order_id="ppe1-lost")] == ["FILLED"]
    assert (report.payload.outcome, report.payload.filled_quantity) == (ReportOutcome.FILLED, Decimal("61.8"))


async def test_entry_timeout_after_the_exchange_filled_ends_with_one_order(exchange, executors):
    # Arrange: the exchange fills, then answers after the client gave up.
    executor = await executors(timeout_ms=500)
    exchange.add_fault("hold_answer", method="POST", path="/fapi/v1/order", seconds=2.0)

    # Act
    report = await executor.execute(_entry("ppe1-slow"))

    # Assert
    assert len(exchange.orders(client_order_id="ppe1-slow")) == 1
    assert report.payload.outcome is ReportOutcome.FILLED


async def test_entry_503_after_the_fill_ends_with_one_order(exchange, executors):
    # Arrange: processed for real, then a gateway in front answers 503 (Binance: "the
    # execution status is UNKNOWN and could have been a success").
    executor = await executors()
    exchange.add_fault("http_error", method="POST", path="/fapi/v1/order", status=503, after_processing=True)

    # Act
    report = await executor.execute(_entry("ppe1-5xx"))

    # Assert
    assert len(exchange.orders(client_order_id="ppe1-5xx")) == 1
    assert report.payload.outcome is ReportOutcome.FILLED


async def test_command_executed_twice_in_a_row_places_one_order(exchange, executors):
    # Arrange
    executor = await executors()

    # Act: the same command, delivered twice (a redelivery after a crash, or a resend).
    first = await executor.execute(_entry("ppe1-twice"))
    second = await executor.execute(_entry("ppe1-twice"))

    # Assert
    assert len(exchange.orders(client_order_id="ppe1-twice")) == 1
    assert first.payload.outcome is second.payload.outcome is ReportOutcome.FILLED
    assert [p["quantity"] for p in exchange.positions()] == ["61.8"]


async def test_two_executors_racing_the_same_command_place_one_order(exchange, executors):
    # Arrange: two executors (a zombie and its successor) with their own clients.
    first, second = await executors(), await executors()
    # Each placement takes 0.5 s to reach the exchange: both lookups can miss the other's order.
    exchange.set_latency(0.5, method="POST", path="/fapi/v1/order")

    # Act
    reports = await asyncio.gather(first.execute(_entry("ppe1-race")), second.execute(_entry("ppe1-race")))

    # Assert
    assert len(exchange.orders(client_order_id="ppe1-race")) == 1
    assert {r.payload.outcome for r in reports} == {ReportOutcome.FILLED}
    assert [p["quantity"] for p in exchange.positions()] == ["61.8"]


async def test_request_held_before_the_exchange_and_not_found_yet_is_waited_out_not_resent(exchange, executors):
    # Arrange: the request sits 1.5 s in front of the exchange; the client gives up at 0.5 s,
    # and the first lookup does not find the order: it has not arrived yet.
    executor = await executors(timeout_ms=500)
    exchange.set_latency(1.5, method="POST", path="/fapi/v1/order")

    # Act
    report = await executor.execute(_entry("ppe1-held"))

    # Assert: it landed within its recvWindow; the executor waited instead of sending again.
    placements = [r for r in exchange.requests(path="/fapi/v1/order") if r["method"] == "POST"]
    assert len(placements) == 1
    assert len(exchange.orders(client_order_id="ppe1-held")) == 1
    assert report.payload.outcome is ReportOutcome.FILLED
    assert placements[0]["params"]["recvWindow"] == str(TIMING.recv_window_ms)


async def test_request_held_past_its_recv_window_is_refused_by_the_exchange_and_placed_once_later(exchange, executors):
    # Arrange: the first request arrives after its recvWindow (2 s): Binance refuses it (-1021).
    executor = await executors(timeout_ms=500)
    exchange.set_latency(2.6, method="POST", path="/fapi/v1/order")

    async def lift_the_latency() -> None:
        await asyncio.sleep(1.0)
        exchange.set_latency(0, method="POST", path="/fapi/v1/order")

    # Act
    lifting = asyncio.create_task(lift_the_latency())
    report = await executor.execute(_entry("ppe1-late"))
    await lifting

    # Assert
    placements = [r for r in exchange.requests(path="/fapi/v1/order") if r["method"] == "POST"]
    assert [r["code"] for r in placements] == [-1021, None]
    assert len(exchange.orders(client_order_id="ppe1-late")) == 1
    assert report.payload.outcome is ReportOutcome.FILLED


async def test_query_while_a_placement_may_still_land_fences_it_then_finds_it(exchange, executors):
    # Arrange: a zombie executor's placement is held in front of the exchange.
    zombie, successor = await executors(timeout_ms=500), await executors()
    exchange.set_latency(1.0, method="POST", path="/fapi/v1/order")
    placing = asyncio.create_task(zombie.execute(_entry("ppe1-zombie")))
    await asyncio.sleep(0.3)
    query = QueryOrder(command_id=f"{POSITION_ID}/query_order/ppe1-zombie/9", key=KEY, position_id=POSITION_ID,
                       symbol="APTUSDT", exchange="binance", client_order_id="ppe1-zombie", role=OrderRole.ENTRY)

    # Act
    answer = await successor.execute(query)
    await placing

    # Assert: the query did not answer not_found while the placement could land.
    assert answer.payload.outcome is ReportOutcome.FILLED
    assert len(exchange.orders(client_order_id="ppe1-zombie")) == 1


async def test_placement_redelivered_after_a_query_found_nothing_is_never_sent(exchange, executors):
    # Arrange: the deadline's query fenced the id and found nothing (the entry never went out).
    executor = await executors()
    query = QueryOrder(command_id=f"{POSITION_ID}/query_order/ppe1-fenced/9", key=KEY, position_id=POSITION_ID,
                       symbol="APTUSDT", exchange="binance", client_order_id="ppe1-fenced", role=OrderRole.ENTRY)
    assert (await executor.execute(query)).payload.outcome is ReportOutcome.NOT_FOUND

    # Act: the PlaceEntry arrives again (a redelivery after a crash).
    late = await executor.execute(_entry("ppe1-fenced"))

    # Assert
    assert late.payload.outcome is ReportOutcome.UNKNOWN
    assert exchange.orders(client_order_id="ppe1-fenced") == []


async def test_entry_partially_filled_then_expired_reports_the_executed_quantity(exchange, executors):
    # Arrange
    executor = await executors()
    exchange.add_fault("partial_fill", quantity="20")

    # Act
    report = await executor.execute(_entry("ppe1-partial"))

    # Assert
    assert (report.payload.outcome, report.payload.filled_quantity) == (ReportOutcome.CANCELED, Decimal("20.0"))
    assert [p["quantity"] for p in exchange.positions()] == ["20.0"]

"""Host clocks an hour off change no decision: the edge stamps exchange facts with the exchange's time.

The executor's host and the poller's host each run an hour away from the exchange (and from
each other), as ccxt and the edge read them. Each edge learns the exchange's clock
(``ExchangeClock``) and stamps reports, snapshots and signed requests with it. The same
story (open, fill, stop placed, a snapshot, the stop hit, a flat snapshot) is decided for
each pair of skews through the real executor, poller, ccxt client and emulator: every
decision is the same, and the stop hit is seen (an uncorrected poller an hour behind the
executor would find every later snapshot stale and the position would stay "active").
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from streams.domain import AppliedInput, InputEvent, Policy, Side, Signal, SignalAction, Status, decide
from streams.exchange.attempts import KafkaAttemptLedger
from streams.edge.ccxt_client import create_binanceusdm
from streams.exchange.clock import ExchangeClock, host_clock_ms
from streams.exchange.executor import OrderExecutor, PlacementTiming
from streams.exchange.gateway import CcxtGateway
from streams.exchange.poller import PositionPoller
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

pytestmark = pytest.mark.integration

KEY = "APTUSDT@binance"
HOUR_MS = 3600 * 1000
POLICY = Policy(default_stop_loss_pct=Decimal("2"), entry_timeout_ms=30_000, stop_loss_timeout_ms=30_000,
                close_timeout_ms=30_000)


def skewed_gateway(base_url: str, skew_ms: int) -> CcxtGateway:
    """A gateway whose host clock (as ccxt reads it to sign requests) runs ``skew_ms`` off."""
    client = create_binanceusdm(base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET, recv_window_ms=5000)
    real_milliseconds = client.milliseconds
    client.milliseconds = lambda: real_milliseconds() + skew_ms
    return CcxtGateway("binance", client)


async def decide_the_story(kafka_bootstrap: str, prefix: str, executor_skew_ms: int, poller_skew_ms: int) -> list:
    """Runs the story against a fresh exchange; returns every decision as comparable values."""
    exchange = BinanceUsdmEmulator()
    await exchange.start()
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, database_url="postgresql://unused@127.0.0.1/x",
                        topic_prefix=prefix, topic_partitions=3)
    await ensure_topics(settings)
    ledger = KafkaAttemptLedger(kafka_bootstrap, TopicNames.for_prefix(prefix).order_attempts)
    await ledger.start()
    executor_gateway = skewed_gateway(exchange.base_url, executor_skew_ms)
    poller_gateway = skewed_gateway(exchange.base_url, poller_skew_ms)
    executor_clock = ExchangeClock(host_ms=lambda: host_clock_ms() + executor_skew_ms)
    poller_clock = ExchangeClock(host_ms=lambda: host_clock_ms() + poller_skew_ms)
    snapshots: list[InputEvent] = []

    async def publish(event: InputEvent) -> None:
        snapshots.append(event)

    executor = OrderExecutor({"binance": executor_gateway}, executor_clock.now_ms, ledger,
                             timing=PlacementTiming(recv_window_ms=5000, clock_margin_ms=1000))
    poller = PositionPoller({"binance": poller_gateway}, lambda exchange_name: {KEY}, publish, poller_clock.now_ms)
    decisions: list = []
    state = None

    async def apply(event: InputEvent) -> None:
        nonlocal state
        # The log's time for the input (the broker appends it): the test host's clock here.
        event = dataclasses.replace(event, ts=host_clock_ms())
        decision = decide(state, AppliedInput(len(decisions), event), POLICY)
        state = decision.state
        position = state.position
        decisions.append((type(event.payload).__name__, decision.audit.decision.value if decision.audit else None,
                          position.status.value if position else None,
                          tuple(type(command).__name__ for command in decision.commands)))
        for command in decision.commands:
            await apply(await executor.execute(command))

    async def poll() -> None:
        snapshots.clear()
        await poller.poll_once()
        for snapshot in list(snapshots):
            await apply(snapshot)

    try:
        await executor_clock.sync(executor_gateway)
        await poller_clock.sync(poller_gateway)
        ts = host_clock_ms()
        await apply(InputEvent(event_id="signal:skew-1", key=KEY, ts=ts, payload=Signal(
            signal_id="skew-1", action=SignalAction.OPEN, symbol="APTUSDT", exchange="binance", side=Side.BUY,
            quantity=Decimal("61.8"), stop_loss_pct=Decimal("2.5"), ts=ts)))
        await poll()  # the exchange shows the position: confirmed
        exchange.set_mark_price("APTUSDT", "9.00")  # below the stop at 9.75: it fires, the exchange is flat
        await poll()  # the flat snapshot must be seen, not taken for stale
        offsets = (executor_clock.offset_ms, poller_clock.offset_ms)
    finally:
        await executor_gateway.close()
        await poller_gateway.close()
        await ledger.stop()
        await exchange.stop()
    # The clocks learned the skews back (to within a round trip on loopback).
    assert abs(offsets[0] + executor_skew_ms) < 1000 and abs(offsets[1] + poller_skew_ms) < 1000, offsets
    return decisions


async def test_executor_and_poller_clocks_an_hour_off_change_no_decision(kafka_bootstrap, unique_suffix):
    # Act
    in_sync = await decide_the_story(kafka_bootstrap, f"skew-0-{unique_suffix}.", 0, 0)
    executor_ahead = await decide_the_story(kafka_bootstrap, f"skew-a-{unique_suffix}.", HOUR_MS, -HOUR_MS)
    poller_ahead = await decide_the_story(kafka_bootstrap, f"skew-b-{unique_suffix}.", -HOUR_MS, HOUR_MS)

    # Assert
    assert executor_ahead == in_sync
    assert poller_ahead == in_sync
    assert in_sync[-1][2] == Status.CLOSED.value, in_sync  # the stop hit was seen
    assert ("ExchangeSnapshot", "ignored", "active", ()) not in in_sync[-2:]

"""The executor's retry and report logic, against a hand-written stand-in gateway.

The real ccxt client against the emulator is tested in tests/integration; here only the
decisions the executor makes from each kind of exchange answer.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from streams.domain import (
    PlaceEntry,
    PlaceStopLoss,
    QueryOrder,
    OrderRole,
    ReportOutcome,
    Side,
)
from streams.exchange.executor import OrderExecutor, RetryPolicy
from streams.exchange.gateway import (
    DuplicateClientOrderId,
    OrderMissing,
    OrderRejected,
    OrderState,
    TransientExchangeError,
)

ENTRY = PlaceEntry(command_id="K/1/place_entry/ppe1-x", key="APTUSDT@binance", position_id="APTUSDT@binance/1",
                   symbol="APTUSDT", exchange="binance", client_order_id="ppe1-x", side=Side.BUY,
                   quantity=Decimal("61.8"))
STOP = PlaceStopLoss(command_id="K/1/place_stop_loss/pps1-x", key="APTUSDT@binance",
                     position_id="APTUSDT@binance/1", symbol="APTUSDT", exchange="binance",
                     client_order_id="pps1-x", side=Side.SELL, quantity=Decimal("61.8"),
                     stop_price=Decimal("9.7512345"))
FILLED = OrderState("ppe1-x", "42", "filled", Decimal("61.8"), Decimal("10.00"), None)


class ScriptedGateway:
    """Answers each call with the next scripted answer (a value or an exception to raise)."""

    name = "binance"

    def __init__(self, **answers: list) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple]] = []

    async def _next(self, operation: str, *args):
        self.calls.append((operation, args))
        answer = self.answers[operation].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def place_market(self, *args, **kwargs):
        return await self._next("place_market", *args)

    async def place_stop_market(self, *args):
        return await self._next("place_stop_market", *args)

    async def fetch_order(self, *args):
        return await self._next("fetch_order", *args)

    async def cancel_order(self, *args):
        return await self._next("cancel_order", *args)

    async def price_to_precision(self, symbol, price):
        return price.quantize(Decimal("0.001"))


def execute(gateway, command):
    executor = OrderExecutor({"binance": gateway}, clock_ms=lambda: 1_761_173_440_983,
                             retry=RetryPolicy(attempts=3, backoff_s=(0.0,)))
    return asyncio.run(executor.execute(command))


def test_executor_timeout_then_success_retries_with_the_same_client_id_and_reports_the_fill():
    gateway = ScriptedGateway(place_market=[TransientExchangeError("binance", "timeout"), FILLED])

    event = execute(gateway, ENTRY)

    assert event.payload.outcome is ReportOutcome.FILLED
    assert (event.payload.filled_quantity, event.payload.average_price) == (Decimal("61.8"), Decimal("10.00"))
    assert [args[3] for _, args in gateway.calls] == ["ppe1-x", "ppe1-x"]


def test_executor_duplicate_client_id_fetches_the_existing_order_instead_of_placing_another():
    gateway = ScriptedGateway(place_market=[TransientExchangeError("binance", "timeout"),
                                            DuplicateClientOrderId("binance", "ClientOrderId is duplicated.", -4116)],
                              fetch_order=[FILLED])

    event = execute(gateway, ENTRY)

    assert event.payload.outcome is ReportOutcome.FILLED
    assert [operation for operation, _ in gateway.calls] == ["place_market", "place_market", "fetch_order"]


def test_executor_rejection_reports_the_exchanges_code_and_message():
    gateway = ScriptedGateway(place_market=[OrderRejected("binance", "Margin is insufficient.", -2019)])

    event = execute(gateway, ENTRY)

    assert event.payload.outcome is ReportOutcome.REJECTED
    assert event.payload.error_code == -2019 and "Margin is insufficient." in event.payload.error_message
    assert event.key == ENTRY.key and event.payload.client_order_id == "ppe1-x"


def test_executor_unreachable_exchange_after_every_retry_reports_unknown():
    gateway = ScriptedGateway(place_market=[TransientExchangeError("binance", "timeout")] * 3)

    event = execute(gateway, ENTRY)

    assert event.payload.outcome is ReportOutcome.UNKNOWN
    assert len(gateway.calls) == 3


def test_executor_stop_loss_is_rounded_to_the_market_precision_and_reported_with_its_price():
    gateway = ScriptedGateway(place_stop_market=[OrderState("pps1-x", "7", "accepted", None, None, None)])

    event = execute(gateway, STOP)

    (_, args), = gateway.calls
    assert args[3] == Decimal("9.751")
    assert event.payload.outcome is ReportOutcome.ACCEPTED
    assert event.payload.stop_price == Decimal("9.751") and event.payload.role is OrderRole.STOP_LOSS


def test_executor_query_of_an_order_the_exchange_does_not_have_reports_not_found():
    query = QueryOrder(command_id="K/1/query_order/ppe1-x/9", key="APTUSDT@binance",
                       position_id="APTUSDT@binance/1", symbol="APTUSDT", exchange="binance",
                       client_order_id="ppe1-x", role=OrderRole.ENTRY)
    gateway = ScriptedGateway(fetch_order=[OrderMissing("binance", "Order does not exist.", -2013)])

    event = execute(gateway, query)

    assert event.payload.outcome is ReportOutcome.NOT_FOUND
    assert gateway.calls == [("fetch_order", ("APTUSDT", "ppe1-x", False))]

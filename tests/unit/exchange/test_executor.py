"""The executor's placement protocol and reports, against hand-written stand-ins.

A scripted gateway, an in-memory attempt ledger and a clock that only moves when the
executor sleeps: the decisions the executor makes from each answer, and the order of its
calls. The real ccxt client, the emulator and the ledger on Kafka are in
tests/integration/exchange/test_executor_placement.py.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from streams.domain import (
    CancelOrder,
    OrderRole,
    PlaceEntry,
    PlaceStopLoss,
    QueryOrder,
    ReportOutcome,
    Side,
)
from streams.edge.backoff import Backoff
from streams.exchange.attempts import AttemptKind, Claim, LedgerRecord, LedgerUnavailable
from streams.exchange.executor import OrderExecutor, PlacementTiming, RetryPolicy
from streams.exchange.gateway import (
    DuplicateClientOrderId,
    OrderMissing,
    OrderRejected,
    OrderState,
    TransientExchangeError,
)

START_MS = 1_761_173_440_000
TIMING = PlacementTiming(recv_window_ms=5000, clock_margin_ms=3000)
ENTRY = PlaceEntry(command_id="K/1/place_entry/ppe1-x", key="APTUSDT@binance", position_id="APTUSDT@binance/1",
                   symbol="APTUSDT", exchange="binance", client_order_id="ppe1-x", side=Side.BUY,
                   quantity=Decimal("61.8"))
STOP = PlaceStopLoss(command_id="K/1/place_stop_loss/pps1-x", key="APTUSDT@binance",
                     position_id="APTUSDT@binance/1", symbol="APTUSDT", exchange="binance",
                     client_order_id="pps1-x", side=Side.SELL, quantity=Decimal("61.8"),
                     stop_price=Decimal("9.7512345"))
QUERY = QueryOrder(command_id="K/1/query_order/ppe1-x/9", key="APTUSDT@binance", position_id="APTUSDT@binance/1",
                   symbol="APTUSDT", exchange="binance", client_order_id="ppe1-x", role=OrderRole.ENTRY)
CANCEL = CancelOrder(command_id="K/1/cancel_order/pps1-x/9", key="APTUSDT@binance", position_id="APTUSDT@binance/1",
                     symbol="APTUSDT", exchange="binance", client_order_id="pps1-x", role=OrderRole.STOP_LOSS)
FILLED = OrderState("ppe1-x", "42", "filled", Decimal("61.8"), Decimal("10.00"), None)
MISSING = OrderMissing("binance", "Order does not exist.", -2013)
TIMEOUT = TransientExchangeError("binance", "RequestTimeout")


class Clock:
    """Time that passes only when the executor sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now_ms = START_MS
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now_ms

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_ms += int(seconds * 1000)


class MemoryLedger:
    """The attempt ledger as one in-memory log of one process (plus records others wrote)."""

    def __init__(self, *, unavailable: bool = False) -> None:
        self.log: list[LedgerRecord] = []
        self.withdrawn: set[int] = set()
        self.unavailable = unavailable

    def written_by_another_executor(self, kind: AttemptKind, at_ms: int, client_order_id: str = "ppe1-x") -> None:
        self.log.append(LedgerRecord(client_order_id, kind, at_ms, "other-host/1/aa", 0, len(self.log)))

    async def claim(self, client_order_id, position_id, kind, at_ms) -> Claim:
        if self.unavailable:
            raise LedgerUnavailable("broker down")
        record = LedgerRecord(client_order_id, kind, at_ms, "this-host/2/bb", 0, len(self.log))
        earlier = tuple(r for r in self.log if r.client_order_id == client_order_id and r.offset not in self.withdrawn)
        self.log.append(record)
        return Claim(record, earlier)

    def withdraw(self, record: LedgerRecord) -> None:
        self.withdrawn.add(record.offset)

    def kinds(self) -> list[str]:
        return [r.kind.value for r in self.log]


class ScriptedGateway:
    """Answers each call with the next scripted answer (a value or an exception to raise)."""

    name = "binance"

    def __init__(self, clock: Clock, **answers: list) -> None:
        self.clock = clock
        self.answers = answers
        self.calls: list[tuple[str, tuple, int]] = []

    async def _next(self, operation: str, *args):
        self.calls.append((operation, args, self.clock.now_ms))
        answer = self.answers[operation].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def place_market(self, *args):
        return await self._next("place_market", *args)

    async def place_stop_market(self, *args):
        return await self._next("place_stop_market", *args)

    async def fetch_order(self, *args):
        return await self._next("fetch_order", *args)

    async def cancel_order(self, *args):
        return await self._next("cancel_order", *args)

    async def price_to_precision(self, symbol, price):
        return price.quantize(Decimal("0.001"))

    def operations(self) -> list[str]:
        return [operation for operation, _, _ in self.calls]


def run(command, *, ledger: MemoryLedger | None = None, clock: Clock | None = None, **answers):
    clock = clock or Clock()
    ledger = ledger or MemoryLedger()
    gateway = ScriptedGateway(clock, **answers)
    executor = OrderExecutor({"binance": gateway}, clock_ms=clock, ledger=ledger, timing=TIMING,
                             retry=RetryPolicy(attempts=3, backoff=Backoff(1e-9, 1e-9)), sleep=clock.sleep)
    event = asyncio.run(executor.execute(command))
    return event.payload, gateway, ledger, clock


def test_placement_first_sent_is_looked_up_stamped_with_its_claim_and_fenced_before_the_report():
    # Act
    report, gateway, ledger, _ = run(ENTRY, fetch_order=[MISSING], place_market=[FILLED])

    # Assert
    assert report.outcome is ReportOutcome.FILLED
    assert (report.filled_quantity, report.average_price) == (Decimal("61.8"), Decimal("10.00"))
    assert gateway.operations() == ["fetch_order", "place_market"]
    (_, place_args, _) = gateway.calls[1]
    assert place_args[3] == "ppe1-x" and place_args[-1] == ledger.log[0].at_ms  # the request's timestamp
    assert ledger.kinds() == ["send", "fence"]


def test_placement_timeout_after_the_exchange_filled_is_found_by_the_lookup_and_not_sent_again():
    # Act
    report, gateway, ledger, _ = run(ENTRY, fetch_order=[MISSING, FILLED], place_market=[TIMEOUT])

    # Assert
    assert report.outcome is ReportOutcome.FILLED
    assert gateway.operations() == ["fetch_order", "place_market", "fetch_order"]
    assert ledger.kinds() == ["send", "send", "fence"]


def test_placement_timeout_and_not_found_waits_out_recv_window_before_sending_again():
    # Arrange: the first request timed out and the exchange does not show it (yet).
    clock = Clock()

    # Act
    report, gateway, _, _ = run(ENTRY, clock=clock, fetch_order=[MISSING, MISSING, MISSING],
                                place_market=[TIMEOUT, FILLED])

    # Assert: the second send only once the first can no longer execute.
    assert report.outcome is ReportOutcome.FILLED
    assert gateway.operations() == ["fetch_order", "place_market", "fetch_order", "fetch_order", "place_market"]
    first_send, second_send = [at for op, _, at in gateway.calls if op == "place_market"]
    assert second_send >= first_send + TIMING.settle_ms


def test_placement_an_earlier_send_by_another_executor_still_landing_is_waited_out_and_found():
    # Arrange: another process (a zombie, or one that died) sent it 1 s ago.
    ledger = MemoryLedger()
    ledger.written_by_another_executor(AttemptKind.SEND, START_MS - 1000)

    # Act
    report, gateway, _, clock = run(ENTRY, ledger=ledger, fetch_order=[MISSING, FILLED], place_market=[])

    # Assert: not sent while it could land; then the lookup finds the other's order.
    assert report.outcome is ReportOutcome.FILLED
    assert gateway.operations() == ["fetch_order", "fetch_order"]
    assert clock.sleeps == [(TIMING.settle_ms - 1000) / 1000]


def test_placement_of_a_fenced_id_is_never_sent_and_reports_what_the_exchange_shows():
    # Arrange: a query closed the id; the command arrives again (a redelivery).
    ledger = MemoryLedger()
    ledger.written_by_another_executor(AttemptKind.FENCE, START_MS - 60_000)

    # Act
    missing, gateway, _, _ = run(ENTRY, ledger=ledger, fetch_order=[MISSING], place_market=[])
    found, _, _, _ = run(ENTRY, ledger=ledger, fetch_order=[FILLED], place_market=[])

    # Assert
    assert missing.outcome is ReportOutcome.UNKNOWN and "not placed again" in missing.error_message
    assert gateway.operations() == ["fetch_order"]
    assert found.outcome is ReportOutcome.FILLED


def test_placement_rejected_is_fenced_so_a_redelivery_never_sends_it():
    # Act
    report, _, ledger, _ = run(ENTRY, fetch_order=[MISSING], place_market=[OrderRejected("binance", "Margin", -2019)])
    later = Clock()
    later.now_ms += 60_000  # redelivered a minute later
    again, gateway, _, _ = run(ENTRY, ledger=ledger, clock=later, fetch_order=[MISSING], place_market=[])

    # Assert
    assert report.outcome is ReportOutcome.REJECTED and report.error_code == -2019
    assert ledger.kinds()[:2] == ["send", "fence"]
    assert again.outcome is ReportOutcome.UNKNOWN and gateway.operations() == ["fetch_order"]


def test_placement_refused_as_duplicate_of_an_open_order_is_looked_up_not_resent():
    # Act
    report, gateway, _, _ = run(ENTRY, fetch_order=[MISSING, FILLED],
                                place_market=[DuplicateClientOrderId("binance", "ClientOrderId is duplicated.", -4116)])

    # Assert
    assert report.outcome is ReportOutcome.FILLED
    assert gateway.operations() == ["fetch_order", "place_market", "fetch_order"]


def test_placement_unreachable_exchange_every_round_reports_unknown_and_sends_at_most_once_per_window():
    # Act
    report, gateway, _, _ = run(ENTRY, fetch_order=[MISSING, TIMEOUT, TIMEOUT], place_market=[TIMEOUT])

    # Assert
    assert report.outcome is ReportOutcome.UNKNOWN
    assert gateway.operations().count("place_market") == 1


def test_placement_with_the_ledger_unavailable_sends_nothing_and_reports_unknown():
    # Act
    report, gateway, _, _ = run(ENTRY, ledger=MemoryLedger(unavailable=True), fetch_order=[], place_market=[])

    # Assert
    assert report.outcome is ReportOutcome.UNKNOWN and "broker down" in report.error_message
    assert gateway.calls == []


def test_stop_loss_is_rounded_to_the_market_precision_and_reported_with_its_price():
    # Act
    report, gateway, _, _ = run(STOP, fetch_order=[MISSING],
                                place_stop_market=[OrderState("pps1-x", "7", "accepted", None, None, None)])

    # Assert
    (_, args, _) = gateway.calls[1]
    assert args[3] == Decimal("9.751")
    assert gateway.calls[0][1] == ("APTUSDT", "pps1-x", True)  # looked up as a conditional order
    assert report.outcome is ReportOutcome.ACCEPTED
    assert report.stop_price == Decimal("9.751") and report.role is OrderRole.STOP_LOSS


def test_expired_order_with_an_executed_quantity_reports_it_with_the_cancel():
    # Arrange: a market order short of liquidity: EXPIRED with executedQty 20.
    expired = OrderState("ppe1-x", "42", "canceled", Decimal("20"), Decimal("10.00"), None)

    # Act
    report, _, _, _ = run(ENTRY, fetch_order=[MISSING], place_market=[expired])

    # Assert
    assert (report.outcome, report.filled_quantity, report.average_price) == (
        ReportOutcome.CANCELED, Decimal("20"), Decimal("10.00"))


def test_query_fences_the_id_and_not_found_with_nothing_landing_is_final():
    # Act
    report, gateway, ledger, _ = run(QUERY, fetch_order=[MISSING])

    # Assert
    assert report.outcome is ReportOutcome.NOT_FOUND
    assert ledger.kinds() == ["fence"]
    assert gateway.calls[0][1] == ("APTUSDT", "ppe1-x", False)


def test_query_while_a_send_may_still_land_waits_it_out_before_saying_not_found():
    # Arrange
    ledger = MemoryLedger()
    ledger.written_by_another_executor(AttemptKind.SEND, START_MS - 2000)

    # Act
    report, gateway, _, clock = run(QUERY, ledger=ledger, fetch_order=[MISSING, MISSING])

    # Assert
    assert report.outcome is ReportOutcome.NOT_FOUND
    assert gateway.operations() == ["fetch_order", "fetch_order"]
    assert gateway.calls[1][2] >= START_MS - 2000 + TIMING.settle_ms


def test_cancel_of_an_order_no_longer_open_reports_its_final_state():
    # Arrange: the stop triggered before the cancel.
    triggered = OrderState("pps1-x", "9", "filled", Decimal("61.8"), Decimal("9.70"), Decimal("9.75"))

    # Act
    report, gateway, ledger, _ = run(CANCEL, cancel_order=[MISSING], fetch_order=[triggered])

    # Assert
    assert report.outcome is ReportOutcome.FILLED
    assert gateway.operations() == ["cancel_order", "fetch_order"]
    assert ledger.kinds() == ["fence"]


def test_cancel_of_an_order_never_there_reports_not_found():
    # Act
    report, _, _, _ = run(CANCEL, cancel_order=[MISSING], fetch_order=[MISSING])

    # Assert
    assert report.outcome is ReportOutcome.NOT_FOUND

"""The order executor: carries out one command at the exchange and says what became of it.

Every outcome goes back to ``position-inputs`` as an execution report under the command's
key, so the state machine learns it in order with everything else about that key:

- accepted / filled (price and quantity) / canceled (with any executed quantity), as the
  exchange reports the order;
- rejected, with the exchange's code and message;
- not_found, when a query or cancel finds no order with that client id and no earlier
  placement of it can still arrive;
- unknown, when nothing could be learned (the exchange or the ledger unreachable, an
  earlier attempt that may still land): the state machine keeps the position in flight and
  its deadline asks again.

**The placement protocol.** Binance's client order id is unique among OPEN orders only: a
filled market order's id is accepted again, so a retry with the same id is a second order.
So a placement (entry, close, stop-loss), whether first sent, retried after a timeout or a
5xx, or delivered twice after a crash, a rebalance or a resend, goes:

1. claim: append "send <id> stamped T" to the attempt ledger (``streams.exchange.attempts``)
   and wait for Kafka's acknowledgement, learning every earlier record of the id;
2. a fence before it (a query, a cancel or an answered placement closed the id): never send;
   report what a lookup finds, else unknown;
3. look the order up by its client id (``fetch_order``; stops by their algo client id):
   found, report it; nothing is sent;
4. an earlier send whose request may still land (T' + recvWindow + margin not passed): wait
   until it cannot, then start over; never send meanwhile;
5. otherwise send, with the request's ``timestamp`` = T, then fence the id before reporting
   a definitive answer (accepted, filled, rejected).

Binance refuses a signed request whose timestamp is more than ``recvWindow`` old (-1021), so
once recvWindow + margin has passed since the latest send, an order the lookup does not
find can never appear: only then is a new send safe. A query or cancel fences the id first
and waits out any send still landing, so its not_found is final and no later redelivery of
the placement can act on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from streams.domain import (
    CancelOrder,
    ClosePosition,
    Command,
    ExecutionReport,
    InputEvent,
    OrderRole,
    PlaceEntry,
    PlaceStopLoss,
    QueryOrder,
    ReportOutcome,
)
from streams.edge.backoff import Backoff
from streams.exchange.errors import ExchangeError
from streams.exchange.attempts import AttemptKind, AttemptLedger, Claim, LedgerUnavailable
from streams.exchange.gateway import (
    CredentialsRejected,
    DuplicateClientOrderId,
    ExchangeEdgeError,
    ExchangeGateway,
    OrderMissing,
    OrderRejected,
    OrderState,
    RateLimited,
    RequestOutsideRecvWindow,
    TransientExchangeError,
)

logger = logging.getLogger(__name__)

__all__ = ["OrderExecutor", "PlacementTiming", "PlacementUnresolved", "RetryPolicy"]

_OUTCOME_OF_STATUS = {
    "filled": ReportOutcome.FILLED,
    "accepted": ReportOutcome.ACCEPTED,
    "canceled": ReportOutcome.CANCELED,
    "rejected": ReportOutcome.REJECTED,
}
# How many rate-limit pauses one command may sit through on top of its rounds.
_MAX_RATE_LIMIT_WAITS = 10


@dataclass(frozen=True)
class RetryPolicy:
    """How many rounds of the protocol one command gets, and the pause after a failed one (the edges' ``Backoff``)."""

    attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(0.2, 4.0))

    def delay(self, attempt: int) -> float:
        """The pause after failed round ``attempt`` (0-based)."""
        return self.backoff.delay(attempt)


@dataclass(frozen=True)
class PlacementTiming:
    """The clock arithmetic of the placement protocol.

    `recv_window_ms` must be the recvWindow the client sends (``create_binanceusdm``);
    `clock_margin_ms` covers Binance accepting timestamps up to 1 s ahead of its clock, the
    skew between executor hosts and the time a request spends inside the exchange.
    """

    recv_window_ms: int = 5000
    clock_margin_ms: int = 3000

    @property
    def settle_ms(self) -> int:
        """After a send stamped T, no request of it can execute once T + settle_ms has passed."""
        return self.recv_window_ms + self.clock_margin_ms

    @property
    def max_claim_age_ms(self) -> int:
        """A claim older than this is not sent (withdrawn and claimed again): its request must
        reach the exchange well inside its own recvWindow."""
        return self.recv_window_ms // 2


class PlacementUnresolved(ExchangeError):
    """Every round ended without an answer: the outcome is unknown, nothing more is sent now."""


class OrderExecutor:
    """Turns commands into exchange calls and exchange answers into execution reports."""

    def __init__(self, gateways: Mapping[str, ExchangeGateway], clock_ms: Callable[[], int], ledger: AttemptLedger,
                 timing: PlacementTiming = PlacementTiming(), retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._gateways = gateways
        self._clock_ms = clock_ms
        self._ledger = ledger
        self._timing = timing
        self._retry = retry
        self._sleep = sleep

    async def execute(self, command: Command) -> InputEvent:
        """Carries ``command`` out; returns the execution report to publish. Never raises."""
        gateway = self._gateways.get(command.exchange)
        if gateway is None:
            return self._report(command, ReportOutcome.REJECTED, error_message=f"no gateway for exchange "
                                f"{command.exchange!r}")
        started = time.monotonic()
        try:
            state = await self._carry_out(command, gateway)
        except OrderMissing as error:
            return self._report(command, ReportOutcome.NOT_FOUND, error_code=error.code,
                                error_message=error.exchange_message)
        except CredentialsRejected as error:
            logger.error("%s refused our credentials; check BINANCE_API_KEY/BINANCE_API_SECRET (%s)",
                         error.exchange, error.exchange_message)
            return self._report(command, ReportOutcome.REJECTED, error_code=error.code, error_message=str(error))
        except OrderRejected as error:
            return self._report(command, ReportOutcome.REJECTED, error_code=error.code, error_message=str(error))
        except (PlacementUnresolved, LedgerUnavailable, ExchangeEdgeError) as error:
            code = error.code if isinstance(error, ExchangeEdgeError) else None
            logger.warning("%s %s: outcome unknown after %.1fs: %s", type(command).__name__,
                           command.client_order_id, time.monotonic() - started, error)
            return self._report(command, ReportOutcome.UNKNOWN, error_code=code, error_message=str(error))
        except Exception as error:  # noqa: BLE001 - a bug must still produce a report, never a silent skip
            logger.exception("executing %s failed", command.command_id)
            return self._report(command, ReportOutcome.UNKNOWN, error_message=f"{type(error).__name__}: {error}")
        return self._report_state(command, state)

    async def _carry_out(self, command: Command, gateway: ExchangeGateway) -> OrderState:
        conditional = command.role is OrderRole.STOP_LOSS
        if isinstance(command, PlaceEntry | ClosePosition):
            reduce_only = isinstance(command, ClosePosition)
            return await self._place(command, gateway, conditional, lambda stamp: gateway.place_market(
                command.symbol, command.side, command.quantity, command.client_order_id, reduce_only, stamp))
        if isinstance(command, PlaceStopLoss):
            stop_price = await gateway.price_to_precision(command.symbol, command.stop_price)
            state = await self._place(command, gateway, conditional, lambda stamp: gateway.place_stop_market(
                command.symbol, command.side, command.quantity, stop_price, command.client_order_id, stamp))
            if state.stop_price is None:  # not every answer echoes it; it is the price we sent
                state = dataclasses.replace(state, stop_price=stop_price)
            return state
        if isinstance(command, QueryOrder):
            return await self._query(command, gateway, conditional)
        if isinstance(command, CancelOrder):
            return await self._cancel(command, gateway, conditional)
        raise OrderRejected(command.exchange, f"unsupported command {type(command).__name__}")

    # --- the protocol ----------------------------------------------------------------------

    async def _place(self, command: Command, gateway: ExchangeGateway, conditional: bool,
                     send: Callable[[int], Awaitable[OrderState]]) -> OrderState:
        """Steps 1-5 of the module's protocol, round after round; see the module docstring."""
        failures = rate_limit_waits = waits = 0
        while failures < self._retry.attempts and waits <= self._retry.attempts:
            claim = await self._ledger.claim(command.client_order_id, command.position_id, AttemptKind.SEND,
                                             self._clock_ms())
            try:
                if claim.fenced:
                    self._ledger.withdraw(claim.record)
                    return await self._answered(command, await self._settled_lookup(command, gateway, conditional,
                                                                                   claim))
                found = await self._lookup(command, gateway, conditional)
                if found is not None:
                    self._ledger.withdraw(claim.record)
                    logger.info("%s %s is already at the exchange (%s): not placed again",
                                type(command).__name__, command.client_order_id, found.status)
                    return await self._answered(command, found)
                landing = claim.sends_still_landing(self._clock_ms(), self._timing.settle_ms)
                if landing:
                    self._ledger.withdraw(claim.record)
                    waits += 1  # bounded: other executors sending again and again end it as unknown
                    await self._wait_out(command, landing)
                    continue
                if self._clock_ms() - claim.record.at_ms > self._timing.max_claim_age_ms:
                    self._ledger.withdraw(claim.record)  # too old to reach the exchange in time
                    failures += 1
                    continue
                state = await send(claim.record.at_ms)
            except RateLimited as error:
                # Answered before the exchange looked at the request: nothing was carried out.
                self._ledger.withdraw(claim.record)
                rate_limit_waits += 1
                if rate_limit_waits > _MAX_RATE_LIMIT_WAITS:
                    raise
                logger.warning("rate limited by %s; waiting %.0fs", error.exchange, error.retry_after_s)
                await self._sleep(error.retry_after_s)
                continue
            except (RequestOutsideRecvWindow, DuplicateClientOrderId) as error:
                # Refused, not carried out: too late for its recvWindow, or an open order holds
                # the id (the next round's lookup finds it).
                self._ledger.withdraw(claim.record)
                logger.warning("%s %s refused (%s); looking again", type(command).__name__,
                               command.client_order_id, error)
                failures += 1
                continue
            except OrderRejected:
                self._ledger.withdraw(claim.record)  # answered: it cannot land later
                await self._fence(command)
                raise
            except TransientExchangeError as error:
                # The send may or may not have been carried out: the next round looks it up,
                # and waits out its recvWindow if it is not there yet.
                delay = self._retry.delay(failures)
                failures += 1
                logger.warning("%s %s round %d failed (%s); looking it up in %.1fs, never re-sending blindly",
                               type(command).__name__, command.client_order_id, failures, error, delay)
                await self._sleep(delay)
                continue
            self._ledger.withdraw(claim.record)  # answered: it cannot land later
            return await self._answered(command, state)
        raise PlacementUnresolved(f"{command.client_order_id}: no answer after {failures} failed rounds and "
                                  f"{waits} waits for earlier attempts; the state machine's deadline will query it")

    async def _query(self, command: Command, gateway: ExchangeGateway, conditional: bool) -> OrderState:
        """Fence the id, wait out any placement still landing, then look: found, or not_found for good."""
        for _ in range(self._retry.attempts):
            claim = await self._ledger.claim(command.client_order_id, command.position_id, AttemptKind.FENCE,
                                             self._clock_ms())
            try:
                return await self._settled_lookup(command, gateway, conditional, claim, missing_is_final=True)
            except TransientExchangeError as error:
                logger.warning("query %s failed (%s); retrying", command.client_order_id, error)
                await self._sleep(self._retry.delay(0))
        raise PlacementUnresolved(f"{command.client_order_id}: the exchange did not answer the query")

    async def _cancel(self, command: Command, gateway: ExchangeGateway, conditional: bool) -> OrderState:
        """Fence the id, wait out any placement still landing, cancel; a non-open order is looked up."""
        for _ in range(self._retry.attempts):
            claim = await self._ledger.claim(command.client_order_id, command.position_id, AttemptKind.FENCE,
                                             self._clock_ms())
            landing = claim.sends_still_landing(self._clock_ms(), self._timing.settle_ms)
            if landing:
                # Cancel only once the placement cannot land after the cancel and rest on.
                await self._wait_out(command, landing)
                continue
            try:
                return await self._call(lambda: gateway.cancel_order(command.symbol, command.client_order_id,
                                                                     conditional))
            except OrderMissing:
                # Not open: filled, canceled, expired, or never there. Say which.
                found = await self._call(lambda: self._lookup(command, gateway, conditional))
                if found is None:
                    raise
                return found
            except TransientExchangeError as error:
                logger.warning("cancel %s failed (%s); retrying", command.client_order_id, error)
                await self._sleep(self._retry.delay(0))
        raise PlacementUnresolved(f"{command.client_order_id}: the exchange did not answer the cancel")

    async def _settled_lookup(self, command: Command, gateway: ExchangeGateway, conditional: bool, claim: Claim,
                              *, missing_is_final: bool = False) -> OrderState:
        """The order after every send before `claim` has landed or can no longer land."""
        found = await self._call(lambda: self._lookup(command, gateway, conditional))
        landing = claim.sends_still_landing(self._clock_ms(), self._timing.settle_ms)
        if found is None and landing:
            await self._wait_out(command, landing)
            found = await self._call(lambda: self._lookup(command, gateway, conditional))
        if found is not None:
            return found
        if missing_is_final:
            raise OrderMissing(command.exchange, f"no order {command.client_order_id}, and none can still arrive")
        raise PlacementUnresolved(f"{command.client_order_id} is closed to placement by an earlier query, cancel "
                                  "or answer, and the exchange has no such order: not placed again")

    async def _lookup(self, command: Command, gateway: ExchangeGateway, conditional: bool) -> OrderState | None:
        try:
            return await gateway.fetch_order(command.symbol, command.client_order_id, conditional)
        except OrderMissing:
            return None

    async def _answered(self, command: Command, state: OrderState) -> OrderState:
        """Close the id before the answer is reported: a redelivered command must not send it again."""
        await self._fence(command)
        return state

    async def _fence(self, command: Command) -> None:
        await self._ledger.claim(command.client_order_id, command.position_id, AttemptKind.FENCE, self._clock_ms())

    async def _wait_out(self, command: Command, landing: tuple) -> None:
        until = max(record.at_ms for record in landing) + self._timing.settle_ms
        delay_s = max(0.0, (until - self._clock_ms()) / 1000)
        logger.info("%s %s: an earlier attempt (%s) may still land; waiting %.1fs before looking again",
                    type(command).__name__, command.client_order_id,
                    ", ".join(sorted({r.executor for r in landing})), delay_s)
        await self._sleep(delay_s)

    async def _call(self, operation: Callable[[], Awaitable[OrderState | None]]):
        """One exchange call, waiting out rate limits (the exchange said when to come back)."""
        for _ in range(_MAX_RATE_LIMIT_WAITS):
            try:
                return await operation()
            except RateLimited as error:
                logger.warning("rate limited by %s; waiting %.0fs", error.exchange, error.retry_after_s)
                await self._sleep(error.retry_after_s)
        return await operation()

    # --- reports ---------------------------------------------------------------------------

    def _report_state(self, command: Command, state: OrderState) -> InputEvent:
        outcome = _OUTCOME_OF_STATUS.get(state.status, ReportOutcome.ACCEPTED)
        executed = state.filled_quantity if state.filled_quantity else None
        # A canceled or expired order that executed part of its quantity reports it: the state
        # machine takes it as the (partial) fill it is.
        carries_fill = outcome is ReportOutcome.FILLED or (executed is not None and executed > 0)
        return self._report(command, outcome, exchange_order_id=state.exchange_order_id,
                            filled_quantity=executed if carries_fill else None,
                            average_price=state.average_price if carries_fill else None,
                            stop_price=state.stop_price if command.role is OrderRole.STOP_LOSS else None)

    def _report(self, command: Command, outcome: ReportOutcome, *, exchange_order_id: str | None = None,
                filled_quantity: Decimal | None = None, average_price: Decimal | None = None,
                stop_price: Decimal | None = None, error_code: int | None = None,
                error_message: str | None = None) -> InputEvent:
        now = self._clock_ms()
        report = ExecutionReport(
            position_id=command.position_id, client_order_id=command.client_order_id, role=command.role,
            outcome=outcome, ts=now, exchange_order_id=exchange_order_id, filled_quantity=filled_quantity,
            average_price=average_price, stop_price=stop_price, error_code=error_code,
            error_message=error_message[:500] if error_message else None,
        )
        return InputEvent(event_id=f"report:{command.client_order_id}:{outcome.value}:{command.command_id}",
                          key=command.key, ts=now, payload=report)

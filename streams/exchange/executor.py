"""The order executor: carries out one command at the exchange and says what became of it.

Every outcome goes back to ``position-inputs`` as an execution report under the command's
key, so the state machine learns it in order with everything else about that key:

- accepted / filled (price and quantity) / canceled, as the exchange reports the order;
- rejected, with the exchange's code and message;
- not_found, when a query or cancel finds no order with that client id;
- unknown, when the exchange could not be reached after every retry.

A network error or timeout is retried with the SAME client order id; "duplicate client
order id" (-4116) means an earlier attempt got through, so the order is fetched instead of
placed again. A retried command can therefore never become a second order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from streams.exchange.gateway import (
    CredentialsRejected,
    DuplicateClientOrderId,
    ExchangeEdgeError,
    ExchangeGateway,
    OrderMissing,
    OrderRejected,
    OrderState,
    RateLimited,
    TransientExchangeError,
)

logger = logging.getLogger(__name__)

_OUTCOME_OF_STATUS = {
    "filled": ReportOutcome.FILLED,
    "accepted": ReportOutcome.ACCEPTED,
    "canceled": ReportOutcome.CANCELED,
    "rejected": ReportOutcome.REJECTED,
}


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying one command while the exchange cannot be reached."""

    attempts: int = 5
    backoff_s: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)

    def delay(self, attempt: int) -> float:
        return self.backoff_s[min(attempt, len(self.backoff_s) - 1)]


class OrderExecutor:
    """Turns commands into exchange calls and exchange answers into execution reports."""

    def __init__(self, gateways: Mapping[str, ExchangeGateway], clock_ms: Callable[[], int],
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self._gateways = gateways
        self._clock_ms = clock_ms
        self._retry = retry

    async def execute(self, command: Command) -> InputEvent:
        """Carries ``command`` out; returns the execution report to publish. Never raises."""
        gateway = self._gateways.get(command.exchange)
        if gateway is None:
            return self._report(command, ReportOutcome.REJECTED, error_message=f"no gateway for exchange "
                                f"{command.exchange!r}")
        try:
            if isinstance(command, PlaceEntry):
                state = await self._place(command, gateway, conditional=False, place=lambda: gateway.place_market(
                    command.symbol, command.side, command.quantity, command.client_order_id, reduce_only=False))
            elif isinstance(command, ClosePosition):
                state = await self._place(command, gateway, conditional=False, place=lambda: gateway.place_market(
                    command.symbol, command.side, command.quantity, command.client_order_id, reduce_only=True))
            elif isinstance(command, PlaceStopLoss):
                stop_price = await gateway.price_to_precision(command.symbol, command.stop_price)
                state = await self._place(command, gateway, conditional=True, place=lambda: gateway.place_stop_market(
                    command.symbol, command.side, command.quantity, stop_price, command.client_order_id))
                if state.stop_price is None:  # not every answer echoes it; it is the price we sent
                    state = dataclasses.replace(state, stop_price=stop_price)
            elif isinstance(command, QueryOrder):
                state = await self._with_retries(command, lambda: gateway.fetch_order(
                    command.symbol, command.client_order_id, command.role is OrderRole.STOP_LOSS))
            elif isinstance(command, CancelOrder):
                state = await self._with_retries(command, lambda: gateway.cancel_order(
                    command.symbol, command.client_order_id, command.role is OrderRole.STOP_LOSS))
            else:
                return self._report(command, ReportOutcome.REJECTED,
                                    error_message=f"unsupported command {type(command).__name__}")
        except OrderMissing as error:
            return self._report(command, ReportOutcome.NOT_FOUND, error_code=error.code,
                                error_message=error.exchange_message)
        except CredentialsRejected as error:
            logger.error("%s refused our credentials; check BINANCE_API_KEY/BINANCE_API_SECRET (%s)",
                         error.exchange, error.exchange_message)
            return self._report(command, ReportOutcome.REJECTED, error_code=error.code, error_message=str(error))
        except OrderRejected as error:
            return self._report(command, ReportOutcome.REJECTED, error_code=error.code, error_message=str(error))
        except TransientExchangeError as error:
            logger.warning("%s %s: outcome unknown after %d attempts: %s", type(command).__name__,
                           command.client_order_id, self._retry.attempts, error)
            return self._report(command, ReportOutcome.UNKNOWN, error_code=error.code, error_message=str(error))
        except ExchangeEdgeError as error:
            return self._report(command, ReportOutcome.UNKNOWN, error_code=error.code, error_message=str(error))
        except Exception as error:  # noqa: BLE001 - a bug must still produce a report, never a silent skip
            logger.exception("executing %s failed", command.command_id)
            return self._report(command, ReportOutcome.UNKNOWN, error_message=f"{type(error).__name__}: {error}")
        return self._report_state(command, state)

    async def _place(self, command: Command, gateway: ExchangeGateway, conditional: bool, place) -> OrderState:
        """Places an order, retrying with the same client id; a duplicate means it is there."""
        try:
            return await self._with_retries(command, place)
        except DuplicateClientOrderId:
            logger.info("%s already at the exchange (an earlier attempt got through): fetching it",
                        command.client_order_id)
            return await self._with_retries(command, lambda: gateway.fetch_order(
                command.symbol, command.client_order_id, conditional))

    async def _with_retries(self, command: Command, operation) -> OrderState:
        attempt = 0
        while True:
            try:
                return await operation()
            except RateLimited as error:
                # Not counted as a failed attempt: the exchange told us when to come back.
                logger.warning("rate limited by %s; waiting %.0fs", error.exchange, error.retry_after_s)
                await asyncio.sleep(error.retry_after_s)
            except TransientExchangeError as error:
                attempt += 1
                if attempt >= self._retry.attempts:
                    raise
                delay = self._retry.delay(attempt - 1)
                logger.warning("%s %s attempt %d failed (%s); retrying in %.1fs with the same client id",
                               type(command).__name__, command.client_order_id, attempt, error, delay)
                await asyncio.sleep(delay)

    def _report_state(self, command: Command, state: OrderState) -> InputEvent:
        outcome = _OUTCOME_OF_STATUS.get(state.status, ReportOutcome.ACCEPTED)
        return self._report(command, outcome, exchange_order_id=state.exchange_order_id,
                            filled_quantity=state.filled_quantity if outcome is ReportOutcome.FILLED else None,
                            average_price=state.average_price if outcome is ReportOutcome.FILLED else None,
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

"""The exchange as the executor and the poller see it: a few order operations, typed errors.

``CcxtGateway`` does them through a real ccxt client (Binance USD-M today; any exchange
ccxt speaks can get a gateway without the state machine knowing). It translates ccxt's
exception zoo into the few outcomes that matter to the executor, matching Binance's numeric
codes where ccxt's class is not enough (off the production URL, ccxt raises a plain
``ExchangeError`` for -4116 "duplicate client order id"). Credentials never appear in an
error or a log line: messages are built from the exchange name, the code and the
exchange's own message only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import ccxt.async_support as ccxt

from streams.domain import Side
from streams.exchange.ratelimit import ExchangeRateLimiter
from streams.exchange.errors import ExchangeError

logger = logging.getLogger(__name__)

DUPLICATE_CLIENT_ORDER_ID = -4116
ORDER_DOES_NOT_EXIST = -2013
# "Unknown order sent.": a cancel of an order that is not open (filled, canceled, never there).
UNKNOWN_ORDER_SENT = -2011
# "Timestamp for this request is outside of the recvWindow.": refused, never carried out.
OUTSIDE_RECV_WINDOW = -1021
_BINANCE_CODE = re.compile(r'"code"\s*:\s*(-?\d+)')
_BINANCE_MESSAGE = re.compile(r'"msg"\s*:\s*"([^"]*)"')

# Request weights of the endpoints used (Binance USD-M documentation); order placement
# counts against the order limits instead.
WEIGHT_ORDER = 1
WEIGHT_QUERY_ORDER = 1
WEIGHT_CANCEL_ORDER = 1
WEIGHT_POSITIONS = 5
WEIGHT_MARKETS = 1
WEIGHT_TIME = 1


class ExchangeEdgeError(ExchangeError):
    """Root of the exchange edge's errors; ``exchange`` names the exchange, never a secret."""

    def __init__(self, exchange: str, message: str, code: int | None = None) -> None:
        self.exchange = exchange
        self.code = code
        self.exchange_message = message
        super().__init__(f"{exchange}: {message}" + (f" (code {code})" if code is not None else ""))


class OrderRejected(ExchangeEdgeError):
    """The exchange refused the order; nothing was placed."""


class DuplicateClientOrderId(ExchangeEdgeError):
    """An OPEN order holds this client id (Binance's ids are unique among open orders only)."""


class RequestOutsideRecvWindow(ExchangeEdgeError):
    """The exchange refused the request for its timestamp (-1021): it was not carried out."""


class OrderMissing(ExchangeEdgeError):
    """The exchange has no order with this client id."""


class TransientExchangeError(ExchangeEdgeError):
    """Network failure, timeout or 5xx: the outcome is unknown; retry with the same client id."""


class RateLimited(TransientExchangeError):
    """429/418: back off for ``retry_after_s`` before anyone sends again."""

    def __init__(self, exchange: str, message: str, code: int | None, retry_after_s: float) -> None:
        super().__init__(exchange, message, code)
        self.retry_after_s = retry_after_s


class CredentialsRejected(ExchangeEdgeError):
    """The exchange refused the API key or the signature."""


@dataclass(frozen=True)
class OrderState:
    """An order as the exchange reports it."""

    client_order_id: str
    exchange_order_id: str | None
    status: str  # "filled", "accepted" (resting), "canceled", "rejected"
    filled_quantity: Decimal | None
    average_price: Decimal | None
    stop_price: Decimal | None


@dataclass(frozen=True)
class ExchangePosition:
    """A non-flat position the exchange holds."""

    symbol: str  # exchange-native, e.g. APTUSDT
    side: Side
    quantity: Decimal
    entry_price: Decimal | None
    mark_price: Decimal | None = None  # None when the exchange sends none
    unrealized_pnl: Decimal | None = None


class ExchangeGateway(Protocol):
    """What the executor and the poller need from one exchange."""

    name: str

    async def place_market(self, symbol: str, side: Side, quantity: Decimal, client_order_id: str,
                           reduce_only: bool, request_timestamp_ms: int) -> OrderState: ...

    async def place_stop_market(self, symbol: str, side: Side, quantity: Decimal, stop_price: Decimal,
                                client_order_id: str, request_timestamp_ms: int) -> OrderState: ...

    async def fetch_order(self, symbol: str, client_order_id: str, conditional: bool) -> OrderState: ...

    async def cancel_order(self, symbol: str, client_order_id: str, conditional: bool) -> OrderState: ...

    async def fetch_positions(self) -> list[ExchangePosition]: ...

    async def price_to_precision(self, symbol: str, price: Decimal) -> Decimal: ...

    async def server_time_ms(self) -> int: ...

    def use_clock_offset(self, offset_ms: int) -> None: ...

    async def close(self) -> None: ...


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


def _optional_decimal(value: Any) -> Decimal | None:
    """A display-only number from the exchange: None when absent or not a finite decimal.

    Never fails the poll: a snapshot without its mark price is still the exchange's position.
    """
    try:
        number = _decimal(value)
    except (InvalidOperation, ValueError):
        return None
    return number if number is not None and number.is_finite() else None


def binance_code(error: BaseException) -> int | None:
    """Binance's numeric error code inside a ccxt exception message, if any."""
    match = _BINANCE_CODE.search(str(error))
    return int(match.group(1)) if match else None


def _binance_message(error: BaseException) -> str:
    match = _BINANCE_MESSAGE.search(str(error))
    return match.group(1) if match else type(error).__name__


_STATUS = {"closed": "filled", "open": "accepted", "canceled": "canceled", "cancelled": "canceled",
           "expired": "canceled", "rejected": "rejected"}


def _by_client_id(client_order_id: str, conditional: bool) -> dict[str, Any]:
    """ccxt parameters naming an order by its client id; ``trigger`` for a conditional (algo) order."""
    params: dict[str, Any] = {"clientOrderId": client_order_id}
    if conditional:
        params["trigger"] = True
    return params


class CcxtGateway:
    """An ``ExchangeGateway`` over a ccxt async client, rate limited to the exchange's limits."""

    def __init__(self, name: str, client: ccxt.Exchange, limiter: ExchangeRateLimiter | None = None) -> None:
        self.name = name
        self._client = client
        self._limiter = limiter or ExchangeRateLimiter()
        self._markets_loaded = False

    @property
    def limiter(self) -> ExchangeRateLimiter:
        return self._limiter

    async def _call(self, weight: int, orders: int, operation: str, coroutine_factory) -> Any:
        await self._limiter.acquire(weight, orders)
        try:
            return await coroutine_factory()
        except ccxt.DDoSProtection as error:  # RateLimitExceeded is a subclass: 429 and 418
            code = binance_code(error)
            retry_after = 60.0 if "418" in str(error)[:40] else 5.0
            self._limiter.pause(retry_after)
            raise RateLimited(self.name, f"{operation}: rate limited: {_binance_message(error)}", code,
                              retry_after) from None
        except ccxt.AuthenticationError as error:
            raise CredentialsRejected(self.name, f"{operation}: credentials refused: {_binance_message(error)}",
                                      binance_code(error)) from None
        except ccxt.OrderNotFound as error:
            raise OrderMissing(self.name, f"{operation}: {_binance_message(error)}", binance_code(error)) from None
        except ccxt.OperationFailed as error:
            # NetworkError, timeouts, 5xx, and 5xx bodies with a code such as -1001 (ccxt's
            # OperationFailed): the request may or may not have been carried out.
            raise TransientExchangeError(self.name, f"{operation}: {type(error).__name__}: "
                                         f"{_binance_message(error)}", binance_code(error)) from None
        except ccxt.ExchangeError as error:
            code = binance_code(error)
            message = f"{operation}: {_binance_message(error)}"
            if code == DUPLICATE_CLIENT_ORDER_ID:
                raise DuplicateClientOrderId(self.name, message, code) from None
            if code in (ORDER_DOES_NOT_EXIST, UNKNOWN_ORDER_SENT):  # ccxt maps both to OrderNotFound on production
                raise OrderMissing(self.name, message, code) from None
            if code == OUTSIDE_RECV_WINDOW:
                raise RequestOutsideRecvWindow(self.name, message, code) from None
            raise OrderRejected(self.name, message, code) from None
        # `from None`: ccxt's own exception text includes the request URL, never the secret,
        # but its chained context can carry headers; keep only what was chosen above.

    async def _ensure_markets(self) -> None:
        if not self._markets_loaded:
            await self._call(WEIGHT_MARKETS, 0, "load_markets", lambda: self._client.load_markets())
            self._markets_loaded = True

    async def unified_symbol(self, symbol: str) -> str:
        """ccxt's unified symbol of an exchange-native one (APTUSDT -> APT/USDT:USDT)."""
        await self._ensure_markets()
        markets = self._client.markets_by_id.get(symbol)
        if not markets:
            raise OrderRejected(self.name, f"unknown symbol {symbol}")
        market = next((m for m in markets if m.get("swap") and m.get("linear")), markets[0])
        return market["symbol"]

    async def is_known_symbol(self, symbol: str) -> bool:
        await self._ensure_markets()
        return symbol in self._client.markets_by_id

    async def price_to_precision(self, symbol: str, price: Decimal) -> Decimal:
        unified = await self.unified_symbol(symbol)
        return Decimal(self._client.price_to_precision(unified, str(price)))

    async def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal:
        unified = await self.unified_symbol(symbol)
        return Decimal(self._client.amount_to_precision(unified, str(quantity)))

    def _order_state(self, order: dict, client_order_id: str, status_if_missing: str = "accepted") -> OrderState:
        raw_status = order.get("status")
        status = _STATUS.get(str(raw_status).lower(), "accepted") if raw_status is not None else status_if_missing
        info = order.get("info") or {}
        filled = _decimal(order.get("filled"))
        average = _decimal(order.get("average"))
        if status == "filled" and info.get("actualOrderId"):
            # A stop that fired: the algo order holds no fill of its own; the market order
            # it placed did, at `actualPrice`, for the stop's whole quantity.
            average = average or _decimal(info.get("actualPrice"))
            filled = filled or _decimal(order.get("amount")) or _decimal(info.get("quantity"))
        return OrderState(
            client_order_id=order.get("clientOrderId") or client_order_id,
            exchange_order_id=str(order["id"]) if order.get("id") is not None else None,
            status=status,
            filled_quantity=filled,
            average_price=average or (_decimal(order.get("price")) if status == "filled" else None),
            stop_price=_decimal(order.get("triggerPrice") or order.get("stopPrice")),
        )

    async def place_market(self, symbol: str, side: Side, quantity: Decimal, client_order_id: str,
                           reduce_only: bool, request_timestamp_ms: int) -> OrderState:
        """A market order stamped `request_timestamp_ms` (the signed request's `timestamp`).

        The stamp is the one the executor recorded in the attempt ledger before sending: the
        exchange refuses the request once recvWindow has passed since it, which is what lets
        a later attempt know when this one can no longer execute.
        """
        unified = await self.unified_symbol(symbol)
        params: dict[str, Any] = {"newClientOrderId": client_order_id, "timestamp": request_timestamp_ms}
        if reduce_only:
            params["reduceOnly"] = True
        order = await self._call(WEIGHT_ORDER, 1, f"market {side.value} {symbol}", lambda: self._client.create_order(
            unified, "market", side.value.lower(), str(quantity), None, params))
        return self._order_state(order, client_order_id)

    async def place_stop_market(self, symbol: str, side: Side, quantity: Decimal, stop_price: Decimal,
                                client_order_id: str, request_timestamp_ms: int) -> OrderState:
        """A reduce-only STOP_MARKET (a conditional order) stamped `request_timestamp_ms`."""
        unified = await self.unified_symbol(symbol)
        params = {"newClientOrderId": client_order_id, "stopPrice": str(stop_price), "reduceOnly": True,
                  "timestamp": request_timestamp_ms}
        order = await self._call(WEIGHT_ORDER, 1, f"stop-market {side.value} {symbol}",
                                 lambda: self._client.create_order(unified, "market", side.value.lower(),
                                                                   str(quantity), None, params))
        return self._order_state(order, client_order_id)

    async def fetch_order(self, symbol: str, client_order_id: str, conditional: bool) -> OrderState:
        order = await self._by_client_id("fetch_order", WEIGHT_QUERY_ORDER, symbol, client_order_id, conditional)
        return self._order_state(order, client_order_id)

    async def cancel_order(self, symbol: str, client_order_id: str, conditional: bool) -> OrderState:
        order = await self._by_client_id("cancel_order", WEIGHT_CANCEL_ORDER, symbol, client_order_id, conditional)
        # Binance's cancel answer for an algo order carries no status: the cancel succeeded.
        return self._order_state(order, client_order_id, status_if_missing="canceled")

    async def _by_client_id(self, method: str, weight: int, symbol: str, client_order_id: str,
                            conditional: bool) -> dict:
        """Calls ccxt's ``method`` (fetch_order, cancel_order) for the order with this client id."""
        unified = await self.unified_symbol(symbol)
        params = _by_client_id(client_order_id, conditional)
        call = getattr(self._client, method)
        return await self._call(weight, 0, f"{method.replace('_', ' ')} {client_order_id}",
                                lambda: call(None, unified, params))

    async def fetch_positions(self) -> list[ExchangePosition]:
        await self._ensure_markets()
        raw = await self._call(WEIGHT_POSITIONS, 0, "fetch positions", lambda: self._client.fetch_positions())
        positions = []
        for position in raw:
            contracts = _decimal(position.get("contracts")) or Decimal(0)
            if contracts == 0:
                continue
            info = position.get("info") or {}
            native = info.get("symbol") or self._client.market(position["symbol"])["id"]
            positions.append(ExchangePosition(
                symbol=native,
                side=Side.BUY if position.get("side") == "long" else Side.SELL,
                quantity=abs(contracts),
                entry_price=_decimal(position.get("entryPrice")),
                # From Binance's own strings, not ccxt's unified floats: money stays exact.
                mark_price=_optional_decimal(info.get("markPrice")),
                unrealized_pnl=_optional_decimal(info.get("unRealizedProfit")),
            ))
        return positions

    async def server_time_ms(self) -> int:
        """The exchange's clock (Binance ``GET /fapi/v1/time``: ``serverTime``)."""
        return int(await self._call(WEIGHT_TIME, 0, "server time", lambda: self._client.fetch_time()))

    def use_clock_offset(self, offset_ms: int) -> None:
        """Stamps every signed request with this host's clock + ``offset_ms`` (the exchange's clock)."""
        # ccxt signs with `milliseconds() - options["timeDifference"]` (binance.nonce).
        self._client.options["timeDifference"] = -offset_ms

    async def close(self) -> None:
        await self._client.close()


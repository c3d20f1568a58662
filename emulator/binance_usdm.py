"""A Binance USD-M futures REST emulator: the subset ccxt 4.5.90's ``binanceusdm`` calls.

It is the pipeline's exchange in paper trading (the embedded default of ``make run``) and
in tests. The real ccxt client talks to it unchanged; only the host differs
(``streams.exchange.ccxt_client.create_binanceusdm``).

Exchange endpoints (paths, parameters and response fields as Binance documents them)
------------------------------------------------------------------------------------
==========================================  ======  ===================  ===============
endpoint                                    signed  weight (IP)          ccxt method
==========================================  ======  ===================  ===============
GET    /fapi/v1/ping                        no      1                    -
GET    /fapi/v1/time                        no      1                    fetch_time
GET    /fapi/v1/exchangeInfo                no      1                    load_markets
GET    /fapi/v1/premiumIndex                no      1 (10 no symbol)     fetch_mark_price
GET    /fapi/v1/leverageBracket             yes     1                    fetch_positions (1st call)
GET    /fapi/v3/positionRisk                yes     5                    fetch_positions
GET    /fapi/v2/positionRisk                yes     5                    fetch_positions useV2
POST   /fapi/v1/order                       yes     0, 1 order           create_order (MARKET)
GET    /fapi/v1/order                       yes     1                    fetch_order
DELETE /fapi/v1/order                       yes     1                    cancel_order
GET    /fapi/v1/openOrders                  yes     1 (40 no symbol)     fetch_open_orders
POST   /fapi/v1/algoOrder                   yes     0, 1 order           create_order (stop)
GET    /fapi/v1/algoOrder                   yes     1                    fetch_order trigger
DELETE /fapi/v1/algoOrder                   yes     1                    cancel_order trigger
GET    /fapi/v1/openAlgoOrders              yes     1 (40 no symbol)     fetch_open_orders trigger
==========================================  ======  ===================  ===============

Any other path answers 404 ``{"code": -5000, ...}`` and is logged, so a test can prove
that, say, ``/sapi`` is never called.

Semantics: one-way position mode (``positionSide`` BOTH), cross margin, no balance (margin
is never short unless a fault says so). A MARKET order fills at once, completely, at the
symbol's mark price. ``STOP_MARKET`` / ``TAKE_PROFIT_MARKET`` orders are conditional
("algo") orders: placed through ``/fapi/v1/algoOrder`` (``algoType=CONDITIONAL``,
``clientAlgoId``, ``triggerPrice``); ``/fapi/v1/order`` refuses them with -4120 as Binance
does since the algo migration. A stop triggers when a mark-price update crosses its
trigger price (SELL stop: mark <= trigger; BUY stop: mark >= trigger; take-profit the
other way): it places a market order (``clientOrderId`` = the stop's ``clientAlgoId``
unless a regular order has that id, ``origType`` STOP_MARKET) that fills at the new mark price, and the algo order becomes
``FINISHED`` with ``actualOrderId``/``actualPrice``. A reduce-only stop that finds nothing
to reduce when it triggers becomes ``EXPIRED``. Reduce-only orders never open or increase
a position (-2022) and are cut to the position's size. Client ids follow Binance's
documented rule, "a unique id among open orders": a second use while the first order is
open (a regular order NEW or PARTIALLY_FILLED, an algo order NEW) is -4116, and once that
order is filled, canceled or expired the id is accepted again and names a second order
(a query by client id answers the latest). ``client_id_rule="forever"`` (``--client-id-rule
forever``) makes an id unique for good, stricter than Binance. Regular and algo ids are
separate namespaces. Money is ``Decimal`` inside and strings on the wire, formatted to the
symbol's tick and step.

Authentication, as Binance does it: ``X-MBX-APIKEY`` header (missing: -2014, unknown:
-2015); HMAC-SHA256 hex of the query string concatenated with the body, minus the
``signature`` parameter (missing: -1102, wrong: -1022); ``timestamp`` must lie within
``recvWindow`` (default 5000 ms, at most 60000) behind the server clock and at most
1000 ms ahead (-1021).

Rate limits, enforced in fixed windows aligned to the clock like Binance's: request
weight 2400/min (-1003), orders 300/10 s and 1200/min (-1015), all with HTTP 429 and
``Retry-After``; every answer carries ``X-MBX-USED-WEIGHT-1M`` and, for order placements,
``X-MBX-ORDER-COUNT-10S`` / ``X-MBX-ORDER-COUNT-1M``. With ``ban_seconds`` set, a client
that does not back off (any request after a weight 429, any order after an order 429,
before the window the 429 named has ended) is banned: HTTP 418 -1003 to every request
until the ban ends. The limits are published in exchangeInfo's ``rateLimits``.

Control API (JSON, under ``/_emulator/``, never logged, never rate limited or faulted)
------------------------------------------------------------------------------------
``GET  /_emulator/health``          -> ``{"ok": true, "base_url": ...}``
``GET  /_emulator/mark_price``      -> ``{"BTCUSDT": "100000.00", ...}``
``POST /_emulator/mark_price``      ``{"symbol", "price"}`` -> ``{"symbol", "price",
                                    "triggered": [clientAlgoId, ...]}``. The price must be a
                                    multiple of the tick size (fills happen at book prices).
``GET  /_emulator/positions``       -> non-flat positions ``[{"symbol", "side": "BUY"|"SELL",
                                    "quantity", "entry_price", "position_amt",
                                    "update_time_ms"}]``
``POST /_emulator/positions``       ``{"symbol", "side": "BUY"|"SELL"|"LONG"|"SHORT",
                                    "quantity", "entry_price"?}``: a position opened or
                                    changed "by hand" (no order); ``quantity`` "0" closes it;
                                    ``entry_price`` defaults to the mark price.
``GET  /_emulator/orders``          -> every order the exchange accepted, regular and algo,
                                    oldest first; ``?symbol=``, ``?kind=regular|algo``,
                                    ``?client_order_id=`` filter. Fields: ``kind``,
                                    ``client_order_id``, ``exchange_order_id``, ``symbol``,
                                    ``side``, ``type``, ``quantity``, ``stop_price``,
                                    ``reduce_only``, ``close_position``, ``status``,
                                    ``executed_qty``, ``avg_price``, ``source``
                                    ("api"|"trigger"), ``time_ms``, ``update_time_ms``,
                                    and ``actual_order_id`` for algo orders.
``GET  /_emulator/rejections``      -> order placements the exchange refused (nothing was
                                    placed): ``client_order_id``, ``symbol``, ``side``,
                                    ``type``, ``path``, ``code``, ``msg``, ``time_ms``.
``GET  /_emulator/requests``        -> log of exchange requests, oldest first: ``seq``,
                                    ``time_ms`` (wall clock), ``method``, ``path``,
                                    ``signed``, ``params`` (without ``signature``),
                                    ``weight``, ``order`` (counts as an order), ``status``
                                    (HTTP, null when dropped), ``code`` (Binance error),
                                    ``fault``, ``dropped``. ``?since=<seq>`` and ``?path=``.
``POST /_emulator/faults``          one rule; answers it with its ``id``. Fields:
                                    ``kind`` (below), ``count`` (requests it applies to,
                                    default 1; null = until cleared), ``method``, ``path``
                                    (filters; none = every exchange endpoint, except
                                    ``reject`` whose default is the two order-placement
                                    endpoints), and per kind:
    - ``http_error``: answer HTTP ``status`` (default 503) without processing; with
      ``code``/``msg`` the body is Binance's JSON, else the plain reason phrase. With
      ``after_processing: true`` the request is carried out first (an order is created) and
      the error is the answer (Binance: for a 5xx "the execution status is UNKNOWN and could
      have been a success").
    - ``rate_limit``: HTTP ``status`` 429 (default) or 418 with -1003 and
      ``Retry-After: retry_after_s`` (default 1).
    - ``hang``: never answer; after ``seconds`` (default 300) drop the connection.
    - ``accept_then_timeout``: process the request for real (the order is created), then
      after ``seconds`` (default 0) drop the connection instead of answering (a lost answer).
    - ``hold_answer``: process the request for real, then hold the answer ``seconds``
      (default 0) before sending it (a client that gives up first, or dies, never sees it).
    - ``partial_fill``: the next MARKET order on ``/fapi/v1/order`` fills only ``quantity``;
      ``remainder`` ``expire`` (default: the order ends EXPIRED with that executedQty, as a
      MARKET order short of liquidity does) or ``rest`` (PARTIALLY_FILLED, open; the rest
      fills at the next mark price change).
    - ``reject``: after authentication, answer Binance error ``code`` (e.g. -2019) with
      ``msg`` (default: Binance's text for known codes) and HTTP ``status`` (default 400),
      without processing.
``GET  /_emulator/faults``          -> the pending rules; ``DELETE /_emulator/faults`` clears.
``POST /_emulator/latency``         ``{"seconds", "method"?, "path"?}``: every matching
                                    request waits that long before it is processed (the
                                    largest matching rule wins; 0 removes the rule).
                                    ``GET`` lists, ``DELETE`` clears.
``GET  /_emulator/rate_limits``     -> the limit configuration.
``POST /_emulator/rate_limits``     any of ``request_weight_per_minute``,
                                    ``orders_per_10s``, ``orders_per_minute``, ``enforce``,
                                    ``ban_seconds``; answers the resulting configuration.
``POST /_emulator/clock``           ``{"offset_ms"}``: the server clock runs that far from
                                    the wall clock (timestamp checks, serverTime).
``POST /_emulator/reset``           back to the state at start: no positions or orders,
                                    default mark prices, no faults or latency, default
                                    limits, empty logs, clock offset 0; hung requests drop.

Errors of the control API: HTTP 400 ``{"error": "..."}``.

Note for fault design: aiohttp's client re-sends an idempotent request (GET, DELETE) once
when the server drops a reused connection, so a ``count: 1`` drop on a GET may be followed
by a successful retry of that GET; POSTs are never re-sent.

Everything is in memory, single event loop, no sleeping except configured latency, hangs
and delayed drops (each bounded, and released by ``reset``/``stop``).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

__all__ = [
    "CLIENT_ID_RULES",
    "CLIENT_ID_UNIQUE_AMONG_OPEN",
    "CLIENT_ID_UNIQUE_FOREVER",
    "BinanceError",
    "BinanceUsdmEmulator",
    "CONTROL_PREFIX",
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "ExchangeBook",
    "RateLimitConfig",
    "SymbolSpec",
    "bench_symbols",
    "default_symbols",
]

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "emulator-api-key"
DEFAULT_API_SECRET = "emulator-api-secret"
CONTROL_PREFIX = "/_emulator"

CLIENT_ID_PATTERN = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_DECIMAL_PATTERN = re.compile(r"^-?([0-9]{1,20})(\.[0-9]{1,20})?$")
PERPETUAL_DELIVERY_DATE = 4133404800000  # what Binance sends as deliveryDate of perpetuals
DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
MAX_AHEAD_MS = 1000  # Binance refuses a timestamp more than 1 s ahead of its clock
MAX_OPEN_ALGO_ORDERS = 10  # MAX_NUM_ALGO_ORDERS filter, per symbol
MAX_FAULT_SECONDS = 3600.0  # bound of every configured wait (hang, drop delay, latency)
REQUEST_LOG_SIZE = 100_000
DEFAULT_LEVERAGE = 20

# Client order ids. Binance USD-M documents `newClientOrderId` (POST /fapi/v1/order) and
# `clientAlgoId` (POST /fapi/v1/algoOrder) as "A unique id among open orders. Automatically
# generated if not sent.": once the order holding an id is filled, canceled or expired, the
# same id is accepted again. That is the default here; "forever" (an id is never accepted
# twice) is stricter than Binance and exists only to compare against.
CLIENT_ID_UNIQUE_AMONG_OPEN = "open_orders"
CLIENT_ID_UNIQUE_FOREVER = "forever"
CLIENT_ID_RULES = (CLIENT_ID_UNIQUE_AMONG_OPEN, CLIENT_ID_UNIQUE_FOREVER)
OPEN_ORDER_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})
OPEN_ALGO_STATUSES = frozenset({"NEW"})
# What a `partial_fill` fault does with the part of a market order it leaves unfilled.
PARTIAL_REMAINDER_EXPIRES = "expire"  # EXPIRED at once, executedQty > 0
PARTIAL_REMAINDER_RESTS = "rest"  # PARTIALLY_FILLED; the rest fills at the next mark price change
PARTIAL_REMAINDERS = (PARTIAL_REMAINDER_EXPIRES, PARTIAL_REMAINDER_RESTS)

# Binance's texts for the codes the emulator answers; a `reject` fault without `msg` uses them.
ERROR_MESSAGES: dict[int, str] = {
    -1001: "Internal error; unable to process your request. Please try again.",
    -1003: "Too many requests; current limit of IP(127.0.0.1) is {limit} requests per minute. "
           "Please use the websocket for live updates to avoid polling the API.",
    -1015: "Too many new orders; current limit is {limit} orders per {interval}.",
    -1021: "Timestamp for this request is outside of the recvWindow.",
    -1022: "Signature for this request is not valid.",
    -1102: "Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
    -1111: "Precision is over the maximum defined for this asset.",
    -1116: "Invalid orderType.",
    -1117: "Invalid side.",
    -1121: "Invalid symbol.",
    -1131: "recvWindow must be less than 60000",
    -2011: "Unknown order sent.",
    -2013: "Order does not exist.",
    -2014: "API-key format invalid.",
    -2015: "Invalid API-key, IP, or permissions for action.",
    -2019: "Margin is insufficient.",
    -2021: "Order would immediately trigger.",
    -2022: "ReduceOnly Order is rejected.",
    -4003: "Quantity less than or equal to zero.",
    -4005: "Quantity greater than max quantity.",
    -4014: "Price not increased by tick size.",
    -4045: "Reach max stop order limit.",
    -4061: "Order's position side does not match user's setting.",
    -4116: "ClientOrderId is duplicated.",
    -4120: "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.",
    -4164: "Order's notional must be no smaller than {notional} (unless you choose reduce only).",
}

_HTTP_401_CODES = frozenset({-2014, -2015})


class BinanceError(Exception):
    """An answer in Binance's error shape: ``{"code": code, "msg": msg}`` with an HTTP status."""

    def __init__(self, code: int, msg: str | None = None, http_status: int | None = None, **fmt: Any) -> None:
        text = msg if msg is not None else ERROR_MESSAGES.get(code, "Unknown error.")
        if fmt:
            text = text.format(**fmt)
        super().__init__(f"{code}: {text}")
        self.code = code
        self.msg = text
        self.http_status = http_status or (401 if code in _HTTP_401_CODES else 400)
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        """The JSON body Binance sends."""
        return {"code": self.code, "msg": self.msg}


# --------------------------------------------------------------------------------------
# Symbols
# --------------------------------------------------------------------------------------


def _places(step: Decimal) -> int:
    """Decimal places of a tick or step size (0.10 -> 1, 1 -> 0)."""
    exponent = step.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _fmt(value: Decimal, places: int) -> str:
    """``value`` with exactly ``places`` decimals, never in scientific notation."""
    quantum = Decimal(1).scaleb(-places)
    return format(value.quantize(quantum), "f")


def _fmt_free(value: Decimal, min_places: int = 0, max_places: int = 8) -> str:
    """``value`` with at most ``max_places`` decimals (trailing zeros cut to ``min_places``)."""
    text = _fmt(value, max_places)
    if "." in text:
        whole, fraction = text.split(".")
        fraction = fraction.rstrip("0").ljust(min_places, "0")
        text = f"{whole}.{fraction}" if fraction else whole
    return text


@dataclass(frozen=True)
class SymbolSpec:
    """One USD-M perpetual: its filters (as exchangeInfo publishes them) and default mark price."""

    symbol: str
    base_asset: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    min_price: Decimal
    max_price: Decimal
    mark_price: Decimal
    quote_asset: str = "USDT"
    onboard_date: int = 1569398400000

    @property
    def price_precision(self) -> int:
        """Decimals of a price (what exchangeInfo calls pricePrecision)."""
        return _places(self.tick_size)

    @property
    def quantity_precision(self) -> int:
        """Decimals of a quantity (quantityPrecision)."""
        return _places(self.step_size)

    def price(self, value: Decimal) -> str:
        """A price on the wire, to the tick's decimals."""
        return _fmt(value, self.price_precision)

    def qty(self, value: Decimal) -> str:
        """A quantity on the wire, to the step's decimals."""
        return _fmt(value, self.quantity_precision)

    def exchange_info(self, order_types: Sequence[str]) -> dict[str, Any]:
        """The symbol's entry in ``/fapi/v1/exchangeInfo``."""
        return {
            "symbol": self.symbol,
            "pair": self.symbol,
            "contractType": "PERPETUAL",
            "deliveryDate": PERPETUAL_DELIVERY_DATE,
            "onboardDate": self.onboard_date,
            "status": "TRADING",
            "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000",
            "baseAsset": self.base_asset,
            "quoteAsset": self.quote_asset,
            "marginAsset": self.quote_asset,
            "pricePrecision": self.price_precision,
            "quantityPrecision": self.quantity_precision,
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "underlyingType": "COIN",
            "underlyingSubType": [],
            "triggerProtect": "0.0500",
            "liquidationFee": "0.012500",
            "marketTakeBound": "0.05",
            "maxMoveOrderLimit": 10000,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": self.price(self.min_price),
                 "maxPrice": self.price(self.max_price), "tickSize": self.price(self.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": self.qty(self.min_qty), "maxQty": self.qty(self.max_qty),
                 "stepSize": self.qty(self.step_size)},
                {"filterType": "MARKET_LOT_SIZE", "minQty": self.qty(self.min_qty),
                 "maxQty": self.qty(self.market_max_qty), "stepSize": self.qty(self.step_size)},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": MAX_OPEN_ALGO_ORDERS},
                {"filterType": "MIN_NOTIONAL", "notional": _fmt_free(self.min_notional)},
                {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
                 "multiplierDecimal": "4"},
            ],
            "orderTypes": list(order_types),
            "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        }


def _spec(symbol: str, base: str, tick: str, step: str, min_qty: str, max_qty: str, market_max: str,
          notional: str, min_price: str, max_price: str, mark: str) -> SymbolSpec:
    return SymbolSpec(symbol, base, Decimal(tick), Decimal(step), Decimal(min_qty), Decimal(max_qty),
                      Decimal(market_max), Decimal(notional), Decimal(min_price), Decimal(max_price), Decimal(mark))


# Filters close to Binance's own for these perpetuals.
REAL_SYMBOLS: tuple[SymbolSpec, ...] = (
    _spec("BTCUSDT", "BTC", "0.10", "0.001", "0.001", "1000", "120", "100", "261.10", "809484", "100000.00"),
    _spec("ETHUSDT", "ETH", "0.01", "0.001", "0.001", "10000", "2000", "20", "39.86", "306177", "3500.00"),
    _spec("APTUSDT", "APT", "0.0001", "0.1", "0.1", "1000000", "100000", "5", "0.0100", "2000", "10.0000"),
    _spec("SOLUSDT", "SOL", "0.01", "1", "1", "1000000", "5000", "5", "0.42", "6857", "150.00"),
)


def bench_symbols(count: int, prefix: str = "BENCH") -> tuple[SymbolSpec, ...]:
    """``count`` generated perpetuals for load tests: BENCH0USDT, BENCH1USDT, ...

    Mark price 100 + index (tick 0.01, step 0.1, min notional 5): any quantity >= 0.1 passes
    every filter.
    """
    return tuple(
        _spec(f"{prefix}{index}USDT", f"{prefix}{index}", "0.01", "0.1", "0.1", "1000000", "100000", "5",
              "0.01", "1000000", str(Decimal(100 + index).quantize(Decimal("0.01"))))
        for index in range(count)
    )


def default_symbols(bench_count: int = 300) -> tuple[SymbolSpec, ...]:
    """BTCUSDT, ETHUSDT, APTUSDT, SOLUSDT and ``bench_count`` BENCH symbols."""
    return REAL_SYMBOLS + bench_symbols(bench_count)


# Leverage brackets (notional floor, cap, initial leverage, maintenance margin ratio, cum).
_BRACKETS: tuple[tuple[int, int, int, str, int], ...] = (
    (0, 50_000, 50, "0.01", 0),
    (50_000, 250_000, 25, "0.02", 500),
    (250_000, 1_000_000, 10, "0.05", 8_000),
    (1_000_000, 5_000_000, 5, "0.10", 58_000),
)


def _maint_margin_ratio(notional: Decimal) -> Decimal:
    ratio = Decimal(_BRACKETS[0][3])
    for floor, _cap, _leverage, mmr, _cum in _BRACKETS:
        if notional >= floor:
            ratio = Decimal(mmr)
    return ratio


# --------------------------------------------------------------------------------------
# The book: positions, orders, mark prices. Pure state and rules, no I/O.
# --------------------------------------------------------------------------------------

REGULAR_ORDER_TYPES = ("MARKET",)
ALGO_ORDER_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET")
# Conditional types Binance moved to the algo service; /fapi/v1/order refuses them.
_MOVED_TO_ALGO = frozenset({"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"})
PUBLISHED_ORDER_TYPES = ("LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                         "TRAILING_STOP_MARKET")


@dataclass
class Position:
    """A one-way position: ``amount`` > 0 long, < 0 short."""

    symbol: str
    amount: Decimal = Decimal(0)
    entry_price: Decimal = Decimal(0)
    update_time_ms: int = 0


@dataclass
class Order:
    """A regular (matching-engine) order."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    orig_type: str
    quantity: Decimal
    reduce_only: bool
    time_ms: int
    status: str = "NEW"
    executed_qty: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    cum_quote: Decimal = Decimal(0)
    stop_price: Decimal = Decimal(0)
    update_time_ms: int = 0
    source: str = "api"


@dataclass(frozen=True)
class PartialFill:
    """How much of a market order fills at once, and what becomes of the rest."""

    quantity: Decimal
    remainder: str = PARTIAL_REMAINDER_EXPIRES


@dataclass
class AlgoOrder:
    """A conditional order held by the algo service until its trigger price is crossed."""

    algo_id: int
    client_algo_id: str
    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    trigger_price: Decimal
    reduce_only: bool
    close_position: bool
    working_type: str
    time_in_force: str
    create_time_ms: int
    status: str = "NEW"
    update_time_ms: int = 0
    trigger_time_ms: int = 0
    actual_order_id: int | None = None
    actual_price: Decimal = Decimal(0)


def _param(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise BinanceError(-1102, name=name)
    return value


def _decimal_param(params: dict[str, str], name: str) -> Decimal:
    raw = _param(params, name)
    if not _DECIMAL_PATTERN.match(raw):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                                  r"'^([0-9]{1,20})(\.[0-9]{1,20})?$'.")
    return Decimal(raw)


def _bool_param(params: dict[str, str], name: str) -> bool:
    raw = params.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is 'true, false'.")
    return raw == "true"


def _client_id_param(params: dict[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not CLIENT_ID_PATTERN.match(value):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                                  r"'^[\.A-Z\:/a-z0-9_-]{1,36}$'.")
    return value


class ExchangeBook:
    """Positions, orders and mark prices of one account, and the rules that change them.

    Methods take Binance's request parameters (strings) and return the records; they raise
    ``BinanceError`` exactly where Binance answers an error. ``clock`` gives the server time
    in epoch milliseconds.
    """

    def __init__(self, symbols: Iterable[SymbolSpec], clock: Callable[[], int],
                 client_id_rule: str = CLIENT_ID_UNIQUE_AMONG_OPEN) -> None:
        if client_id_rule not in CLIENT_ID_RULES:
            raise ValueError(f"client_id_rule must be one of {', '.join(CLIENT_ID_RULES)}, got {client_id_rule!r}")
        self.specs: dict[str, SymbolSpec] = {spec.symbol: spec for spec in symbols}
        self._clock = clock
        self.client_id_rule = client_id_rule
        self.marks: dict[str, Decimal] = {}
        self.positions: dict[str, Position] = {}
        # Every order ever accepted, in arrival order. Under Binance's documented rule one
        # client id may name several orders (one open at a time), so ids index lists.
        self.orders: list[Order] = []
        self.orders_by_id: dict[int, Order] = {}
        self.orders_by_client_id: dict[str, list[Order]] = {}
        self.algos: list[AlgoOrder] = []
        self.algos_by_id: dict[int, AlgoOrder] = {}
        self.algos_by_client_id: dict[str, list[AlgoOrder]] = {}
        self._ids = itertools.count(4_000_000_001)
        self._algo_ids = itertools.count(1_000_001)
        self._generated_ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """No positions, no orders, default mark prices."""
        self.marks = {symbol: spec.mark_price for symbol, spec in self.specs.items()}
        self.positions.clear()
        self.orders.clear()
        self.orders_by_id.clear()
        self.orders_by_client_id.clear()
        self.algos.clear()
        self.algos_by_id.clear()
        self.algos_by_client_id.clear()

    # -- lookups ----------------------------------------------------------------------

    def spec(self, symbol: str | None) -> SymbolSpec:
        """The symbol's spec, or -1121 as Binance answers an unknown symbol."""
        if not symbol:
            raise BinanceError(-1102, name="symbol")
        spec = self.specs.get(symbol)
        if spec is None:
            raise BinanceError(-1121)
        return spec

    def position(self, symbol: str) -> Position:
        """The symbol's position record (flat when never traded)."""
        return self.positions.get(symbol) or Position(symbol)

    def _new_client_id(self) -> str:
        # Binance generates a random id when none is sent; a counter keeps runs reproducible.
        return f"emulator-{next(self._generated_ids)}"

    # -- validation shared by both order endpoints -------------------------------------

    def _side(self, params: dict[str, str]) -> str:
        side = _param(params, "side")
        if side not in ("BUY", "SELL"):
            raise BinanceError(-1117)
        return side

    def _check_position_side(self, params: dict[str, str]) -> None:
        if params.get("positionSide", "BOTH") != "BOTH":
            raise BinanceError(-4061)  # the account is in one-way mode

    def _check_quantity(self, spec: SymbolSpec, quantity: Decimal, max_qty: Decimal) -> None:
        if quantity <= 0:
            raise BinanceError(-4003)
        if quantity % spec.step_size != 0:
            raise BinanceError(-1111)
        if quantity < spec.min_qty:
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        if quantity > max_qty:
            raise BinanceError(-4005)

    def _check_price(self, spec: SymbolSpec, price: Decimal) -> None:
        if price % spec.tick_size != 0:
            raise BinanceError(-4014)
        if price < spec.min_price:
            raise BinanceError(-4013, "Price less than min price.")
        if price > spec.max_price:
            raise BinanceError(-4016, f"Limit price can't be higher than {spec.price(spec.max_price)}.")

    def _reducible(self, symbol: str, side: str) -> Decimal:
        """How much an order of ``side`` can reduce the position (0: it would open or increase)."""
        amount = self.position(symbol).amount
        if side == "SELL" and amount > 0:
            return amount
        if side == "BUY" and amount < 0:
            return -amount
        return Decimal(0)

    # -- regular orders ---------------------------------------------------------------

    def _check_client_id_free(self, held_by: list | None, open_statuses: frozenset[str]) -> None:
        """-4116 when the id is taken under the book's client-id rule (see CLIENT_ID_RULES)."""
        if not held_by:
            return
        if self.client_id_rule == CLIENT_ID_UNIQUE_FOREVER or any(o.status in open_statuses for o in held_by):
            raise BinanceError(-4116)

    def place_order(self, params: dict[str, str], partial: PartialFill | None = None) -> Order:
        """POST /fapi/v1/order: a MARKET order, filled at once at the mark price.

        ``partial`` (a fault) fills only part of it; the rest expires at once or rests.
        """
        spec = self.spec(params.get("symbol"))
        side = self._side(params)
        order_type = _param(params, "type")
        if order_type in _MOVED_TO_ALGO:
            raise BinanceError(-4120)
        if order_type not in REGULAR_ORDER_TYPES:
            raise BinanceError(-1116)  # LIMIT is real but not emulated: nothing here would fill it
        self._check_position_side(params)
        quantity = _decimal_param(params, "quantity")
        self._check_quantity(spec, quantity, spec.market_max_qty)
        reduce_only = _bool_param(params, "reduceOnly")
        client_id = _client_id_param(params, "newClientOrderId") or self._new_client_id()
        self._check_client_id_free(self.orders_by_client_id.get(client_id), OPEN_ORDER_STATUSES)
        mark = self.marks[spec.symbol]
        if reduce_only:
            if self._reducible(spec.symbol, side) == 0:
                raise BinanceError(-2022)
        elif quantity * mark < spec.min_notional:
            raise BinanceError(-4164, notional=_fmt_free(spec.min_notional))
        now = self._clock()
        order = Order(order_id=next(self._ids), client_order_id=client_id, symbol=spec.symbol, side=side,
                      type=order_type, orig_type=order_type, quantity=quantity, reduce_only=reduce_only,
                      time_ms=now, update_time_ms=now)
        self._register(order)
        if partial is None:
            self._fill(order, mark, order.quantity)
            return order
        self._fill(order, mark, min(partial.quantity, order.quantity))
        if order.status == "PARTIALLY_FILLED" and partial.remainder == PARTIAL_REMAINDER_EXPIRES:
            # Binance's order status EXPIRED: "The order was canceled according to the order
            # type's rules (e.g. LIMIT FOK orders with no fill, LIMIT IOC or MARKET orders that
            # partially fill) or by the exchange": a MARKET order can end EXPIRED with
            # executedQty > 0, and the position holds what was executed.
            order.status = "EXPIRED"
        return order

    def _register(self, order: Order) -> None:
        self.orders.append(order)
        self.orders_by_id[order.order_id] = order
        self.orders_by_client_id.setdefault(order.client_order_id, []).append(order)

    def _fill(self, order: Order, price: Decimal, quantity: Decimal) -> None:
        """Fills ``quantity`` more of ``order`` at ``price`` (reduce-only: at most the position's size)."""
        if order.reduce_only:
            quantity = min(quantity, self._reducible(order.symbol, order.side))
        quantity = min(quantity, order.quantity - order.executed_qty)
        signed = quantity if order.side == "BUY" else -quantity
        self._apply_trade(order.symbol, signed, price)
        order.executed_qty += quantity
        order.cum_quote += quantity * price
        if order.executed_qty:
            order.avg_price = order.cum_quote / order.executed_qty
        # A reduce-only order cut to the position's size is complete: nothing is left to reduce.
        complete = order.executed_qty == order.quantity or order.reduce_only
        order.status = "FILLED" if complete else "PARTIALLY_FILLED"
        order.update_time_ms = self._clock()

    def _apply_trade(self, symbol: str, signed_qty: Decimal, price: Decimal) -> None:
        """One-way mode netting: increase (weighted entry), reduce (entry kept) or flip (new entry)."""
        position = self.position(symbol)
        old = position.amount
        new = old + signed_qty
        if new == 0:
            entry = Decimal(0)
        elif old == 0 or (old > 0) != (new > 0):
            entry = price  # opened, or flipped through zero
        elif abs(new) > abs(old):
            entry = (abs(old) * position.entry_price + abs(signed_qty) * price) / abs(new)
        else:
            entry = position.entry_price
        self.positions[symbol] = Position(symbol, new, entry, self._clock())

    def find_order(self, params: dict[str, str]) -> Order:
        """The regular order named by ``orderId`` or ``origClientOrderId`` (-2013 if none)."""
        spec = self.spec(params.get("symbol"))
        order: Order | None
        if params.get("orderId"):
            try:
                order = self.orders_by_id.get(int(params["orderId"]))
            except ValueError:
                raise BinanceError(-1100, "Illegal characters found in parameter 'orderId'; "
                                          "legal range is '^[0-9]{1,20}$'.") from None
        elif params.get("origClientOrderId"):
            # An id may name several orders (an earlier one filled, canceled or expired): the
            # latest is answered. Binance does not document which; the latest is the one an
            # id can still act on.
            held_by = self.orders_by_client_id.get(params["origClientOrderId"])
            order = held_by[-1] if held_by else None
        else:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, "
                                      "but both were empty/null!")
        if order is None or order.symbol != spec.symbol:
            raise BinanceError(-2013)
        return order

    def cancel_order(self, params: dict[str, str]) -> Order:
        """DELETE /fapi/v1/order: only a resting order can be canceled (-2011 otherwise)."""
        try:
            order = self.find_order(params)
        except BinanceError as error:
            if error.code == -2013:
                raise BinanceError(-2011) from None
            raise
        if order.status not in OPEN_ORDER_STATUSES:
            raise BinanceError(-2011)
        order.status = "CANCELED"
        order.update_time_ms = self._clock()
        return order

    def open_orders(self, symbol: str | None) -> list[Order]:
        """Resting regular orders (a MARKET order never rests, so normally none)."""
        if symbol is not None:
            self.spec(symbol)
        return [o for o in self.orders
                if o.status in OPEN_ORDER_STATUSES and (symbol is None or o.symbol == symbol)]

    # -- algo (conditional) orders ----------------------------------------------------

    @staticmethod
    def _crossed(algo_side: str, order_type: str, trigger: Decimal, mark: Decimal) -> bool:
        # A stop protects against the price moving away: a SELL stop fires on the way down.
        falls = (algo_side == "SELL") == (order_type == "STOP_MARKET")
        return mark <= trigger if falls else mark >= trigger

    def place_algo_order(self, params: dict[str, str]) -> AlgoOrder:
        """POST /fapi/v1/algoOrder: a CONDITIONAL STOP_MARKET / TAKE_PROFIT_MARKET order."""
        algo_type = _param(params, "algoType")
        if algo_type != "CONDITIONAL":
            raise BinanceError(-1100, "Illegal characters found in parameter 'algoType'; "
                                      "legal range is 'CONDITIONAL'.")
        spec = self.spec(params.get("symbol"))
        side = self._side(params)
        order_type = _param(params, "type")
        if order_type not in ALGO_ORDER_TYPES:
            raise BinanceError(-1116)  # limit stops and trailing stops are not emulated
        self._check_position_side(params)
        close_position = _bool_param(params, "closePosition")
        reduce_only = _bool_param(params, "reduceOnly")
        if close_position and (reduce_only or params.get("quantity")):
            raise BinanceError(-1106, "Parameter 'reduceOnly' sent when not required." if reduce_only
                               else "Parameter 'quantity' sent when not required.")
        quantity = Decimal(0)
        if not close_position:
            quantity = _decimal_param(params, "quantity")
            self._check_quantity(spec, quantity, spec.max_qty)
        trigger = _decimal_param(params, "triggerPrice")
        self._check_price(spec, trigger)
        working_type = params.get("workingType", "CONTRACT_PRICE")
        client_id = _client_id_param(params, "clientAlgoId") or self._new_client_id()
        # An algo order is open while it waits for its trigger (NEW).
        self._check_client_id_free(self.algos_by_client_id.get(client_id), OPEN_ALGO_STATUSES)
        if sum(1 for a in self.algos if a.symbol == spec.symbol and a.status in OPEN_ALGO_STATUSES) \
                >= MAX_OPEN_ALGO_ORDERS:
            raise BinanceError(-4045)
        mark = self.marks[spec.symbol]
        if self._crossed(side, order_type, trigger, mark):
            raise BinanceError(-2021)
        if (reduce_only or close_position) and self._reducible(spec.symbol, side) == 0:
            raise BinanceError(-2022)
        if not (reduce_only or close_position) and quantity * trigger < spec.min_notional:
            raise BinanceError(-4164, notional=_fmt_free(spec.min_notional))
        now = self._clock()
        algo = AlgoOrder(algo_id=next(self._algo_ids), client_algo_id=client_id, symbol=spec.symbol, side=side,
                         order_type=order_type, quantity=quantity, trigger_price=trigger, reduce_only=reduce_only,
                         close_position=close_position, working_type=working_type,
                         time_in_force=params.get("timeInForce", "GTC"), create_time_ms=now, update_time_ms=now)
        self.algos.append(algo)
        self.algos_by_id[algo.algo_id] = algo
        self.algos_by_client_id.setdefault(client_id, []).append(algo)
        return algo

    def find_algo(self, params: dict[str, str]) -> AlgoOrder:
        """The algo order named by ``algoId`` or ``clientAlgoId`` (-2013 if none)."""
        algo: AlgoOrder | None
        if params.get("algoId"):
            try:
                algo = self.algos_by_id.get(int(params["algoId"]))
            except ValueError:
                raise BinanceError(-1100, "Illegal characters found in parameter 'algoId'; "
                                          "legal range is '^[0-9]{1,20}$'.") from None
        elif params.get("clientAlgoId"):
            held_by = self.algos_by_client_id.get(params["clientAlgoId"])
            algo = held_by[-1] if held_by else None  # the latest, as for regular orders
        else:
            raise BinanceError(-1102, "Param 'clientAlgoId' or 'algoId' must be sent, but both were empty/null!")
        if algo is None or (params.get("symbol") and params["symbol"] != algo.symbol):
            raise BinanceError(-2013)
        return algo

    def cancel_algo(self, params: dict[str, str]) -> AlgoOrder:
        """DELETE /fapi/v1/algoOrder: only a waiting (NEW) algo order can be canceled."""
        try:
            algo = self.find_algo(params)
        except BinanceError as error:
            if error.code == -2013:
                raise BinanceError(-2011) from None
            raise
        if algo.status not in OPEN_ALGO_STATUSES:
            raise BinanceError(-2011)
        algo.status = "CANCELED"
        algo.update_time_ms = self._clock()
        return algo

    def open_algos(self, symbol: str | None) -> list[AlgoOrder]:
        """Algo orders still waiting for their trigger."""
        if symbol is not None:
            self.spec(symbol)
        return [a for a in self.algos if a.status in OPEN_ALGO_STATUSES and (symbol is None or a.symbol == symbol)]

    # -- mark price and positions by hand ---------------------------------------------

    def set_mark_price(self, symbol: str, price: Decimal) -> list[AlgoOrder]:
        """Moves the mark price and triggers, in placement order, every algo order it crosses."""
        spec = self.spec(symbol)
        if price <= 0 or price % spec.tick_size != 0:
            raise ValueError(f"mark price of {symbol} must be a positive multiple of the tick size "
                             f"{spec.price(spec.tick_size)}, got {price}")
        self.marks[symbol] = price
        for order in self.open_orders(symbol):
            self._fill(order, price, order.quantity)  # a partly filled market order fills the rest
        triggered = []
        for algo in self.open_algos(symbol):
            if self._crossed(algo.side, algo.order_type, algo.trigger_price, price):
                self._trigger(algo, price)
                triggered.append(algo)
        return triggered

    def _trigger(self, algo: AlgoOrder, price: Decimal) -> None:
        now = self._clock()
        algo.trigger_time_ms = now
        algo.update_time_ms = now
        reducible = self._reducible(algo.symbol, algo.side)
        if (algo.reduce_only or algo.close_position) and reducible == 0:
            algo.status = "EXPIRED"  # nothing left to protect: the triggered order cannot reduce
            return
        quantity = reducible if algo.close_position else algo.quantity
        # The placed order carries the stop's id, unless a regular order holds that id already
        # (separate namespaces): never shadow an existing order.
        taken = algo.client_algo_id in self.orders_by_client_id
        client_id = self._new_client_id() if taken else algo.client_algo_id
        order = Order(order_id=next(self._ids), client_order_id=client_id, symbol=algo.symbol,
                      side=algo.side, type="MARKET", orig_type=algo.order_type, quantity=quantity,
                      reduce_only=algo.reduce_only or algo.close_position, time_ms=now,
                      stop_price=algo.trigger_price, update_time_ms=now, source="trigger")
        self._register(order)
        self._fill(order, price, order.quantity)
        algo.status = "FINISHED"
        algo.actual_order_id = order.order_id
        algo.actual_price = price

    def set_position(self, symbol: str, side: str, quantity: Decimal, entry_price: Decimal | None) -> Position:
        """Sets a position as if traded by hand elsewhere (no order is recorded)."""
        spec = self.spec(symbol)
        if quantity < 0:
            raise ValueError("quantity must be >= 0 (the side gives the direction)")
        if quantity % spec.step_size != 0:
            raise ValueError(f"quantity must be a multiple of the step size {spec.qty(spec.step_size)}")
        direction = {"BUY": 1, "LONG": 1, "SELL": -1, "SHORT": -1}.get(side.upper())
        if direction is None:
            raise ValueError(f"side must be BUY, SELL, LONG or SHORT, got {side!r}")
        entry = entry_price if entry_price is not None else self.marks[symbol]
        if entry <= 0:
            raise ValueError("entry_price must be > 0")
        amount = quantity * direction
        self.positions[symbol] = Position(symbol, amount, entry if amount else Decimal(0), self._clock())
        return self.positions[symbol]


# --------------------------------------------------------------------------------------
# Wire shapes
# --------------------------------------------------------------------------------------


def render_order(order: Order, spec: SymbolSpec, *, for_create: bool = False, ack_only: bool = False) -> dict:
    """A regular order as ``/fapi/v1/order`` answers it (``ack_only``: newOrderRespType=ACK)."""
    filled = not ack_only
    body = {
        "orderId": order.order_id,
        "symbol": order.symbol,
        "status": order.status if filled else "NEW",
        "clientOrderId": order.client_order_id,
        "price": spec.price(Decimal(0)),
        "avgPrice": spec.price(order.avg_price if filled else Decimal(0)),
        "origQty": spec.qty(order.quantity),
        "executedQty": spec.qty(order.executed_qty if filled else Decimal(0)),
        "cumQuote": _fmt_free(order.cum_quote if filled else Decimal(0), max_places=8),
        "timeInForce": "GTC",
        "type": order.type,
        "reduceOnly": order.reduce_only,
        "closePosition": False,
        "side": order.side,
        "positionSide": "BOTH",
        "stopPrice": spec.price(order.stop_price),
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": order.orig_type,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0,
        "updateTime": order.update_time_ms if filled else order.time_ms,
    }
    if for_create:
        body["cumQty"] = body["executedQty"]
    else:
        body["time"] = order.time_ms
    return body


def render_algo(algo: AlgoOrder, spec: SymbolSpec) -> dict:
    """An algo order as ``/fapi/v1/algoOrder`` answers it."""
    return {
        "algoId": algo.algo_id,
        "clientAlgoId": algo.client_algo_id,
        "algoType": "CONDITIONAL",
        "orderType": algo.order_type,
        "symbol": algo.symbol,
        "side": algo.side,
        "positionSide": "BOTH",
        "timeInForce": algo.time_in_force,
        "quantity": spec.qty(algo.quantity),
        "algoStatus": algo.status,
        "actualOrderId": str(algo.actual_order_id) if algo.actual_order_id is not None else "",
        "actualPrice": spec.price(algo.actual_price),
        "triggerPrice": spec.price(algo.trigger_price),
        "price": spec.price(Decimal(0)),
        "icebergQuantity": None,
        "tpTriggerPrice": spec.price(Decimal(0)),
        "tpPrice": spec.price(Decimal(0)),
        "slTriggerPrice": spec.price(Decimal(0)),
        "slPrice": spec.price(Decimal(0)),
        "tpOrderType": "",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "workingType": algo.working_type,
        "priceMatch": "NONE",
        "closePosition": algo.close_position,
        "priceProtect": False,
        "reduceOnly": algo.reduce_only,
        "createTime": algo.create_time_ms,
        "updateTime": algo.update_time_ms,
        "triggerTime": algo.trigger_time_ms,
        "goodTillDate": 0,
    }


def _position_numbers(position: Position, mark: Decimal) -> dict[str, Decimal]:
    notional = position.amount * mark
    return {
        "notional": notional,
        "pnl": position.amount * (mark - position.entry_price) if position.amount else Decimal(0),
        "initial_margin": abs(notional) / DEFAULT_LEVERAGE,
        "maint_margin": abs(notional) * _maint_margin_ratio(abs(notional)),
    }


def render_position_v3(position: Position, spec: SymbolSpec, mark: Decimal) -> dict:
    """A row of ``GET /fapi/v3/positionRisk``."""
    numbers = _position_numbers(position, mark)
    return {
        "symbol": position.symbol,
        "positionSide": "BOTH",
        "positionAmt": spec.qty(position.amount),
        "entryPrice": _fmt_free(position.entry_price, min_places=1),
        "breakEvenPrice": _fmt_free(position.entry_price, min_places=1),
        "markPrice": _fmt(mark, 8),
        "unRealizedProfit": _fmt(numbers["pnl"], 8),
        "liquidationPrice": "0",
        "isolatedMargin": "0",
        "notional": _fmt(numbers["notional"], 8),
        "marginAsset": spec.quote_asset,
        "isolatedWallet": "0",
        "initialMargin": _fmt(numbers["initial_margin"], 8),
        "maintMargin": _fmt(numbers["maint_margin"], 8),
        "positionInitialMargin": _fmt(numbers["initial_margin"], 8),
        "openOrderInitialMargin": "0",
        "adl": 0,
        "bidNotional": "0",
        "askNotional": "0",
        "updateTime": position.update_time_ms,
    }


def render_position_v2(position: Position, spec: SymbolSpec, mark: Decimal) -> dict:
    """A row of ``GET /fapi/v2/positionRisk`` (ccxt's ``useV2``)."""
    numbers = _position_numbers(position, mark)
    return {
        "symbol": position.symbol,
        "positionAmt": spec.qty(position.amount),
        "entryPrice": _fmt_free(position.entry_price, min_places=1),
        "breakEvenPrice": _fmt_free(position.entry_price, min_places=1),
        "markPrice": _fmt(mark, 8),
        "unRealizedProfit": _fmt(numbers["pnl"], 8),
        "liquidationPrice": "0",
        "leverage": str(DEFAULT_LEVERAGE),
        "maxNotionalValue": str(_BRACKETS[0][1]),
        "marginType": "cross",
        "isolatedMargin": "0.00000000",
        "isAutoAddMargin": "false",
        "positionSide": "BOTH",
        "notional": _fmt(numbers["notional"], 8),
        "isolatedWallet": "0",
        "updateTime": position.update_time_ms,
    }


def _control_order(order: Order, spec: SymbolSpec) -> dict:
    return {
        "kind": "regular", "client_order_id": order.client_order_id, "exchange_order_id": str(order.order_id),
        "symbol": order.symbol, "side": order.side, "type": order.orig_type, "quantity": spec.qty(order.quantity),
        "stop_price": spec.price(order.stop_price) if order.stop_price else None,
        "reduce_only": order.reduce_only, "close_position": False, "status": order.status,
        "executed_qty": spec.qty(order.executed_qty), "avg_price": spec.price(order.avg_price),
        "source": order.source, "time_ms": order.time_ms, "update_time_ms": order.update_time_ms,
    }


def _control_algo(algo: AlgoOrder, spec: SymbolSpec) -> dict:
    return {
        "kind": "algo", "client_order_id": algo.client_algo_id, "exchange_order_id": str(algo.algo_id),
        "symbol": algo.symbol, "side": algo.side, "type": algo.order_type, "quantity": spec.qty(algo.quantity),
        "stop_price": spec.price(algo.trigger_price), "reduce_only": algo.reduce_only,
        "close_position": algo.close_position, "status": algo.status,
        "executed_qty": None, "avg_price": spec.price(algo.actual_price) if algo.actual_order_id else None,
        "actual_order_id": str(algo.actual_order_id) if algo.actual_order_id is not None else None,
        "source": "api", "time_ms": algo.create_time_ms, "update_time_ms": algo.update_time_ms,
    }


def _control_position(position: Position, spec: SymbolSpec) -> dict:
    return {
        "symbol": position.symbol,
        "side": "BUY" if position.amount > 0 else "SELL",
        "quantity": spec.qty(abs(position.amount)),
        "position_amt": spec.qty(position.amount),
        "entry_price": _fmt_free(position.entry_price, min_places=spec.price_precision),
        "update_time_ms": position.update_time_ms,
    }


# --------------------------------------------------------------------------------------
# Faults, latency, rate limits
# --------------------------------------------------------------------------------------

FAULT_KINDS = ("http_error", "rate_limit", "hang", "accept_then_timeout", "hold_answer", "reject", "partial_fill")
ORDER_PLACEMENT = (("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder"))
MARKET_ORDER_PLACEMENT = (("POST", "/fapi/v1/order"),)


@dataclass
class FaultRule:
    """A fault applied to the next ``remaining`` matching requests (None: until cleared)."""

    id: int
    kind: str
    remaining: int | None = 1
    method: str | None = None
    path: str | None = None
    status: int | None = None
    code: int | None = None
    msg: str | None = None
    seconds: float | None = None
    retry_after_s: float = 1.0
    quantity: Decimal | None = None
    remainder: str = PARTIAL_REMAINDER_EXPIRES
    after_processing: bool = False

    def matches(self, method: str, path: str) -> bool:
        """True when the rule applies to this request."""
        if self.method is not None and self.method != method:
            return False
        if self.kind == "partial_fill":  # only a market order can fill in part
            return (method, path) in MARKET_ORDER_PLACEMENT
        if self.path is not None:
            return self.path == path
        if self.kind == "reject":
            return (method, path) in ORDER_PLACEMENT
        return True

    def as_dict(self) -> dict[str, Any]:
        """The rule as the control API shows it."""
        return {"id": self.id, "kind": self.kind, "count": self.remaining, "method": self.method, "path": self.path,
                "status": self.status, "code": self.code, "msg": self.msg, "seconds": self.seconds,
                "retry_after_s": self.retry_after_s,
                "quantity": str(self.quantity) if self.quantity is not None else None,
                "remainder": self.remainder, "after_processing": self.after_processing}


@dataclass(frozen=True)
class LatencyRule:
    """Matching requests wait ``seconds`` before they are processed."""

    seconds: float
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """True when the rule applies to this request."""
        return (self.method is None or self.method == method) and (self.path is None or self.path == path)


@dataclass(frozen=True)
class RateLimitConfig:
    """Binance USD-M's published limits (exchangeInfo ``rateLimits``) and how they are enforced."""

    request_weight_per_minute: int = 2400
    orders_per_10s: int = 300
    orders_per_minute: int = 1200
    enforce: bool = True
    ban_seconds: float = 0.0  # > 0: ignoring a 429 gets the client banned (HTTP 418) this long

    def exchange_info(self) -> list[dict[str, Any]]:
        """The ``rateLimits`` entry of exchangeInfo."""
        return [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": self.request_weight_per_minute},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": self.orders_per_minute},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": self.orders_per_10s},
        ]


class _FixedWindow:
    """A counter that restarts at every multiple of ``interval_s`` of the wall clock."""

    def __init__(self, interval_s: int) -> None:
        self.interval_s = interval_s
        self.window = -1
        self.used = 0

    def current(self, now: float) -> int:
        window = int(now // self.interval_s)
        if window != self.window:
            self.window, self.used = window, 0
        return self.used

    def seconds_left(self, now: float) -> float:
        return (int(now // self.interval_s) + 1) * self.interval_s - now


@dataclass(frozen=True)
class _Route:
    handler: str
    signed: bool
    weight: int
    weight_no_symbol: int | None = None
    places_order: bool = False


ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "/fapi/v1/ping"): _Route("_ep_ping", False, 1),
    ("GET", "/fapi/v1/time"): _Route("_ep_time", False, 1),
    ("GET", "/fapi/v1/exchangeInfo"): _Route("_ep_exchange_info", False, 1),
    ("GET", "/fapi/v1/premiumIndex"): _Route("_ep_premium_index", False, 1, 10),
    ("GET", "/fapi/v1/leverageBracket"): _Route("_ep_leverage_bracket", True, 1),
    ("GET", "/fapi/v3/positionRisk"): _Route("_ep_position_risk_v3", True, 5),
    ("GET", "/fapi/v2/positionRisk"): _Route("_ep_position_risk_v2", True, 5),
    ("POST", "/fapi/v1/order"): _Route("_ep_new_order", True, 0, places_order=True),
    ("GET", "/fapi/v1/order"): _Route("_ep_query_order", True, 1),
    ("DELETE", "/fapi/v1/order"): _Route("_ep_cancel_order", True, 1),
    ("GET", "/fapi/v1/openOrders"): _Route("_ep_open_orders", True, 1, 40),
    ("POST", "/fapi/v1/algoOrder"): _Route("_ep_new_algo", True, 0, places_order=True),
    ("GET", "/fapi/v1/algoOrder"): _Route("_ep_query_algo", True, 1),
    ("DELETE", "/fapi/v1/algoOrder"): _Route("_ep_cancel_algo", True, 1),
    ("GET", "/fapi/v1/openAlgoOrders"): _Route("_ep_open_algos", True, 1, 40),
}


class _Drop(Exception):
    """The connection is closed without an answer (after ``delay_s``)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"drop after {delay_s}s")
        self.delay_s = delay_s


def _strip_signature(raw: str) -> tuple[str, str | None]:
    """``raw`` (a query string or form body) without its ``signature=`` part, and that value."""
    if not raw:
        return "", None
    kept, signature = [], None
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature="):]
        else:
            kept.append(part)
    return "&".join(kept), signature


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Compact separators like Binance; no Decimal ever reaches here (money is already text).
    return web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                        content_type="application/json", headers=headers)


def _bounded_seconds(value: Any, name: str, default: float) -> float:
    seconds = default if value is None else float(value)
    if not 0 <= seconds <= MAX_FAULT_SECONDS:
        raise ValueError(f"{name} must be between 0 and {MAX_FAULT_SECONDS}, got {seconds}")
    return seconds


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class BinanceUsdmEmulator:
    """The emulator as an aiohttp server, started in-process or by ``python -m emulator``.

    ``await start()`` binds ``host:port`` (port 0: a free one) and returns the base URL to
    give ``create_binanceusdm``; ``await stop()`` releases hung requests and closes it. The
    ``set_*``/``add_*`` methods and ``orders()``/``positions()``/``requests()`` do what the
    control API does, for tests running in the same event loop.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, symbols: Iterable[SymbolSpec] | None = None,
                 api_key: str = DEFAULT_API_KEY, api_secret: str = DEFAULT_API_SECRET,
                 rate_limits: RateLimitConfig | None = None,
                 client_id_rule: str = CLIENT_ID_UNIQUE_AMONG_OPEN) -> None:
        self.host = host
        self.port = port
        self._api_key = api_key
        self._api_secret = api_secret.encode()
        self._default_limits = rate_limits or RateLimitConfig()
        self.book = ExchangeBook(symbols if symbols is not None else default_symbols(), self.server_time_ms,
                                 client_id_rule)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._fault_ids = itertools.count(1)
        self._request_seq = itertools.count(1)
        self._release = asyncio.Event()
        self._reset_runtime()

    def __repr__(self) -> str:  # never the secret
        return f"BinanceUsdmEmulator(base_url={self._base_url!r}, symbols={len(self.book.specs)})"

    def _reset_runtime(self) -> None:
        self.clock_offset_ms = 0
        self.rate_limits = self._default_limits
        self.faults: list[FaultRule] = []
        self.latency: list[LatencyRule] = []
        self.request_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        self.rejection_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        self._weight_window = _FixedWindow(60)
        self._orders_10s = _FixedWindow(10)
        self._orders_1m = _FixedWindow(60)
        self._banned_until = 0.0
        self._backoff_until: dict[str, float] = {}  # "weight"/"orders": end of the window a 429 named
        # Wake everything that waits (hangs, delayed drops, latency), then start afresh.
        self._release.set()
        self._release = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` once started."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not started")
        return self._base_url

    async def start(self) -> str:
        """Starts listening; returns the base URL (``http://127.0.0.1:<port>``)."""
        if self._runner is not None:
            return self.base_url
        self._release = asyncio.Event()
        app = web.Application()
        self._add_control_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._handle_exchange)
        # A short shutdown timeout: hung requests are released by stop() anyway.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        display_host = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{display_host}:{port}"
        logger.info("Binance USD-M emulator listening on %s (%d symbols)", self._base_url, len(self.book.specs))
        return self._base_url

    async def stop(self) -> None:
        """Drops hung requests and stops listening."""
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "BinanceUsdmEmulator":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- clock ------------------------------------------------------------------------

    def server_time_ms(self) -> int:
        """The exchange's clock: the wall clock plus the configured offset."""
        return int(time.time() * 1000) + self.clock_offset_ms

    # -- in-process control (the control API calls these) ------------------------------

    def reset(self) -> None:
        """Everything back to the state at start."""
        self.book.reset()
        self._reset_runtime()

    def set_mark_price(self, symbol: str, price: Decimal | str) -> list[str]:
        """Moves the mark price; returns the client ids of the stops it triggered."""
        triggered = self.book.set_mark_price(symbol, Decimal(str(price)))
        for algo in triggered:
            logger.info("stop %s triggered at %s: %s", algo.client_algo_id, price, algo.status)
        return [algo.client_algo_id for algo in triggered]

    def set_clock_offset(self, offset_ms: int) -> None:
        """Runs the server clock ``offset_ms`` away from the wall clock (timestamp checks, serverTime)."""
        self.clock_offset_ms = int(offset_ms)

    def mark_price(self, symbol: str) -> Decimal:
        """The symbol's mark price."""
        self.book.spec(symbol)
        return self.book.marks[symbol]

    def set_position(self, symbol: str, side: str, quantity: Decimal | str,
                     entry_price: Decimal | str | None = None) -> dict[str, Any]:
        """Opens, changes or (quantity 0) closes a position by hand."""
        position = self.book.set_position(symbol, side, Decimal(str(quantity)),
                                          None if entry_price is None else Decimal(str(entry_price)))
        return _control_position(position, self.book.specs[symbol])

    def positions(self) -> list[dict[str, Any]]:
        """Non-flat positions."""
        return [_control_position(p, self.book.specs[p.symbol]) for p in self.book.positions.values() if p.amount]

    def orders(self, symbol: str | None = None, kind: str | None = None,
               client_order_id: str | None = None) -> list[dict[str, Any]]:
        """Every order the exchange accepted (regular and algo), oldest first."""
        rows = [_control_order(o, self.book.specs[o.symbol]) for o in self.book.orders]
        rows += [_control_algo(a, self.book.specs[a.symbol]) for a in self.book.algos]
        rows.sort(key=lambda row: (row["time_ms"], row["kind"] == "algo"))
        return [row for row in rows
                if (symbol is None or row["symbol"] == symbol) and (kind is None or row["kind"] == kind)
                and (client_order_id is None or row["client_order_id"] == client_order_id)]

    def rejections(self) -> list[dict[str, Any]]:
        """Order placements the exchange refused."""
        return list(self.rejection_log)

    def requests(self, since: int = 0, path: str | None = None) -> list[dict[str, Any]]:
        """The exchange request log (``seq`` > ``since``), oldest first."""
        return [dict(entry) for entry in self.request_log
                if entry["seq"] > since and (path is None or entry["path"] == path)]

    def add_fault(self, kind: str, *, count: int | None = 1, method: str | None = None, path: str | None = None,
                  status: int | None = None, code: int | None = None, msg: str | None = None,
                  seconds: float | None = None, retry_after_s: float | None = None,
                  quantity: Decimal | str | None = None, remainder: str | None = None,
                  after_processing: bool = False) -> dict[str, Any]:
        """Adds a fault rule (see the module docstring); returns it with its id."""
        if kind == "partial_fill":
            if quantity is None or Decimal(str(quantity)) <= 0:
                raise ValueError("a partial_fill fault needs the quantity that fills, > 0")
            if remainder not in (None, *PARTIAL_REMAINDERS):
                raise ValueError(f"remainder must be one of {', '.join(PARTIAL_REMAINDERS)}, got {remainder!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"count must be a positive integer or null, got {count!r}")
        if kind == "reject" and code is None:
            raise ValueError("a reject fault needs the Binance error code to answer, e.g. -2019")
        if kind == "rate_limit" and status not in (None, 429, 418):
            raise ValueError("a rate_limit fault answers 429 or 418")
        if status is not None and not 400 <= int(status) <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status}")
        rule = FaultRule(
            id=next(self._fault_ids), kind=kind, remaining=count, method=method.upper() if method else None,
            path=path, status=int(status) if status is not None else None,
            code=int(code) if code is not None else None, msg=msg,
            seconds=_bounded_seconds(seconds, "seconds", 300.0 if kind == "hang" else 0.0),
            retry_after_s=_bounded_seconds(retry_after_s, "retry_after_s", 1.0),
            quantity=Decimal(str(quantity)) if quantity is not None else None,
            remainder=remainder or PARTIAL_REMAINDER_EXPIRES,
            after_processing=bool(after_processing))
        self.faults.append(rule)
        return rule.as_dict()

    def clear_faults(self) -> None:
        """Removes every pending fault rule."""
        self.faults.clear()

    def set_latency(self, seconds: float, method: str | None = None, path: str | None = None) -> list[dict]:
        """Matching requests wait ``seconds`` before processing (0 removes the rule)."""
        seconds = _bounded_seconds(seconds, "seconds", 0.0)
        method = method.upper() if method else None
        self.latency = [rule for rule in self.latency if (rule.method, rule.path) != (method, path)]
        if seconds > 0:
            self.latency.append(LatencyRule(seconds, method, path))
        return self._latency_dicts()

    def _latency_dicts(self) -> list[dict[str, Any]]:
        return [{"seconds": r.seconds, "method": r.method, "path": r.path} for r in self.latency]

    def set_rate_limits(self, **changes: Any) -> dict[str, Any]:
        """Changes the published and enforced limits; returns the configuration."""
        allowed = {f.name for f in RateLimitConfig.__dataclass_fields__.values()}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown rate limit settings: {', '.join(sorted(unknown))}")
        config = replace(self.rate_limits, **changes)
        for name in ("request_weight_per_minute", "orders_per_10s", "orders_per_minute"):
            if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if not isinstance(config.enforce, bool):
            raise ValueError("enforce must be true or false")
        _bounded_seconds(config.ban_seconds, "ban_seconds", 0.0)
        self.rate_limits = config
        return asdict(config)

    # -- control API --------------------------------------------------------------------

    def _add_control_routes(self, app: web.Application) -> None:
        p = CONTROL_PREFIX
        app.router.add_get(f"{p}/health", self._ctl_health)
        app.router.add_get(f"{p}/mark_price", self._ctl_get_marks)
        app.router.add_post(f"{p}/mark_price", self._ctl_set_mark)
        app.router.add_get(f"{p}/positions", self._ctl_get_positions)
        app.router.add_post(f"{p}/positions", self._ctl_set_position)
        app.router.add_get(f"{p}/orders", self._ctl_orders)
        app.router.add_get(f"{p}/rejections", self._ctl_rejections)
        app.router.add_get(f"{p}/requests", self._ctl_requests)
        app.router.add_get(f"{p}/faults", self._ctl_get_faults)
        app.router.add_post(f"{p}/faults", self._ctl_add_fault)
        app.router.add_delete(f"{p}/faults", self._ctl_clear_faults)
        app.router.add_get(f"{p}/latency", self._ctl_get_latency)
        app.router.add_post(f"{p}/latency", self._ctl_set_latency)
        app.router.add_delete(f"{p}/latency", self._ctl_clear_latency)
        app.router.add_get(f"{p}/rate_limits", self._ctl_get_limits)
        app.router.add_post(f"{p}/rate_limits", self._ctl_set_limits)
        app.router.add_post(f"{p}/clock", self._ctl_clock)
        app.router.add_post(f"{p}/reset", self._ctl_reset)

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"the body must be a JSON object: {error}") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body

    async def _ctl(self, request: web.Request, action: Callable[[dict[str, Any]], Any]) -> web.Response:
        try:
            body = await self._json_body(request) if request.method == "POST" else {}
            result = action(body)
        except (ValueError, KeyError, TypeError, InvalidOperation, BinanceError) as error:
            message = error.msg if isinstance(error, BinanceError) else str(error)
            if isinstance(error, KeyError):
                message = f"missing field {error}"
            return _json_response({"error": message}, status=400)
        return _json_response(result)

    async def _ctl_health(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: {"ok": True, "base_url": self._base_url})

    async def _ctl_get_marks(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: {s: self.book.specs[s].price(p) for s, p in self.book.marks.items()})

    async def _ctl_set_mark(self, request: web.Request) -> web.Response:
        def action(body: dict[str, Any]) -> dict[str, Any]:
            symbol = body["symbol"]
            triggered = self.set_mark_price(symbol, str(body["price"]))
            return {"symbol": symbol, "price": self.book.specs[symbol].price(self.book.marks[symbol]),
                    "triggered": triggered}
        return await self._ctl(request, action)

    async def _ctl_get_positions(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: self.positions())

    async def _ctl_set_position(self, request: web.Request) -> web.Response:
        def action(body: dict[str, Any]) -> dict[str, Any]:
            entry = body.get("entry_price")
            return self.set_position(body["symbol"], str(body.get("side", "BUY")), str(body["quantity"]),
                                     None if entry is None else str(entry))
        return await self._ctl(request, action)

    async def _ctl_orders(self, request: web.Request) -> web.Response:
        query = request.query
        return await self._ctl(request, lambda _: self.orders(query.get("symbol"), query.get("kind"),
                                                             query.get("client_order_id")))

    async def _ctl_rejections(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: self.rejections())

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        query = request.query
        return await self._ctl(request, lambda _: self.requests(int(query.get("since", "0")), query.get("path")))

    async def _ctl_get_faults(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: [rule.as_dict() for rule in self.faults])

    async def _ctl_add_fault(self, request: web.Request) -> web.Response:
        def action(body: dict[str, Any]) -> dict[str, Any]:
            allowed = {"kind", "count", "method", "path", "status", "code", "msg", "seconds", "retry_after_s",
                       "quantity", "remainder", "after_processing"}
            unknown = set(body) - allowed
            if unknown:
                raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
            fields = dict(body)
            return self.add_fault(fields.pop("kind"), **fields)
        return await self._ctl(request, action)

    async def _ctl_clear_faults(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: (self.clear_faults(), [])[1])

    async def _ctl_get_latency(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: self._latency_dicts())

    async def _ctl_set_latency(self, request: web.Request) -> web.Response:
        def action(body: dict[str, Any]) -> list[dict[str, Any]]:
            self.set_latency(body["seconds"], body.get("method"), body.get("path"))
            return self._latency_dicts()
        return await self._ctl(request, action)

    async def _ctl_clear_latency(self, request: web.Request) -> web.Response:
        def action(_: dict[str, Any]) -> list[dict[str, Any]]:
            self.latency = []
            return []
        return await self._ctl(request, action)

    async def _ctl_get_limits(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda _: asdict(self.rate_limits))

    async def _ctl_set_limits(self, request: web.Request) -> web.Response:
        return await self._ctl(request, lambda body: self.set_rate_limits(**body))

    async def _ctl_clock(self, request: web.Request) -> web.Response:
        def action(body: dict[str, Any]) -> dict[str, Any]:
            self.set_clock_offset(body["offset_ms"])
            return {"offset_ms": self.clock_offset_ms, "server_time_ms": self.server_time_ms()}
        return await self._ctl(request, action)

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        def action(_: dict[str, Any]) -> dict[str, Any]:
            self.reset()
            return {"ok": True}
        return await self._ctl(request, action)

    # -- exchange requests --------------------------------------------------------------

    async def _wait(self, seconds: float) -> None:
        """Waits ``seconds``, or less when reset/stop releases every waiting request."""
        if seconds <= 0:
            return
        release = self._release
        try:
            await asyncio.wait_for(release.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    def _take_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in self.faults:
            if rule.matches(method, path):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self.faults.remove(rule)
                return rule
        return None

    def _rate_headers(self, now: float, order: bool) -> dict[str, str]:
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight_window.current(now))}
        if order:
            headers["X-MBX-ORDER-COUNT-10S"] = str(self._orders_10s.current(now))
            headers["X-MBX-ORDER-COUNT-1M"] = str(self._orders_1m.current(now))
        return headers

    def _limit_exceeded(self, kind: str, window: _FixedWindow, now: float, code: int, **fmt: Any) -> BinanceError:
        """The 429 for an exceeded limit; the client must back off until the window ends."""
        seconds_left = window.seconds_left(now)
        self._backoff_until[kind] = now + seconds_left
        error = BinanceError(code, http_status=429, **fmt)
        error.headers["Retry-After"] = str(max(1, int(seconds_left + 0.999)))
        return error

    def _check_backoff(self, kind: str, now: float) -> None:
        """Bans a client that keeps sending while told to back off (only with ``ban_seconds``)."""
        config = self.rate_limits
        if config.enforce and config.ban_seconds > 0 and now < self._backoff_until.get(kind, 0.0):
            self._banned_until = now + config.ban_seconds
            raise self._ban_error(now)

    def _ban_error(self, now: float) -> BinanceError:
        until_ms = int(self._banned_until * 1000)
        error = BinanceError(-1003, f"Way too many requests; IP(127.0.0.1) banned until {until_ms}. "
                                    "Please use the websocket for live updates to avoid bans.", http_status=418)
        error.headers["Retry-After"] = str(max(1, int(self._banned_until - now + 0.999)))
        return error

    def _charge_weight(self, weight: int, now: float) -> None:
        config = self.rate_limits
        if config.enforce and now < self._banned_until:
            raise self._ban_error(now)
        # Past an IP weight 429 every request is a violation; past an order 429, every order.
        self._check_backoff("weight", now)
        used = self._weight_window.current(now) + weight
        self._weight_window.used = used
        if config.enforce and used > config.request_weight_per_minute:
            raise self._limit_exceeded("weight", self._weight_window, now, -1003,
                                       limit=config.request_weight_per_minute)

    def _charge_order(self, now: float) -> None:
        config = self.rate_limits
        self._check_backoff("orders", now)
        for window, limit, interval in ((self._orders_10s, config.orders_per_10s, "10 SECOND"),
                                        (self._orders_1m, config.orders_per_minute, "1 MINUTE")):
            used = window.current(now) + 1
            window.used = used
            if config.enforce and used > limit:
                raise self._limit_exceeded("orders", window, now, -1015, limit=limit, interval=interval)

    def _authenticate(self, request: web.Request, raw_query: str, raw_body: str, params: dict[str, str]) -> None:
        api_key = request.headers.get("X-MBX-APIKEY")
        if not api_key:
            raise BinanceError(-2014)
        if not hmac.compare_digest(api_key.encode(), self._api_key.encode()):
            raise BinanceError(-2015)
        query, query_signature = _strip_signature(raw_query)
        body, body_signature = _strip_signature(raw_body)
        signature = query_signature or body_signature
        if not signature:
            raise BinanceError(-1102, name="signature")
        if "timestamp" not in params:
            raise BinanceError(-1102, name="timestamp")
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
        except ValueError:
            raise BinanceError(-1102, name="timestamp") from None
        if recv_window > MAX_RECV_WINDOW_MS:
            raise BinanceError(-1131)
        # Binance signs the query string and the body concatenated as sent (no separator).
        expected = hmac.new(self._api_secret, (query + body).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(-1022)
        # Binance USD-M "Timing security": "if (timestamp < (serverTime + 1000) && (serverTime -
        # timestamp) <= recvWindow) { // process request } else { // reject request }". Checked
        # when the request is processed, after any configured latency: a request held in front
        # of the exchange past its recvWindow is refused (-1021) and never carried out.
        now = self.server_time_ms()
        if timestamp > now + MAX_AHEAD_MS or now - timestamp > recv_window:
            raise BinanceError(-1021)

    async def _handle_exchange(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        raw_query = request.raw_path.partition("?")[2]
        raw_body = (await request.read()).decode("utf-8", errors="replace")
        params: dict[str, str] = dict(parse_qsl(raw_query, keep_blank_values=True))
        params.update(parse_qsl(raw_body, keep_blank_values=True))
        route = ROUTES.get((method, path))
        weight = 1
        if route is not None:
            weight = route.weight_no_symbol if route.weight_no_symbol and not params.get("symbol") else route.weight
        entry: dict[str, Any] = {
            "seq": next(self._request_seq), "time_ms": int(time.time() * 1000), "method": method, "path": path,
            "signed": bool(route and route.signed), "params": {k: v for k, v in params.items() if k != "signature"},
            "weight": weight, "order": bool(route and route.places_order), "status": None, "code": None,
            "fault": None, "dropped": False,
        }
        self.request_log.append(entry)
        delay = max((rule.seconds for rule in self.latency if rule.matches(method, path)), default=0.0)
        await self._wait(delay)

        headers: dict[str, str] = {}
        fault: FaultRule | None = None
        try:
            now = time.time()
            self._charge_weight(weight, now)
            fault = self._take_fault(method, path)
            if fault is not None:
                entry["fault"] = fault.kind
                response = await self._early_fault(fault, entry)
                if response is not None:
                    return response
            if route is None:
                raise BinanceError(-5000, f"Path {path}, Method {method} is invalid", http_status=404)
            if route.signed:
                self._authenticate(request, raw_query, raw_body, params)
            if route.places_order:
                self._charge_order(now)
            if fault is not None and fault.kind == "reject":
                raise BinanceError(fault.code or -1000, fault.msg, http_status=fault.status)
            if fault is not None and fault.kind == "partial_fill":
                body = self._ep_new_order(params, PartialFill(fault.quantity or Decimal(0), fault.remainder))
            else:
                body = getattr(self, route.handler)(params)
            headers = self._rate_headers(now, route.places_order)
            if fault is not None and fault.kind == "accept_then_timeout":
                raise _Drop(fault.seconds or 0.0)
            if fault is not None and fault.kind == "http_error":  # after_processing: the work is done
                return self._http_error(fault, entry)
            if fault is not None and fault.kind == "hold_answer":
                # Binance: a timeout or 503 "means the API successfully sent the message but
                # not get a response within the timeout period ... the execution status is
                # UNKNOWN and could have been a success". The order exists; its answer is late.
                await self._wait(fault.seconds or 0.0)
            entry["status"] = 200
            return _json_response(body, headers=headers)
        except BinanceError as error:
            if route is not None and route.places_order:
                self._record_rejection(path, params, error)
            if fault is not None and fault.kind == "accept_then_timeout":
                return await self._drop(request, entry, fault.seconds or 0.0)
            entry["status"], entry["code"] = error.http_status, error.code
            headers = self._rate_headers(time.time(), bool(route and route.places_order)) | error.headers
            return _json_response(error.body(), status=error.http_status, headers=headers)
        except _Drop as drop:
            return await self._drop(request, entry, drop.delay_s)

    async def _early_fault(self, fault: FaultRule, entry: dict[str, Any]) -> web.StreamResponse | None:
        """Answers the faults that act before authentication; None for the others."""
        if fault.kind == "http_error" and not fault.after_processing:
            return self._http_error(fault, entry)
        if fault.kind == "rate_limit":
            status = fault.status or 429
            entry["status"], entry["code"] = status, -1003
            limit = self.rate_limits.request_weight_per_minute
            msg = fault.msg or (ERROR_MESSAGES[-1003].format(limit=limit) if status == 429 else
                                f"Way too many requests; IP(127.0.0.1) banned until "
                                f"{int((time.time() + fault.retry_after_s) * 1000)}. "
                                "Please use the websocket for live updates to avoid bans.")
            return _json_response({"code": -1003, "msg": msg}, status=status,
                                  headers={"Retry-After": str(max(1, int(fault.retry_after_s + 0.999)))})
        if fault.kind == "hang":
            raise _Drop(fault.seconds if fault.seconds is not None else 300.0)
        return None

    @staticmethod
    def _http_error(fault: FaultRule, entry: dict[str, Any]) -> web.Response:
        status = fault.status or 503
        entry["status"], entry["code"] = status, fault.code
        if fault.code is not None:
            error = BinanceError(fault.code, fault.msg, http_status=status)
            return _json_response(error.body(), status=status)
        # A gateway in front of Binance answers 5xx with plain text, not Binance's JSON.
        return web.Response(text=fault.msg or _reason(status), status=status)

    async def _drop(self, request: web.Request, entry: dict[str, Any], delay_s: float) -> web.StreamResponse:
        """Closes the connection without an answer after ``delay_s`` (or at reset/stop)."""
        transport = request.transport
        await self._wait(delay_s)
        entry["dropped"] = True
        if transport is not None:
            transport.close()
        # aiohttp finds the transport closed and writes nothing of this response.
        return web.Response(status=204)

    def _record_rejection(self, path: str, params: dict[str, str], error: BinanceError) -> None:
        self.rejection_log.append({
            "time_ms": int(time.time() * 1000), "path": path,
            "client_order_id": params.get("newClientOrderId") or params.get("clientAlgoId"),
            "symbol": params.get("symbol"), "side": params.get("side"), "type": params.get("type"),
            "code": error.code, "msg": error.msg,
        })

    # -- endpoint handlers (params in, JSON-ready body out) -----------------------------

    def _ep_ping(self, params: dict[str, str]) -> dict:
        return {}

    def _ep_time(self, params: dict[str, str]) -> dict:
        return {"serverTime": self.server_time_ms()}

    def _ep_exchange_info(self, params: dict[str, str]) -> dict:
        return {
            "timezone": "UTC",
            "serverTime": self.server_time_ms(),
            "futuresType": "U_MARGINED",
            "rateLimits": self.rate_limits.exchange_info(),
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [spec.exchange_info(PUBLISHED_ORDER_TYPES) for spec in self.book.specs.values()],
        }

    def _ep_premium_index(self, params: dict[str, str]) -> dict | list:
        def row(symbol: str) -> dict:
            mark = self.book.marks[symbol]
            return {"symbol": symbol, "markPrice": _fmt(mark, 8), "indexPrice": _fmt(mark, 8),
                    "estimatedSettlePrice": _fmt(mark, 8), "lastFundingRate": "0.00010000",
                    "interestRate": "0.00010000", "nextFundingTime": 0, "time": self.server_time_ms()}
        if params.get("symbol"):
            return row(self.book.spec(params["symbol"]).symbol)
        return [row(symbol) for symbol in self.book.specs]

    def _ep_leverage_bracket(self, params: dict[str, str]) -> list:
        symbols = [self.book.spec(params["symbol"]).symbol] if params.get("symbol") else list(self.book.specs)
        brackets = [{"bracket": index + 1, "initialLeverage": leverage, "notionalCap": cap, "notionalFloor": floor,
                     "maintMarginRatio": float(mmr), "cum": float(cum)}
                    for index, (floor, cap, leverage, mmr, cum) in enumerate(_BRACKETS)]
        return [{"symbol": symbol, "notionalCoef": 1.0, "brackets": brackets} for symbol in symbols]

    def _positions_for(self, params: dict[str, str], with_open_orders: bool) -> list[Position]:
        symbol = self.book.spec(params["symbol"]).symbol if params.get("symbol") else None
        chosen = {s for s, p in self.book.positions.items() if p.amount and (symbol is None or s == symbol)}
        if with_open_orders:
            # v3 also lists symbols that only have open orders (flat, entryPrice 0).
            chosen |= {a.symbol for a in self.book.open_algos(symbol)}
            chosen |= {o.symbol for o in self.book.open_orders(symbol)}
        return [self.book.position(s) for s in sorted(chosen)]

    def _ep_position_risk_v3(self, params: dict[str, str]) -> list:
        return [render_position_v3(p, self.book.specs[p.symbol], self.book.marks[p.symbol])
                for p in self._positions_for(params, with_open_orders=True)]

    def _ep_position_risk_v2(self, params: dict[str, str]) -> list:
        # v2 lists every symbol, flat ones included.
        symbols = [self.book.spec(params["symbol"]).symbol] if params.get("symbol") else list(self.book.specs)
        return [render_position_v2(self.book.position(s), self.book.specs[s], self.book.marks[s]) for s in symbols]

    def _ep_new_order(self, params: dict[str, str], partial: PartialFill | None = None) -> dict:
        order = self.book.place_order(params, partial)
        logger.info("order %s: %s %s %s %s filled at %s", order.client_order_id, order.side, order.type,
                    order.executed_qty, order.symbol, order.avg_price)
        ack_only = params.get("newOrderRespType", "ACK") != "RESULT"
        return render_order(order, self.book.specs[order.symbol], for_create=True, ack_only=ack_only)

    def _ep_query_order(self, params: dict[str, str]) -> dict:
        order = self.book.find_order(params)
        return render_order(order, self.book.specs[order.symbol])

    def _ep_cancel_order(self, params: dict[str, str]) -> dict:
        order = self.book.cancel_order(params)
        return render_order(order, self.book.specs[order.symbol])

    def _ep_open_orders(self, params: dict[str, str]) -> list:
        return [render_order(o, self.book.specs[o.symbol]) for o in self.book.open_orders(params.get("symbol") or None)]

    def _ep_new_algo(self, params: dict[str, str]) -> dict:
        algo = self.book.place_algo_order(params)
        logger.info("stop %s: %s %s %s %s at %s%s", algo.client_algo_id, algo.side, algo.order_type, algo.quantity,
                    algo.symbol, algo.trigger_price, " reduce-only" if algo.reduce_only else "")
        return render_algo(algo, self.book.specs[algo.symbol])

    def _ep_query_algo(self, params: dict[str, str]) -> dict:
        algo = self.book.find_algo(params)
        return render_algo(algo, self.book.specs[algo.symbol])

    def _ep_cancel_algo(self, params: dict[str, str]) -> dict:
        algo = self.book.cancel_algo(params)
        return {"algoId": algo.algo_id, "clientAlgoId": algo.client_algo_id, "code": "200", "msg": "success"}

    def _ep_open_algos(self, params: dict[str, str]) -> list:
        return [render_algo(a, self.book.specs[a.symbol]) for a in self.book.open_algos(params.get("symbol") or None)]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


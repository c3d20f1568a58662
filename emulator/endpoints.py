"""The Binance USD-M endpoints the emulator serves: the route table (signed or not, request
weight, order placement) and one handler an endpoint, Binance's parameters in, its JSON out.

``ExchangeEndpoints`` is a mixin of ``BinanceUsdmEmulator`` (``emulator.binance_usdm``), which
authenticates, rate-limits and faults a request before its handler runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from emulator.book import ExchangeBook
from emulator.rate_limits import RateLimitConfig
from emulator.records import PUBLISHED_ORDER_TYPES, PartialFill, Position
from emulator.render import render_algo, render_order, render_position_v2, render_position_v3
from emulator.symbols import LEVERAGE_BRACKETS, format_fixed

__all__ = ["ROUTES", "ExchangeEndpoints", "Route"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """An endpoint: its handler's name, whether it is signed, and what it costs."""

    handler: str
    signed: bool
    weight: int
    weight_no_symbol: int | None = None  # the weight when no symbol is sent, if different
    places_order: bool = False  # counts against the order rate limits

    def weight_for(self, params: dict[str, str]) -> int:
        """The request weight of a call with these parameters."""
        return self.weight_no_symbol if self.weight_no_symbol and not params.get("symbol") else self.weight


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/fapi/v1/ping"): Route("_ep_ping", False, 1),
    ("GET", "/fapi/v1/time"): Route("_ep_time", False, 1),
    ("GET", "/fapi/v1/exchangeInfo"): Route("_ep_exchange_info", False, 1),
    ("GET", "/fapi/v1/premiumIndex"): Route("_ep_premium_index", False, 1, 10),
    ("GET", "/fapi/v1/leverageBracket"): Route("_ep_leverage_bracket", True, 1),
    ("GET", "/fapi/v3/positionRisk"): Route("_ep_position_risk_v3", True, 5),
    ("GET", "/fapi/v2/positionRisk"): Route("_ep_position_risk_v2", True, 5),
    ("POST", "/fapi/v1/order"): Route("_ep_new_order", True, 0, places_order=True),
    ("GET", "/fapi/v1/order"): Route("_ep_query_order", True, 1),
    ("DELETE", "/fapi/v1/order"): Route("_ep_cancel_order", True, 1),
    ("GET", "/fapi/v1/openOrders"): Route("_ep_open_orders", True, 1, 40),
    ("POST", "/fapi/v1/algoOrder"): Route("_ep_new_algo", True, 0, places_order=True),
    ("GET", "/fapi/v1/algoOrder"): Route("_ep_query_algo", True, 1),
    ("DELETE", "/fapi/v1/algoOrder"): Route("_ep_cancel_algo", True, 1),
    ("GET", "/fapi/v1/openAlgoOrders"): Route("_ep_open_algos", True, 1, 40),
}


class ExchangeEndpoints:
    """One method an endpoint of ``ROUTES``: request parameters in, JSON-ready body out."""

    # Owned by BinanceUsdmEmulator.
    book: ExchangeBook
    rate_limits: RateLimitConfig
    server_time_ms: Callable[[], int]

    def _symbols_asked(self, params: dict[str, str]) -> list[str]:
        """The symbol sent (checked), or every symbol when none is."""
        return [self.book.spec(params["symbol"]).symbol] if params.get("symbol") else list(self.book.specs)

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
            return {"symbol": symbol, "markPrice": format_fixed(mark, 8), "indexPrice": format_fixed(mark, 8),
                    "estimatedSettlePrice": format_fixed(mark, 8), "lastFundingRate": "0.00010000",
                    "interestRate": "0.00010000", "nextFundingTime": 0, "time": self.server_time_ms()}
        if params.get("symbol"):
            return row(self.book.spec(params["symbol"]).symbol)
        return [row(symbol) for symbol in self.book.specs]

    def _ep_leverage_bracket(self, params: dict[str, str]) -> list:
        brackets = [{"bracket": index + 1, "initialLeverage": leverage, "notionalCap": cap, "notionalFloor": floor,
                     "maintMarginRatio": float(mmr), "cum": float(cum)}
                    for index, (floor, cap, leverage, mmr, cum) in enumerate(LEVERAGE_BRACKETS)]
        return [{"symbol": symbol, "notionalCoef": 1.0, "brackets": brackets} for symbol in self._symbols_asked(params)]

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
        return [render_position_v2(self.book.position(s), self.book.specs[s], self.book.marks[s])
                for s in self._symbols_asked(params)]

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

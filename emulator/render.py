"""Records as JSON-ready bodies: Binance's wire shapes (``render_*``) and the rows of the
``/_emulator/`` control API (``control_*``).

Money leaves as strings formatted to the symbol's tick and step, never as floats.
"""

from __future__ import annotations

from decimal import Decimal

from emulator.records import AlgoOrder, Order, Position
from emulator.symbols import (
    DEFAULT_LEVERAGE,
    LEVERAGE_BRACKETS,
    SymbolSpec,
    format_fixed,
    format_trimmed,
    maint_margin_ratio,
)

__all__ = ["control_algo", "control_order", "control_position", "render_algo", "render_order",
           "render_position_v2", "render_position_v3"]


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
        "cumQuote": format_trimmed(order.cum_quote if filled else Decimal(0), max_places=8),
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
        "maint_margin": abs(notional) * maint_margin_ratio(abs(notional)),
    }


def _position_prices(position: Position, spec: SymbolSpec, mark: Decimal, pnl: Decimal) -> dict[str, str]:
    """The fields v2 and v3 of positionRisk share, in the order both send them."""
    return {
        "positionAmt": spec.qty(position.amount),
        "entryPrice": format_trimmed(position.entry_price, min_places=1),
        "breakEvenPrice": format_trimmed(position.entry_price, min_places=1),
        "markPrice": format_fixed(mark, 8),
        "unRealizedProfit": format_fixed(pnl, 8),
        "liquidationPrice": "0",
    }


def render_position_v3(position: Position, spec: SymbolSpec, mark: Decimal) -> dict:
    """A row of ``GET /fapi/v3/positionRisk``."""
    numbers = _position_numbers(position, mark)
    return {
        "symbol": position.symbol,
        "positionSide": "BOTH",
        **_position_prices(position, spec, mark, numbers["pnl"]),
        "isolatedMargin": "0",
        "notional": format_fixed(numbers["notional"], 8),
        "marginAsset": spec.quote_asset,
        "isolatedWallet": "0",
        "initialMargin": format_fixed(numbers["initial_margin"], 8),
        "maintMargin": format_fixed(numbers["maint_margin"], 8),
        "positionInitialMargin": format_fixed(numbers["initial_margin"], 8),
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
        **_position_prices(position, spec, mark, numbers["pnl"]),
        "leverage": str(DEFAULT_LEVERAGE),
        "maxNotionalValue": str(LEVERAGE_BRACKETS[0][1]),
        "marginType": "cross",
        "isolatedMargin": "0.00000000",
        "isAutoAddMargin": "false",
        "positionSide": "BOTH",
        "notional": format_fixed(numbers["notional"], 8),
        "isolatedWallet": "0",
        "updateTime": position.update_time_ms,
    }


def control_order(order: Order, spec: SymbolSpec) -> dict:
    """A regular order as a row of ``GET /_emulator/orders``."""
    return {
        "kind": "regular", "client_order_id": order.client_order_id, "exchange_order_id": str(order.order_id),
        "symbol": order.symbol, "side": order.side, "type": order.orig_type, "quantity": spec.qty(order.quantity),
        "stop_price": spec.price(order.stop_price) if order.stop_price else None,
        "reduce_only": order.reduce_only, "close_position": False, "status": order.status,
        "executed_qty": spec.qty(order.executed_qty), "avg_price": spec.price(order.avg_price),
        "source": order.source, "time_ms": order.time_ms, "update_time_ms": order.update_time_ms,
    }


def control_algo(algo: AlgoOrder, spec: SymbolSpec) -> dict:
    """An algo order as a row of ``GET /_emulator/orders``."""
    return {
        "kind": "algo", "client_order_id": algo.client_algo_id, "exchange_order_id": str(algo.algo_id),
        "symbol": algo.symbol, "side": algo.side, "type": algo.order_type, "quantity": spec.qty(algo.quantity),
        "stop_price": spec.price(algo.trigger_price), "reduce_only": algo.reduce_only,
        "close_position": algo.close_position, "status": algo.status,
        "executed_qty": None, "avg_price": spec.price(algo.actual_price) if algo.actual_order_id else None,
        "actual_order_id": str(algo.actual_order_id) if algo.actual_order_id is not None else None,
        "source": "api", "time_ms": algo.create_time_ms, "update_time_ms": algo.update_time_ms,
    }


def control_position(position: Position, spec: SymbolSpec) -> dict:
    """A non-flat position as a row of ``GET /_emulator/positions``."""
    return {
        "symbol": position.symbol,
        "side": "BUY" if position.amount > 0 else "SELL",
        "quantity": spec.qty(abs(position.amount)),
        "position_amt": spec.qty(position.amount),
        "entry_price": format_trimmed(position.entry_price, min_places=spec.price_precision),
        "update_time_ms": position.update_time_ms,
    }

"""What the exchange keeps: positions, regular orders, algo (conditional) orders, and the
order types and statuses they take.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "ALGO_ORDER_TYPES",
    "MOVED_TO_ALGO",
    "OPEN_ALGO_STATUSES",
    "OPEN_ORDER_STATUSES",
    "PARTIAL_REMAINDERS",
    "PARTIAL_REMAINDER_EXPIRES",
    "PARTIAL_REMAINDER_RESTS",
    "PUBLISHED_ORDER_TYPES",
    "REGULAR_ORDER_TYPES",
    "AlgoOrder",
    "Order",
    "PartialFill",
    "Position",
]

REGULAR_ORDER_TYPES = ("MARKET",)
ALGO_ORDER_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET")
# Conditional types Binance moved to the algo service; /fapi/v1/order refuses them.
MOVED_TO_ALGO = frozenset({"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"})
PUBLISHED_ORDER_TYPES = ("LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                         "TRAILING_STOP_MARKET")

OPEN_ORDER_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})
OPEN_ALGO_STATUSES = frozenset({"NEW"})  # an algo order is open while it waits for its trigger

# What a `partial_fill` fault does with the part of a market order it leaves unfilled.
PARTIAL_REMAINDER_EXPIRES = "expire"  # EXPIRED at once, executedQty > 0
PARTIAL_REMAINDER_RESTS = "rest"  # PARTIALLY_FILLED; the rest fills at the next mark price change
PARTIAL_REMAINDERS = (PARTIAL_REMAINDER_EXPIRES, PARTIAL_REMAINDER_RESTS)


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

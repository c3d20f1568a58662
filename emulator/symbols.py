"""The emulated perpetuals: their filters, default mark prices, leverage brackets, and how
prices and quantities are written on the wire.

Money is ``Decimal`` inside; these helpers turn it into the strings Binance sends, to the
symbol's tick and step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "DEFAULT_LEVERAGE",
    "LEVERAGE_BRACKETS",
    "MAX_OPEN_ALGO_ORDERS",
    "REAL_SYMBOLS",
    "SymbolSpec",
    "bench_symbols",
    "decimal_places",
    "default_symbols",
    "format_fixed",
    "format_trimmed",
    "maint_margin_ratio",
]

PERPETUAL_DELIVERY_DATE = 4133404800000  # what Binance sends as deliveryDate of perpetuals
MAX_OPEN_ALGO_ORDERS = 10  # MAX_NUM_ALGO_ORDERS filter, per symbol
DEFAULT_LEVERAGE = 20

# Leverage brackets (notional floor, cap, initial leverage, maintenance margin ratio, cum).
LEVERAGE_BRACKETS: tuple[tuple[int, int, int, str, int], ...] = (
    (0, 50_000, 50, "0.01", 0),
    (50_000, 250_000, 25, "0.02", 500),
    (250_000, 1_000_000, 10, "0.05", 8_000),
    (1_000_000, 5_000_000, 5, "0.10", 58_000),
)


def maint_margin_ratio(notional: Decimal) -> Decimal:
    """The maintenance margin ratio of the bracket ``notional`` falls in."""
    ratio = Decimal(LEVERAGE_BRACKETS[0][3])
    for floor, _cap, _leverage, mmr, _cum in LEVERAGE_BRACKETS:
        if notional >= floor:
            ratio = Decimal(mmr)
    return ratio


def decimal_places(step: Decimal) -> int:
    """Decimal places of a tick or step size (0.10 -> 1, 1 -> 0)."""
    exponent = step.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def format_fixed(value: Decimal, places: int) -> str:
    """``value`` with exactly ``places`` decimals, never in scientific notation."""
    quantum = Decimal(1).scaleb(-places)
    return format(value.quantize(quantum), "f")


def format_trimmed(value: Decimal, min_places: int = 0, max_places: int = 8) -> str:
    """``value`` with at most ``max_places`` decimals (trailing zeros cut to ``min_places``)."""
    text = format_fixed(value, max_places)
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
        return decimal_places(self.tick_size)

    @property
    def quantity_precision(self) -> int:
        """Decimals of a quantity (quantityPrecision)."""
        return decimal_places(self.step_size)

    def price(self, value: Decimal) -> str:
        """A price on the wire, to the tick's decimals."""
        return format_fixed(value, self.price_precision)

    def qty(self, value: Decimal) -> str:
        """A quantity on the wire, to the step's decimals."""
        return format_fixed(value, self.quantity_precision)

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
                {"filterType": "MIN_NOTIONAL", "notional": format_trimmed(self.min_notional)},
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

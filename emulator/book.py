"""The book of one account: positions, orders and mark prices, and the rules that change
them. Pure state and rules, no I/O: the server turns requests into calls of ``ExchangeBook``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import TypeVar

from emulator.errors import BinanceError, illegal_characters
from emulator.params import bool_param, client_id_param, decimal_param, numeric_id_param, required_param
from emulator.records import (
    ALGO_ORDER_TYPES,
    MOVED_TO_ALGO,
    OPEN_ALGO_STATUSES,
    OPEN_ORDER_STATUSES,
    PARTIAL_REMAINDER_EXPIRES,
    REGULAR_ORDER_TYPES,
    AlgoOrder,
    Order,
    PartialFill,
    Position,
)
from emulator.symbols import MAX_OPEN_ALGO_ORDERS, SymbolSpec, format_trimmed

__all__ = ["CLIENT_ID_RULES", "CLIENT_ID_UNIQUE_AMONG_OPEN", "CLIENT_ID_UNIQUE_FOREVER", "ExchangeBook"]

# Client order ids. Binance USD-M documents `newClientOrderId` (POST /fapi/v1/order) and
# `clientAlgoId` (POST /fapi/v1/algoOrder) as "A unique id among open orders. Automatically
# generated if not sent.": once the order holding an id is filled, canceled or expired, the
# same id is accepted again. That is the default here; "forever" (an id is never accepted
# twice) is stricter than Binance and exists only to compare against.
CLIENT_ID_UNIQUE_AMONG_OPEN = "open_orders"
CLIENT_ID_UNIQUE_FOREVER = "forever"
CLIENT_ID_RULES = (CLIENT_ID_UNIQUE_AMONG_OPEN, CLIENT_ID_UNIQUE_FOREVER)

_Record = TypeVar("_Record", Order, AlgoOrder)


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

    @staticmethod
    def _named(params: dict[str, str], id_name: str, client_id_name: str, by_id: dict[int, _Record],
               by_client_id: dict[str, list[_Record]]) -> _Record | None:
        """The order ``params`` name by exchange id or by client id (None: no such order)."""
        if params.get(id_name):
            return by_id.get(numeric_id_param(params, id_name))
        if params.get(client_id_name):
            # An id may name several orders (an earlier one filled, canceled or expired): the
            # latest is answered. Binance does not document which; the latest is the one an
            # id can still act on.
            held_by = by_client_id.get(params[client_id_name])
            return held_by[-1] if held_by else None
        raise BinanceError(-1102, f"Param '{client_id_name}' or '{id_name}' must be sent, "
                                  "but both were empty/null!")

    def _open(self, records: Sequence[_Record], open_statuses: frozenset[str], symbol: str | None) -> list[_Record]:
        if symbol is not None:
            self.spec(symbol)
        return [r for r in records if r.status in open_statuses and (symbol is None or r.symbol == symbol)]

    def _cancel(self, find: Callable[[dict[str, str]], _Record], params: dict[str, str],
                open_statuses: frozenset[str]) -> _Record:
        # Binance answers -2011 (not -2013) when a cancel names an unknown or finished order.
        try:
            record = find(params)
        except BinanceError as error:
            if error.code == -2013:
                raise BinanceError(-2011) from None
            raise
        if record.status not in open_statuses:
            raise BinanceError(-2011)
        record.status = "CANCELED"
        record.update_time_ms = self._clock()
        return record

    # -- validation shared by both order endpoints -------------------------------------

    def _side(self, params: dict[str, str]) -> str:
        side = required_param(params, "side")
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

    def _check_client_id_free(self, held_by: list | None, open_statuses: frozenset[str]) -> None:
        """-4116 when the id is taken under the book's client-id rule (see CLIENT_ID_RULES)."""
        if not held_by:
            return
        if self.client_id_rule == CLIENT_ID_UNIQUE_FOREVER or any(o.status in open_statuses for o in held_by):
            raise BinanceError(-4116)

    def _reducible(self, symbol: str, side: str) -> Decimal:
        """How much an order of ``side`` can reduce the position (0: it would open or increase)."""
        amount = self.position(symbol).amount
        if side == "SELL" and amount > 0:
            return amount
        if side == "BUY" and amount < 0:
            return -amount
        return Decimal(0)

    # -- regular orders ---------------------------------------------------------------

    def place_order(self, params: dict[str, str], partial: PartialFill | None = None) -> Order:
        """POST /fapi/v1/order: a MARKET order, filled at once at the mark price.

        ``partial`` (a fault) fills only part of it; the rest expires at once or rests.
        """
        spec = self.spec(params.get("symbol"))
        side = self._side(params)
        order_type = required_param(params, "type")
        if order_type in MOVED_TO_ALGO:
            raise BinanceError(-4120)
        if order_type not in REGULAR_ORDER_TYPES:
            raise BinanceError(-1116)  # LIMIT is real but not emulated: nothing here would fill it
        self._check_position_side(params)
        quantity = decimal_param(params, "quantity")
        self._check_quantity(spec, quantity, spec.market_max_qty)
        reduce_only = bool_param(params, "reduceOnly")
        client_id = client_id_param(params, "newClientOrderId") or self._new_client_id()
        self._check_client_id_free(self.orders_by_client_id.get(client_id), OPEN_ORDER_STATUSES)
        mark = self.marks[spec.symbol]
        if reduce_only:
            if self._reducible(spec.symbol, side) == 0:
                raise BinanceError(-2022)
        elif quantity * mark < spec.min_notional:
            raise BinanceError(-4164, notional=format_trimmed(spec.min_notional))
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
        order = self._named(params, "orderId", "origClientOrderId", self.orders_by_id, self.orders_by_client_id)
        if order is None or order.symbol != spec.symbol:
            raise BinanceError(-2013)
        return order

    def cancel_order(self, params: dict[str, str]) -> Order:
        """DELETE /fapi/v1/order: only a resting order can be canceled (-2011 otherwise)."""
        return self._cancel(self.find_order, params, OPEN_ORDER_STATUSES)

    def open_orders(self, symbol: str | None) -> list[Order]:
        """Resting regular orders (a MARKET order never rests, so normally none)."""
        return self._open(self.orders, OPEN_ORDER_STATUSES, symbol)

    # -- algo (conditional) orders ----------------------------------------------------

    @staticmethod
    def _crossed(algo_side: str, order_type: str, trigger: Decimal, mark: Decimal) -> bool:
        # A stop protects against the price moving away: a SELL stop fires on the way down.
        falls = (algo_side == "SELL") == (order_type == "STOP_MARKET")
        return mark <= trigger if falls else mark >= trigger

    def place_algo_order(self, params: dict[str, str]) -> AlgoOrder:
        """POST /fapi/v1/algoOrder: a CONDITIONAL STOP_MARKET / TAKE_PROFIT_MARKET order."""
        algo_type = required_param(params, "algoType")
        if algo_type != "CONDITIONAL":
            raise illegal_characters("algoType", "CONDITIONAL")
        spec = self.spec(params.get("symbol"))
        side = self._side(params)
        order_type = required_param(params, "type")
        if order_type not in ALGO_ORDER_TYPES:
            raise BinanceError(-1116)  # limit stops and trailing stops are not emulated
        self._check_position_side(params)
        close_position = bool_param(params, "closePosition")
        reduce_only = bool_param(params, "reduceOnly")
        if close_position and (reduce_only or params.get("quantity")):
            raise BinanceError(-1106, "Parameter 'reduceOnly' sent when not required." if reduce_only
                               else "Parameter 'quantity' sent when not required.")
        quantity = Decimal(0)
        if not close_position:
            quantity = decimal_param(params, "quantity")
            self._check_quantity(spec, quantity, spec.max_qty)
        trigger = decimal_param(params, "triggerPrice")
        self._check_price(spec, trigger)
        working_type = params.get("workingType", "CONTRACT_PRICE")
        client_id = client_id_param(params, "clientAlgoId") or self._new_client_id()
        self._check_client_id_free(self.algos_by_client_id.get(client_id), OPEN_ALGO_STATUSES)
        if len(self.open_algos(spec.symbol)) >= MAX_OPEN_ALGO_ORDERS:
            raise BinanceError(-4045)
        mark = self.marks[spec.symbol]
        if self._crossed(side, order_type, trigger, mark):
            raise BinanceError(-2021)
        if (reduce_only or close_position) and self._reducible(spec.symbol, side) == 0:
            raise BinanceError(-2022)
        if not (reduce_only or close_position) and quantity * trigger < spec.min_notional:
            raise BinanceError(-4164, notional=format_trimmed(spec.min_notional))
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
        algo = self._named(params, "algoId", "clientAlgoId", self.algos_by_id, self.algos_by_client_id)
        if algo is None or (params.get("symbol") and params["symbol"] != algo.symbol):
            raise BinanceError(-2013)
        return algo

    def cancel_algo(self, params: dict[str, str]) -> AlgoOrder:
        """DELETE /fapi/v1/algoOrder: only a waiting (NEW) algo order can be canceled."""
        return self._cancel(self.find_algo, params, OPEN_ALGO_STATUSES)

    def open_algos(self, symbol: str | None) -> list[AlgoOrder]:
        """Algo orders still waiting for their trigger."""
        return self._open(self.algos, OPEN_ALGO_STATUSES, symbol)

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

"""What a decision is made of: the step being decided, its verdict and effect, the commands it builds.

Shared by ``decide`` (the judgement) and ``effects`` (what each transition does). Pure, as
the whole package: no clock, no I/O, no mutation.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import NamedTuple, TypeVar

from streams.domain.commands import (
    AuditRecord,
    CancelOrder,
    ClosePosition,
    Command,
    Decision,
    PlaceEntry,
    PlaceStopLoss,
    QueryOrder,
)
from streams.domain.exceptions import TransitionTableError
from streams.domain.ids import client_order_id, command_id, report_key, role_of_client_order_id
from streams.domain.model import (
    RefusalCode,
    AuditDecision,
    Deadline,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    InputPayload,
    KeyState,
    OrderRef,
    OrderRole,
    Policy,
    Position,
    ReportOutcome,
    Side,
    Signal,
    Status,
)


# A fixed context, so the result never depends on the caller's thread-local decimal context.
_ARITHMETIC = Context(prec=28, rounding=ROUND_HALF_EVEN)
_HUNDRED = Decimal(100)
_P = TypeVar("_P", Signal, ExchangeSnapshot, ExecutionReport, Deadline)
_UNFILLED_CLOSE_OUTCOMES = (ReportOutcome.REJECTED, ReportOutcome.CANCELED, ReportOutcome.NOT_FOUND)
# Answers after which an order can no longer rest at the exchange.
_FINAL_OUTCOMES = (ReportOutcome.FILLED, ReportOutcome.CANCELED, ReportOutcome.NOT_FOUND, ReportOutcome.REJECTED)
_STOP_STATUSES = (Status.PENDING_SL, Status.ACTIVE)


def stop_loss_price(side: Side, entry_price: Decimal, stop_loss_pct: Decimal) -> Decimal:
    """The raw stop price of a position: below the entry for BUY, above it for SELL.

    Not rounded: the executor rounds it to the market's precision.
    """
    distance = _ARITHMETIC.divide(stop_loss_pct, _HUNDRED)
    if side is Side.BUY:
        factor = _ARITHMETIC.subtract(Decimal(1), distance)
    else:
        factor = _ARITHMETIC.add(Decimal(1), distance)
    return _ARITHMETIC.multiply(entry_price, factor)


# --- the step being decided and its outcome ------------------------------------------------


class _Step(NamedTuple):
    """One input being decided, with everything the rules read.

    The step's records (this, `_Verdict`, `_Effect`, `_Refusal`) are named tuples: as
    immutable as frozen dataclasses, several times cheaper to build, and never stored.
    """

    state: KeyState
    offset: int
    event: InputEvent
    policy: Policy
    #: The input's time (the log's), its key and its payload, read once.
    now: int
    key: str
    payload: InputPayload


class _Verdict(NamedTuple):
    """What the judgement of one input produced, before the new KeyState is assembled."""

    decision: AuditDecision
    reason: str
    position: Position | None
    commands: tuple[Command, ...] = ()
    remember_signal_id: str | None = None
    exchange_ts: int | None = None
    refusal_code: RefusalCode | None = None


class _Effect(NamedTuple):
    """The new position and commands of a transition the table accepted."""

    position: Position
    commands: tuple[Command, ...]
    notes: tuple[str, ...]


class _Refusal(NamedTuple):
    """A transition the table accepts but the input cannot carry out (e.g. an open without side)."""

    decision: AuditDecision
    reason: str
    code: RefusalCode | None = None


# --- values built without dataclasses' per-field cost ---------------------------------------
# A frozen dataclass sets each field through `object.__setattr__`, a call that costs several
# times an ordinary attribute store: with the 24 fields of a position, building values was
# most of a decision's time. These builders store the fields into an instance of a plain
# class with the same slots (ordinary stores), then make it an instance of the frozen class
# by `__class__` assignment, which CPython allows only between classes of the same layout
# (a TypeError otherwise). The result is an ordinary, frozen instance of the class.

_KEEP = object()


def _compiled(cls: type, name: str, signature: str, stores: list[str], namespace: dict) -> Callable[..., object]:
    draft = type(f"_{cls.__name__}Draft", (), {"__slots__": cls.__slots__})
    tail = ["    _value.__class__ = _cls"]
    if name.startswith("new_") and hasattr(cls, "__post_init__"):
        tail.append("    _value.__post_init__()")
    source = "\n".join([f"def {name}({signature}):", "    _value = _make(_draft)", *stores, *tail, "    return _value"])
    namespace = {**namespace, "_make": object.__new__, "_draft": draft, "_cls": cls}
    exec(source, namespace)  # noqa: S102 - our own source, built from the dataclass's field names
    return namespace[name]


def _precompiled_replace(cls: type) -> Callable[..., object]:
    """`dataclasses.replace` for the frozen, slotted dataclass `cls`, compiled once for its fields.

    `dataclasses.replace` walks the fields, builds keyword arguments and runs `__init__` and
    `__post_init__` again. This copies the slots of the old value and the changes, without
    validating again: `decide` only passes values taken from validated inputs, values already
    in the position, or Decimal arithmetic in a fixed context. Generated from `fields(cls)`,
    so a field added to the class is copied too.
    """
    names = [field.name for field in fields(cls)]
    return _compiled(cls, f"replace_{cls.__name__}", f"_old, /, *, {', '.join(f'{n}=_KEEP' for n in names)}",
                     [f"    _value.{n} = _old.{n} if {n} is _KEEP else {n}" for n in names], {"_KEEP": _KEEP})


def _precompiled_new(cls: type) -> Callable[..., object]:
    """`cls(**fields)` for the frozen, slotted dataclass `cls`: keyword arguments, its defaults, its `__post_init__`."""
    defaults = {}
    for field in fields(cls):
        if field.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: a default factory is not supported here")
        if field.default is not MISSING:
            defaults[f"_default_{field.name}"] = field.default
    params = [f"{f.name}=_default_{f.name}" if f"_default_{f.name}" in defaults else f.name for f in fields(cls)]
    return _compiled(cls, f"new_{cls.__name__}", f"*, {', '.join(params)}",
                     [f"    _value.{f.name} = {f.name}" for f in fields(cls)], defaults)


#: `dataclasses.replace(position, ...)` for a position, without re-running its validation.
_replace_position: Callable[..., Position] = _precompiled_replace(Position)
#: The values every decision builds: `KeyState(...)`, `AuditRecord(...)`, `Decision(...)`.
_new_key_state: Callable[..., KeyState] = _precompiled_new(KeyState)
_new_audit_record: Callable[..., AuditRecord] = _precompiled_new(AuditRecord)
_new_decision: Callable[..., Decision] = _precompiled_new(Decision)


def _unchanged(step: _Step, decision: AuditDecision, reason: str, code: RefusalCode | None = None, *,
               remember_signal_id: str | None = None, exchange_ts: int | None = None) -> _Verdict:
    return _Verdict(decision=decision, reason=reason, position=step.state.position, refusal_code=code,
                    remember_signal_id=remember_signal_id, exchange_ts=exchange_ts)


# --- command builders ----------------------------------------------------------------------


def _new_order(position_id: str, role: OrderRole, attempt: int, side: Side, quantity: Decimal) -> OrderRef:
    return OrderRef(client_order_id=client_order_id(position_id, role, attempt), attempt=attempt, side=side,
                    quantity=quantity)


def _order_fields(step: _Step, position: Position, kind: str, order: OrderRef, *,
                  query_offset: int | None = None) -> dict:
    """The fields every order command shares: ids, key, position and market."""
    return {
        "command_id": command_id(position.id, kind, order.client_order_id, query_offset),
        "key": step.key,
        "position_id": position.id,
        "symbol": position.symbol,
        "exchange": position.exchange,
        "client_order_id": order.client_order_id,
    }


def _ordered(order: OrderRef) -> tuple[Side, Decimal]:
    # Every order decide builds records its side and quantity (None only in old states).
    if order.side is None or order.quantity is None:
        raise TransitionTableError(f"order {order.client_order_id} was built without side or quantity")
    return order.side, order.quantity


def _place_entry(step: _Step, position: Position, order: OrderRef) -> PlaceEntry:
    side, quantity = _ordered(order)
    return PlaceEntry(**_order_fields(step, position, PlaceEntry.kind, order), side=side, quantity=quantity)


def _place_stop_loss(step: _Step, position: Position, order: OrderRef, price: Decimal) -> PlaceStopLoss:
    side, quantity = _ordered(order)
    return PlaceStopLoss(**_order_fields(step, position, PlaceStopLoss.kind, order),
                         side=side, quantity=quantity, stop_price=price)


def _close_position(step: _Step, position: Position, order: OrderRef) -> ClosePosition:
    side, quantity = _ordered(order)
    return ClosePosition(**_order_fields(step, position, ClosePosition.kind, order), side=side, quantity=quantity)


def _cancel_order(step: _Step, position: Position, order: OrderRef) -> CancelOrder:
    # Cancels repeat on deadlines until confirmed; the offset keeps their ids apart.
    return CancelOrder(**_order_fields(step, position, CancelOrder.kind, order, query_offset=step.offset),
                       role=role_of_client_order_id(order.client_order_id))


def _cancels(step: _Step, position: Position) -> tuple[Command, ...]:
    """A cancel for every order of the position that must not stay open."""
    return tuple(_cancel_order(step, position, order) for order in position.orders_to_cancel)


def _query_order(step: _Step, position: Position, order: OrderRef, role: OrderRole) -> QueryOrder:
    # Queries repeat on every deadline; the offset keeps their ids apart.
    return QueryOrder(**_order_fields(step, position, QueryOrder.kind, order, query_offset=step.offset), role=role)


# --- shared effects ------------------------------------------------------------------------


def _protect(
    step: _Step, position: Position, target: Status, *, attempt: int, notes: tuple[str, ...]
) -> _Effect | _Refusal:
    """Move to `target` and place stop-loss attempt `attempt` from the known entry price."""
    if position.entry_price is None:
        return _Refusal(
            AuditDecision.IGNORED,
            f"no entry price known for position {position.id}; cannot place a stop-loss yet",
        )
    order = _new_order(position.id, OrderRole.STOP_LOSS, attempt, position.side.opposite(), position.quantity)
    price = stop_loss_price(position.side, position.entry_price, position.stop_loss_pct)
    protected = _replace_position(position, status=target, stop_order=order)
    return _Effect(
        position=protected,
        commands=(_place_stop_loss(step, protected, order, price),),
        notes=(*notes, f"stop-loss attempt {attempt} at {price}"),
    )


def _start_closing(step: _Step, position: Position, target: Status, *, notes: tuple[str, ...],
                   gone: str | None = None) -> _Effect:
    """Move to `target` (closing) with the next close attempt; every order that may rest is canceled.

    `gone` names an order the input being decided just proved gone (no cancel for it).
    """
    attempt = position.close_order.attempt + 1 if position.close_order is not None else 1
    order = _new_order(position.id, OrderRole.CLOSE, attempt, position.side.opposite(), position.quantity)
    closing = _replace_position(position, orders_to_cancel=_orders_left_resting(position, except_id=gone),
                                status=target, close_order=order)
    return _Effect(
        position=closing,
        commands=(*_cancels(step, closing), _close_position(step, closing, order)),
        notes=(*notes, f"close attempt {attempt} of {closing.quantity}"),
    )


def _may_rest(position: Position, order: OrderRef) -> bool:
    """False once an answer proved the order filled, canceled, refused or never there."""
    seen = position.seen_reports
    if seen:
        for outcome in _FINAL_OUTCOMES:
            if report_key(order.client_order_id, outcome) in seen:
                return False
    return True


def _current_stop_accepted(position: Position) -> bool:
    stop = position.stop_order
    return stop is not None and report_key(stop.client_order_id, ReportOutcome.ACCEPTED) in position.seen_reports


def _orders_left_resting(position: Position, *, except_id: str | None = None) -> tuple[OrderRef, ...]:
    """The position's orders to cancel, with those that may still rest (its stop, an entry seen resting).

    `except_id` names an order just proved gone (a stop that filled).
    """
    candidates = [position.stop_order]
    entry = position.entry_order
    if entry is not None and report_key(entry.client_order_id, ReportOutcome.ACCEPTED) in position.seen_reports:
        candidates.append(entry)  # a market entry seen resting (partly filled) may still fill
    to_cancel = [o for o in position.orders_to_cancel if o.client_order_id != except_id]
    for order in candidates:
        if (order is not None and order.client_order_id != except_id and _may_rest(position, order)
                and _to_cancel(position, order.client_order_id) is None):
            to_cancel.append(order)
    return tuple(to_cancel)


def _stop_covers(position: Position, snapshot: ExchangeSnapshot) -> bool:
    """True when the current stop is on the side opposite the exchange's and at least its size.

    A reduce-only stop larger than the position is cut to it by the exchange, so only an
    undersized or wrong-side stop needs replacing.
    """
    stop = position.stop_order
    if stop is None or snapshot.side is None:
        return True
    side = stop.side if stop.side is not None else position.side.opposite()
    quantity = stop.quantity if stop.quantity is not None else position.quantity
    return side is snapshot.side.opposite() and quantity >= snapshot.quantity


def _moved(position: Position, target: Status, note: str) -> _Effect:
    return _Effect(position=_replace_position(position, status=target), commands=(), notes=(note,))


def _error_suffix(report: ExecutionReport) -> str:
    parts = [str(part) for part in (report.error_code, report.error_message) if part is not None]
    return f" ({' '.join(parts)})" if parts else ""


def _exchange_differences(position: Position, snapshot: ExchangeSnapshot) -> tuple[str, ...]:
    """Audit notes for every way the exchange disagrees with the position (it wins)."""
    notes = []
    if snapshot.quantity != position.quantity:
        label = "requested" if position.quantity == position.requested_quantity else "tracked"
        notes.append(
            f"exchange quantity {snapshot.quantity} differs from {label} {position.quantity}; "
            "exchange wins"
        )
    if snapshot.side is not position.side:
        notes.append(f"exchange side {snapshot.side} differs from {position.side}; exchange wins")
    if (
        snapshot.entry_price is not None
        and position.entry_price is not None
        and snapshot.entry_price != position.entry_price
    ):
        notes.append(
            f"exchange entry price {snapshot.entry_price} differs from {position.entry_price}; "
            "exchange wins"
        )
    return tuple(notes)


def _same_decimal(a: Decimal | None, b: Decimal | None) -> bool:
    """Equal and written alike (`61.8` is not `61.80`): a value that may replace the other unseen."""
    return a is b or (a is not None and b is not None and a == b and a.same_quantum(b)
                      and a.is_signed() is b.is_signed())


def _to_cancel(position: Position, client_order_id: str) -> OrderRef | None:
    return next((o for o in position.orders_to_cancel if o.client_order_id == client_order_id), None)

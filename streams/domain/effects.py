"""What each transition the table lets through does to the position, and the commands it sends.

``decide`` looks a transition's effect up in ``EFFECTS_ON_FREE_KEY`` / ``EFFECTS_ON_POSITION``
by its trigger, once the transition table (``transitions.py``) has accepted the input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType

from streams.domain.exceptions import TransitionTableError
from streams.domain.ids import position_id, report_key
from streams.domain.model import (
    OrderRef,
    is_stop_loss_pct,
    RefusalCode,
    AuditDecision,
    Deadline,
    ExchangeSnapshot,
    ExecutionReport,
    OrderRole,
    Position,
    PositionSource,
    Side,
    Signal,
    Status,
)
from streams.domain.transitions import ENTRY_STATUSES, Trigger
from streams.domain.verdicts import (
    _Effect,
    _P,
    _Refusal,
    _Step,
    _UNFILLED_CLOSE_OUTCOMES,
    _cancels,
    _current_stop_accepted,
    _error_suffix,
    _exchange_differences,
    _may_rest,
    _moved,
    _new_order,
    _place_entry,
    _protect,
    _query_order,
    _orders_left_resting,
    _replace_position,
    _same_decimal,
    _start_closing,
    _to_cancel,
    stop_loss_price,
)


# --- effects of the transitions the table lets through -------------------------------------
# A free key has two: open and adopt. Every other effect acts on the live position and
# receives the table's target status.


def _payload_as(step: _Step, kind: type[_P]) -> _P:
    """The payload, as the type the trigger was derived from (a mismatch is a table bug)."""
    payload = step.payload
    if not isinstance(payload, kind):
        raise TransitionTableError(f"expected a {kind.__name__} payload, got {payload!r}")
    return payload


def _open_position(step: _Step, target: Status) -> _Effect | _Refusal:
    signal = _payload_as(step, Signal)
    side, quantity, pct = signal.side, signal.quantity, signal.stop_loss_pct
    if side is None:
        problem = "no side"
    elif quantity is None:
        problem = "no quantity"
    elif quantity <= 0:
        problem = f"quantity {quantity} is not > 0"
    elif pct is not None and not is_stop_loss_pct(pct):
        problem = f"stop_loss_pct {pct} is not in (0, 100)"
    else:
        return _open_with(step, signal, side, quantity, target)
    return _Refusal(AuditDecision.REFUSED, f"open signal {signal.signal_id} refused: {problem}",
                    RefusalCode.INVALID_SIGNAL)


def _new_position(step: _Step, target: Status, *, symbol: str, exchange: str, side: Side, quantity: Decimal,
                  requested_quantity: Decimal | None, entry_price: Decimal | None, stop_loss_pct: Decimal,
                  source: PositionSource, signal_id: str | None, entry_order: OrderRef | None) -> Position:
    """A position born at this step: its id and version from the step's offset, nothing closed or pending."""
    return Position(
        id=position_id(step.key, step.offset), symbol=symbol, exchange=exchange, side=side, quantity=quantity,
        requested_quantity=requested_quantity, entry_price=entry_price, stop_loss_pct=stop_loss_pct,
        stop_loss_price=None, status=target, source=source, signal_id=signal_id, opened_at=step.now,
        closed_at=None, updated_at=step.now, deadline_at=None, close_requested=False, entry_order=entry_order,
        stop_order=None, close_order=None, seen_reports=(), version=step.offset,
    )


def _open_with(step: _Step, signal: Signal, side: Side, quantity: Decimal, target: Status) -> _Effect:
    new_id = position_id(step.key, step.offset)
    pct = signal.stop_loss_pct
    entry = _new_order(new_id, OrderRole.ENTRY, 1, side, quantity)
    opened = _new_position(step, target, symbol=signal.symbol, exchange=signal.exchange, side=side,
                           quantity=quantity, requested_quantity=quantity, entry_price=None,
                           stop_loss_pct=pct if pct is not None else step.policy.default_stop_loss_pct,
                           source=PositionSource.SIGNAL, signal_id=signal.signal_id, entry_order=entry)
    return _Effect(
        position=opened,
        commands=(_place_entry(step, opened, entry),),
        notes=(f"opened {new_id}: {side} {quantity} for signal {signal.signal_id}",),
    )


def _adopt(step: _Step, target: Status) -> _Effect | _Refusal:
    snapshot = _payload_as(step, ExchangeSnapshot)
    if snapshot.side is None or snapshot.entry_price is None:
        return _Refusal(
            AuditDecision.IGNORED,
            "snapshot shows a position without an entry price; cannot protect it to adopt it",
        )
    new_id = position_id(step.key, step.offset)
    adopted = _new_position(step, target, symbol=snapshot.symbol, exchange=snapshot.exchange, side=snapshot.side,
                            quantity=snapshot.quantity, requested_quantity=None, entry_price=snapshot.entry_price,
                            stop_loss_pct=step.policy.default_stop_loss_pct, source=PositionSource.EXCHANGE,
                            signal_id=None, entry_order=None)
    note = (
        f"adopted {new_id} from the exchange: "
        f"{snapshot.side} {snapshot.quantity} at {snapshot.entry_price}"
    )
    return _protect(step, adopted, target, attempt=1, notes=(note,))


def _close_signal(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    if target in ENTRY_STATUSES:
        return _Effect(
            position=_replace_position(position, close_requested=True),
            commands=(),
            notes=("close requested; the position closes as soon as its entry fill is known",),
        )
    return _start_closing(step, position, target, notes=("close signal",))


def _exchange_shows_position(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    snapshot = _payload_as(step, ExchangeSnapshot)
    differences = _exchange_differences(position, snapshot)
    side = snapshot.side if snapshot.side is not None else position.side
    entry_price = snapshot.entry_price if snapshot.entry_price is not None else position.entry_price
    if (target is position.status and side is position.side and _same_decimal(snapshot.quantity, position.quantity)
            and (entry_price is position.entry_price or _same_decimal(entry_price, position.entry_price))):
        # The exchange agrees to the digit (the common snapshot): the position as it is, no copy of it.
        return _Effect(position=position, commands=(), notes=differences or ("the exchange agrees with the position",))
    synced = _replace_position(position, side=side, quantity=snapshot.quantity, entry_price=entry_price)
    if position.status in ENTRY_STATUSES:
        notes = ("the exchange confirms the entry", *differences)
        if target is Status.CLOSING:
            notes = (*notes, "close was requested")
            return _start_closing(step, synced, target, notes=notes)
        return _protect(step, synced, target, attempt=1, notes=notes)
    return _Effect(
        position=_replace_position(synced, status=target),
        commands=(),
        notes=differences or ("the exchange agrees with the position",),
    )


def _exchange_outgrows_stop(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    """The exchange holds more than the stop covers, or the other side: place a stop that covers it.

    The old stop is canceled only once the new one is accepted, so an undersized or
    wrong-side stop is never replaced by nothing; until then the two rest side by side.
    """
    snapshot = _payload_as(step, ExchangeSnapshot)
    old = position.stop_order
    to_cancel = position.orders_to_cancel
    if old is not None and _may_rest(position, old) and _to_cancel(position, old.client_order_id) is None:
        to_cancel = (*to_cancel, old)
    synced = _replace_position(
        position,
        side=snapshot.side if snapshot.side is not None else position.side,
        quantity=snapshot.quantity,
        entry_price=snapshot.entry_price if snapshot.entry_price is not None else position.entry_price,
        orders_to_cancel=to_cancel,
    )
    attempt = old.attempt + 1 if old is not None else 1
    covered = f"{old.side} {old.quantity}" if old is not None else "nothing"
    notes = (*_exchange_differences(position, snapshot),
             f"stop-loss {old.client_order_id if old else 'none'} covers {covered}: replacing it")
    return _protect(step, synced, target, attempt=attempt, notes=notes)


def _exchange_is_flat(step: _Step, position: Position, target: Status) -> _Effect:
    if position.status is Status.CLOSING:
        return _Effect(position=_replace_position(position, status=target, closed_at_exchange=True), commands=(),
                       notes=("exchange is flat: the close went through",))
    # Its stop may still rest at the exchange; a stop of a closed position must not.
    ended = _replace_position(position, orders_to_cancel=_orders_left_resting(position), status=target,
                              closed_at_exchange=True)
    return _Effect(
        position=ended,
        commands=_cancels(step, ended),
        notes=("exchange is flat: the stop was hit or the position was closed outside",),
    )


def _deadline_passed(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    deadline = _payload_as(step, Deadline)
    passed = f"deadline {deadline.due_at} passed"
    if _waits_only_for_cancels(position):
        names = ", ".join(o.client_order_id for o in position.orders_to_cancel)
        return _Effect(position=_replace_position(position, status=target), commands=_cancels(step, position),
                       notes=(f"{passed}; canceling again {names}",))
    if position.status is Status.CLOSING and _last_close_failed(position):
        return _start_closing(step, position, target, notes=(passed,))
    role = _role_in_flight(position.status)
    order = position.order_for(role)
    if order is None:
        return _Refusal(AuditDecision.IGNORED, f"position {position.id} has no {role} order to query")
    cancels = _cancels(step, position) if position.status is Status.CLOSING else ()
    return _Effect(
        position=_replace_position(position, status=target),
        commands=(*cancels, _query_order(step, position, order, role)),
        notes=(f"{passed}; querying {role} order {order.client_order_id}",),
    )


def _waits_only_for_cancels(position: Position) -> bool:
    """Held for its orders to cancel: the stop is accepted, or the exchange no longer holds it."""
    if not position.orders_to_cancel:
        return False
    if position.status is Status.PENDING_SL:
        return _current_stop_accepted(position)
    return position.status is Status.CLOSING and position.closed_at_exchange


def _role_in_flight(status: Status) -> OrderRole:
    if status in ENTRY_STATUSES:
        return OrderRole.ENTRY
    if status is Status.PENDING_SL:
        return OrderRole.STOP_LOSS
    return OrderRole.CLOSE


def _last_close_failed(position: Position) -> bool:
    order = position.close_order
    return order is not None and any(
        report_key(order.client_order_id, outcome) in position.seen_reports
        for outcome in _UNFILLED_CLOSE_OUTCOMES
    )


def _entry_accepted(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    return _moved(position, target, f"entry accepted as exchange order {report.exchange_order_id}")


def _entry_filled(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    report = _payload_as(step, ExecutionReport)
    # A fill without a quantity (or with zero) tells nothing new about it: keep the request.
    quantity = report.filled_quantity or position.quantity
    notes: tuple[str, ...] = (f"entry filled: {quantity} at {report.average_price}",)
    if quantity != position.quantity:
        notes = (
            *notes,
            f"filled quantity {quantity} differs from requested {position.quantity}; the fill wins",
        )
    filled = _replace_position(
        position,
        quantity=quantity,
        entry_price=report.average_price if report.average_price is not None else position.entry_price,
    )
    if target is Status.CLOSING:
        notes = (*notes, "close was requested")
        gone = position.entry_order.client_order_id if position.entry_order is not None else None
        return _start_closing(step, filled, target, notes=notes, gone=gone)
    return _protect(step, filled, target, attempt=1, notes=notes)


def _entry_unfilled(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    return _moved(position, target, f"entry {report.outcome}{_error_suffix(report)}: nothing to unwind")


def _stop_accepted(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    price = report.stop_price
    if price is None and position.entry_price is not None:
        price = stop_loss_price(position.side, position.entry_price, position.stop_loss_pct)
    protected = _replace_position(position, status=target, stop_loss_price=price)
    notes: tuple[str, ...] = (f"stop-loss resting at {price}",)
    if protected.orders_to_cancel:  # replaced stops go only now that the new one rests
        notes = (*notes, "canceling " + ", ".join(o.client_order_id for o in protected.orders_to_cancel))
    return _Effect(position=protected, commands=_cancels(step, protected), notes=notes)


def _stop_filled(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    ended = _replace_position(position, orders_to_cancel=_orders_left_resting(position, except_id=report.client_order_id),
                              status=target, closed_at_exchange=True)
    # Closing: the others were canceled when it began (the deadline repeats them).
    commands = _cancels(step, ended) if position.status is not Status.CLOSING else ()
    return _Effect(position=ended, commands=commands, notes=(f"stop-loss filled at {report.average_price}",))


def _stop_cancel_confirmed(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    remaining = tuple(o for o in position.orders_to_cancel if o.client_order_id != report.client_order_id)
    return _Effect(position=_replace_position(position, status=target, orders_to_cancel=remaining), commands=(),
                   notes=(f"stop-loss {report.client_order_id} confirmed gone ({report.outcome})",))


def _stop_rejected(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    note = f"stop-loss rejected{_error_suffix(report)}; closing the unprotected position"
    return _start_closing(step, position, target, notes=(note,), gone=report.client_order_id)


def _stop_missing(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    report = _payload_as(step, ExecutionReport)
    # The report matched the current stop order (checked before the table), so it exists.
    attempt = position.stop_order.attempt if position.stop_order is not None else 0
    note = f"stop-loss attempt {attempt} {report.outcome}; placing it again"
    return _protect(step, position, target, attempt=attempt + 1, notes=(note,))


def _stop_missing_or_canceled(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    """Closing: the stop's cancel is confirmed. Otherwise: the stop is gone, place it again."""
    if position.status is Status.CLOSING:
        return _stop_cancel_confirmed(step, position, target)
    return _stop_missing(step, position, target)


def _close_filled(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    return _Effect(position=_replace_position(position, status=target, closed_at_exchange=True), commands=(),
                   notes=(f"close filled at {report.average_price}",))


def _close_unfilled(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    attempt = position.close_order.attempt if position.close_order is not None else 0
    return _moved(
        position,
        target,
        f"close attempt {attempt} {report.outcome}{_error_suffix(report)}; "
        "the deadline retries with a new attempt",
    )


_FreeKeyEffect = Callable[[_Step, Status], "_Effect | _Refusal"]
_PositionEffect = Callable[[_Step, Position, Status], "_Effect | _Refusal"]

_EFFECTS_ON_FREE_KEY: Mapping[Trigger, _FreeKeyEffect] = MappingProxyType(
    {
        Trigger.OPEN: _open_position,
        Trigger.SNAPSHOT_POSITION: _adopt,
    }
)

_EFFECTS_ON_POSITION: Mapping[Trigger, _PositionEffect] = MappingProxyType(
    {
        Trigger.CLOSE: _close_signal,
        Trigger.SNAPSHOT_POSITION: _exchange_shows_position,
        Trigger.SNAPSHOT_UNCOVERED: _exchange_outgrows_stop,
        Trigger.SNAPSHOT_FLAT: _exchange_is_flat,
        Trigger.DEADLINE: _deadline_passed,
        Trigger.ENTRY_ACCEPTED: _entry_accepted,
        Trigger.ENTRY_FILLED: _entry_filled,
        Trigger.ENTRY_REJECTED: _entry_unfilled,
        Trigger.ENTRY_CANCELED: _entry_unfilled,
        Trigger.ENTRY_NOT_FOUND: _entry_unfilled,
        Trigger.SL_ACCEPTED: _stop_accepted,
        Trigger.SL_FILLED: _stop_filled,
        Trigger.SL_REJECTED: _stop_rejected,
        Trigger.SL_NOT_FOUND: _stop_missing_or_canceled,
        Trigger.SL_CANCELED: _stop_missing_or_canceled,
        Trigger.CLOSE_FILLED: _close_filled,
        Trigger.CLOSE_REJECTED: _close_unfilled,
        Trigger.CLOSE_CANCELED: _close_unfilled,
        Trigger.CLOSE_NOT_FOUND: _close_unfilled,
    }
)

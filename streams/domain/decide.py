"""The pure decision function of the position state machine (docs/state-machine.md).

`decide(state, applied, policy)` takes one input of one key and returns the key's next
state, the commands to send and exactly one audit record. It reads no clock (time comes
from the input), does no I/O and never mutates: every new value is built with
`dataclasses.replace`, and only after the transition table has accepted the input.

Order of judgement for an input:
1. routing: an input of another key is a programmer error (`KeyMismatchError`);
2. redelivery: `offset <= last_offset` returns the state as it is, no commands, no audit;
3. identity filters: a seen signal id or report is a duplicate; a stale snapshot, a stale
   or not-yet-due deadline and a report for another order or position are ignored;
4. the table: `(from_status, trigger)` gives the next status or a named no-op;
5. the effect of the transition builds the new position and the commands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Context, Decimal
from types import MappingProxyType
from typing import TypeVar

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
from streams.domain.exceptions import InvalidValueError, KeyMismatchError, TransitionTableError
from streams.domain.ids import (
    client_order_id,
    command_id,
    key_for,
    key_of_position_id,
    position_id,
    report_key,
    role_of_client_order_id,
)
from streams.domain.model import (
    AppliedInput,
    AuditDecision,
    Deadline,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    InputKind,
    InputPayload,
    KeyState,
    OrderRef,
    OrderRole,
    Policy,
    Position,
    PositionSource,
    ReportOutcome,
    SeenSignal,
    Side,
    Signal,
    SignalAction,
    Status,
)
from streams.domain.transitions import (
    CANCEL_CONFIRMED_BY,
    ENTRY_STATUSES,
    HELD_WHILE_ORDERS_TO_CANCEL,
    RELEASED_ONCE_CANCELS_CONFIRMED,
    NoOp,
    Trigger,
    next_step,
    report_trigger,
    table_status,
)

__all__ = ["decide", "stop_loss_price"]

# A fixed context, so the result never depends on the caller's thread-local decimal context.
_ARITHMETIC = Context(prec=28, rounding=ROUND_HALF_EVEN)
_HUNDRED = Decimal(100)
_P = TypeVar("_P", Signal, ExchangeSnapshot, ExecutionReport, Deadline)
_UNFILLED_CLOSE_OUTCOMES = (ReportOutcome.REJECTED, ReportOutcome.CANCELED, ReportOutcome.NOT_FOUND)
# Answers after which an order can no longer rest at the exchange.
_FINAL_OUTCOMES = (ReportOutcome.FILLED, ReportOutcome.CANCELED, ReportOutcome.NOT_FOUND, ReportOutcome.REJECTED)
_STOP_STATUSES = (Status.PENDING_SL, Status.ACTIVE)


def decide(state: KeyState | None, applied: AppliedInput, policy: Policy) -> Decision:
    """Apply one input to the state of its key.

    `state` is None for a key nothing has been applied to yet. Never raises for a
    well-formed input of this key; raises `KeyMismatchError` when the input belongs to
    another key (a routing bug).
    """
    event = applied.event
    _check_routing(state, event)
    before = state if state is not None else KeyState.initial(event.key)
    if applied.offset <= before.last_offset:
        return Decision(state=before, commands=(), audit=None, position_changed=False)
    step = _Step(state=before, offset=applied.offset, event=event, policy=policy)
    return _conclude(step, _judge(step))


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


@dataclass(frozen=True, slots=True)
class _Step:
    """One input being decided, with everything the rules read."""

    state: KeyState
    offset: int
    event: InputEvent
    policy: Policy

    @property
    def now(self) -> int:
        return self.event.ts

    @property
    def key(self) -> str:
        return self.state.key

    @property
    def payload(self) -> InputPayload:
        return self.event.payload


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What the judgement of one input produced, before the new KeyState is assembled."""

    decision: AuditDecision
    reason: str
    position: Position | None
    commands: tuple[Command, ...] = ()
    remember_signal_id: str | None = None
    exchange_ts: int | None = None


@dataclass(frozen=True, slots=True)
class _Effect:
    """The new position and commands of a transition the table accepted."""

    position: Position
    commands: tuple[Command, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A transition the table accepts but the input cannot carry out (e.g. an open without side)."""

    decision: AuditDecision
    reason: str


def _unchanged(step: _Step, decision: AuditDecision, reason: str) -> _Verdict:
    return _Verdict(decision=decision, reason=reason, position=step.state.position)


def _check_routing(state: KeyState | None, event: InputEvent) -> None:
    if state is not None and state.key != event.key:
        raise KeyMismatchError(
            f"input {event.event_id} for key {event.key!r} was applied to the state of {state.key!r}"
        )
    payload_key = _payload_key(event.payload)
    if payload_key != event.key:
        raise KeyMismatchError(
            f"input {event.event_id} is keyed {event.key!r} but its payload belongs to {payload_key!r}"
        )


def _payload_key(payload: InputPayload) -> str:
    match payload:
        case Signal() | ExchangeSnapshot():
            return key_for(payload.symbol, payload.exchange)
        case ExecutionReport() | Deadline():
            return key_of_position_id(payload.position_id)
    raise InvalidValueError(f"not an input payload: {payload!r}")


def _input_kind(payload: InputPayload) -> InputKind:
    match payload:
        case Signal():
            return InputKind.SIGNAL
        case ExchangeSnapshot():
            return InputKind.SNAPSHOT
        case ExecutionReport():
            return InputKind.REPORT
    return InputKind.DEADLINE


def _conclude(step: _Step, verdict: _Verdict) -> Decision:
    """Assemble the new KeyState and the audit record: the only place a KeyState is built."""
    state = step.state
    seen_signals = state.seen_signals
    if verdict.remember_signal_id is not None:
        seen_signals = _remember_signal(step, verdict.remember_signal_id)
    exchange_ts = state.last_exchange_ts
    if verdict.exchange_ts is not None:
        exchange_ts = max(exchange_ts, verdict.exchange_ts)
    new_state = KeyState(
        key=state.key,
        last_offset=step.offset,
        seen_signals=seen_signals,
        position=verdict.position,
        last_exchange_ts=exchange_ts,
    )
    position_changed = verdict.position != state.position
    audited_id = _audited_position_id(step.payload, verdict.position, position_changed)
    client_order_id, order_role, order_outcome = _audited_order(step.payload, verdict.commands)
    audit = AuditRecord(
        key=state.key,
        offset=step.offset,
        event_id=step.event.event_id,
        position_id=audited_id,
        input_kind=_input_kind(step.payload),
        decision=verdict.decision,
        reason=verdict.reason,
        ts=step.now,
        status_after=(verdict.position.status
                      if verdict.position is not None and audited_id == verdict.position.id else None),
        client_order_id=client_order_id,
        order_role=order_role,
        order_outcome=order_outcome,
    )
    return Decision(
        state=new_state, commands=verdict.commands, audit=audit, position_changed=position_changed
    )


def _remember_signal(step: _Step, signal_id: str) -> tuple[SeenSignal, ...]:
    """The key's signal memory with `signal_id` added and ids past the retention dropped.

    Bounded by time, never by count: an id is kept at least `signal_id_retention_ms` after
    its first delivery, however many signals come in between. Only a signal's own time
    prunes, so another host's clock (a snapshot, a report) can never shorten the window.
    """
    horizon = step.now - step.policy.signal_id_retention_ms
    kept = tuple(seen for seen in step.state.seen_signals if seen.first_seen_at >= horizon)
    return (*kept, SeenSignal(signal_id=signal_id, first_seen_at=step.now))


def _audited_order(
    payload: InputPayload, commands: tuple[Command, ...]
) -> tuple[str | None, OrderRole | None, ReportOutcome | None]:
    """The order an input concerned: the one a report answers, else the first one the decision placed."""
    if isinstance(payload, ExecutionReport):
        return payload.client_order_id, payload.role, payload.outcome
    for command in commands:
        role = getattr(command, "role", None)
        if role is not None:
            return command.client_order_id, role, None
    return None, None, None


def _audited_position_id(
    payload: InputPayload, position: Position | None, position_changed: bool
) -> str | None:
    """The position an input concerned: the one a report or deadline names, else the key's."""
    if isinstance(payload, ExecutionReport | Deadline):
        return payload.position_id
    if position is not None and (position_changed or position.status.is_live):
        return position.id
    return None


# --- identity filters, then the table ------------------------------------------------------


def _judge(step: _Step) -> _Verdict:
    match step.payload:
        case Signal() as signal:
            return _judge_signal(step, signal)
        case ExchangeSnapshot() as snapshot:
            return _judge_snapshot(step, snapshot)
        case ExecutionReport() as report:
            return _judge_report(step, report)
        case Deadline() as deadline:
            return _judge_deadline(step, deadline)
    raise InvalidValueError(f"not an input payload: {step.payload!r}")


def _judge_signal(step: _Step, signal: Signal) -> _Verdict:
    if step.state.has_seen_signal(signal.signal_id):
        return _unchanged(step, AuditDecision.DUPLICATE, f"signal {signal.signal_id} already seen")
    trigger = Trigger.OPEN if signal.action is SignalAction.OPEN else Trigger.CLOSE
    return replace(_through_table(step, trigger), remember_signal_id=signal.signal_id)


def _judge_snapshot(step: _Step, snapshot: ExchangeSnapshot) -> _Verdict:
    if snapshot.fetched_at <= step.state.last_exchange_ts:
        return _unchanged(
            step,
            AuditDecision.IGNORED,
            f"stale snapshot: fetched at {snapshot.fetched_at}, "
            f"the exchange is already known as of {step.state.last_exchange_ts}",
        )
    return replace(
        _through_table(step, _snapshot_trigger(step.state.live_position, snapshot)),
        exchange_ts=snapshot.fetched_at,
    )


def _snapshot_trigger(position: Position | None, snapshot: ExchangeSnapshot) -> Trigger:
    if not snapshot.is_flat:
        if position is not None and position.status in _STOP_STATUSES and not _stop_covers(position, snapshot):
            return Trigger.SNAPSHOT_UNCOVERED
        return Trigger.SNAPSHOT_POSITION
    # No "flat before the deadline" case: it compared the poller's time with a deadline set
    # from other inputs' times, and flat means the same whenever it was fetched (an entry is
    # never rolled back on a flat snapshot; a stop-loss status closes).
    return Trigger.SNAPSHOT_FLAT


def _judge_report(step: _Step, report: ExecutionReport) -> _Verdict:
    position = step.state.position
    if position is None or report.position_id != position.id:
        current = position.id if position is not None else "none"
        verdict = _unchanged(
            step,
            AuditDecision.IGNORED,
            f"late report for position {report.position_id}; the key's position is {current}",
        )
        return replace(verdict, exchange_ts=report.ts)
    seen = report_key(report.client_order_id, report.outcome)
    if seen in position.seen_reports:
        return _unchanged(step, AuditDecision.DUPLICATE, f"report {seen} already applied")
    if position.status.is_terminal:
        verdict = _unchanged(
            step,
            AuditDecision.IGNORED,
            f"late report for ended position {position.id} ({position.status}): "
            f"{report.role} {report.outcome}",
        )
        return replace(verdict, exchange_ts=report.ts)
    order = position.order_for(report.role)
    is_current = order is not None and order.client_order_id == report.client_order_id
    # The current stop keeps the table's meaning (its fill closes the position); any other
    # order to cancel (a replaced stop, an entry seen resting) is bookkeeping only.
    current_stop = is_current and report.role is OrderRole.STOP_LOSS
    if not current_stop and _to_cancel(position, report.client_order_id) is not None:
        return replace(_judge_order_to_cancel(step, position, report, seen), exchange_ts=report.ts)
    if not is_current:
        awaited = order.client_order_id if order is not None else "none"
        verdict = _unchanged(
            step,
            AuditDecision.IGNORED,
            f"report for {report.role} order {report.client_order_id}, "
            f"but position {position.id} awaits {awaited}",
        )
        return replace(verdict, exchange_ts=report.ts)
    verdict = _through_table(step, report_trigger(report.role, _effective_outcome(report)), seen_report=seen)
    return replace(verdict, exchange_ts=report.ts)


def _effective_outcome(report: ExecutionReport) -> ReportOutcome:
    """A canceled (or expired) order that executed a quantity above zero is a (partial) fill.

    Binance ends a MARKET order EXPIRED when it fills only in part; what it executed is held.
    """
    if report.outcome is ReportOutcome.CANCELED and (report.filled_quantity or 0) > 0:
        return ReportOutcome.FILLED
    return report.outcome


def _to_cancel(position: Position, client_order_id: str) -> OrderRef | None:
    return next((o for o in position.orders_to_cancel if o.client_order_id == client_order_id), None)


def _judge_order_to_cancel(step: _Step, position: Position, report: ExecutionReport, seen: str) -> _Verdict:
    """A report about an order that must not stay open: remove it once the exchange proves it gone.

    Outside the status table: it is bookkeeping of one order, and the only status it can
    change is the one held for it (`HELD_WHILE_ORDERS_TO_CANCEL`).
    """
    if report.outcome not in CANCEL_CONFIRMED_BY:
        return _unchanged(
            step,
            AuditDecision.IGNORED,
            f"{report.role} order {report.client_order_id} of position {position.id} is still to cancel "
            f"({report.outcome}{_error_suffix(report)}); the deadline cancels it again",
        )
    remaining = tuple(o for o in position.orders_to_cancel if o.client_order_id != report.client_order_id)
    effect = _Effect(
        position=replace(position, orders_to_cancel=remaining),
        commands=(),
        notes=(f"{report.role} order {report.client_order_id} confirmed gone ({report.outcome})",),
    )
    after = _stamp(step, position, _held_or_released(effect), seen)
    return _Verdict(
        decision=AuditDecision.APPLIED,
        reason="; ".join((f"{position.status} -> {after.status} on order_to_cancel_{report.outcome}",
                          *effect.notes)),
        position=after,
    )


def _judge_deadline(step: _Step, deadline: Deadline) -> _Verdict:
    position = step.state.live_position
    if (
        position is None
        or position.id != deadline.position_id
        or position.status is not deadline.status
        or position.deadline_at is None
    ):
        now_is = f"{position.id} {position.status}" if position is not None else "free"
        return _unchanged(
            step,
            AuditDecision.IGNORED,
            f"stale deadline for {deadline.position_id} {deadline.status}; the key is now {now_is}",
        )
    # The input's own time (the log's), not the timer's host clock: the deadline was set from
    # input times too, so a worker whose clock runs ahead fires early and is told "not due".
    if position.deadline_at > step.now:
        return _unchanged(
            step,
            AuditDecision.IGNORED,
            f"deadline not due: position {position.id} is due at {position.deadline_at}, "
            f"the deadline input came at {step.now}",
        )
    return _through_table(step, Trigger.DEADLINE)


def _through_table(step: _Step, trigger: Trigger, *, seen_report: str | None = None) -> _Verdict:
    """Look the transition up first; build the new position only once the table accepts it."""
    position = step.state.live_position
    from_status = table_status(position.status if position is not None else None)
    target = next_step(
        from_status, trigger, close_requested=position is not None and position.close_requested
    )
    if isinstance(target, NoOp):
        reason = target.reason.format(
            position_id=position.id if position is not None else "none",
            status=position.status if position is not None else "free",
        )
        return _unchanged(step, target.decision, reason)
    if position is None:
        effect = _EFFECTS_ON_FREE_KEY[trigger](step, target)
    else:
        effect = _EFFECTS_ON_POSITION[trigger](step, position, target)
    if isinstance(effect, _Refusal):
        return _unchanged(step, effect.decision, effect.reason)
    effect = _held_or_released(effect)
    after = _stamp(step, position, effect, seen_report)
    changed = after != position
    transition = f"{from_status or 'free'} -> {after.status} on {trigger}"
    return _Verdict(
        decision=AuditDecision.APPLIED if changed or effect.commands else AuditDecision.IGNORED,
        reason="; ".join((transition, *effect.notes)),
        position=after,
        commands=effect.commands,
    )


def _held_or_released(effect: _Effect) -> _Effect:
    """Hold `active`/`closed` while an order awaits its cancel; release once none does.

    The mappings are data (`transitions.HELD_WHILE_ORDERS_TO_CANCEL`,
    `RELEASED_ONCE_CANCELS_CONFIRMED`); a release also needs its fact: the current stop
    accepted (to become active), the exchange flat (to become closed).
    """
    position = effect.position
    if position.orders_to_cancel:
        held = HELD_WHILE_ORDERS_TO_CANCEL.get(position.status)
        if held is None:
            return effect
        names = ", ".join(o.client_order_id for o in position.orders_to_cancel)
        return _Effect(replace(position, status=held), effect.commands,
                       (*effect.notes, f"held {held} (not {position.status}) until {names} is confirmed canceled"))
    released = RELEASED_ONCE_CANCELS_CONFIRMED.get(position.status)
    ready = (released is Status.ACTIVE and _current_stop_accepted(position)) or (
        released is Status.CLOSED and position.closed_at_exchange)
    if released is None or not ready:
        return effect
    return _Effect(replace(position, status=released), effect.commands,
                   (*effect.notes, f"every order to cancel is confirmed gone: {released}"))


def _stamp(step: _Step, before: Position | None, effect: _Effect, seen_report: str | None) -> Position:
    """Set what every transition sets: deadline, end time, seen report, version.

    The deadline is (re)armed when the status changes or an order is commanded, so a
    snapshot that merely agrees never postpones it; it is cleared outside in-flight statuses.
    """
    after = effect.position
    status_changed = before is None or before.status is not after.status
    timeout = step.policy.timeout_for(after.status)
    if timeout is None:
        deadline_at = None
    elif status_changed or effect.commands:
        deadline_at = step.now + timeout
    else:
        deadline_at = after.deadline_at
    ended_now = after.status.is_terminal and (before is None or not before.status.is_terminal)
    stamped = replace(
        after,
        deadline_at=deadline_at,
        closed_at=step.now if ended_now else after.closed_at,
        seen_reports=after.seen_reports if seen_report is None else (*after.seen_reports, seen_report),
    )
    if before is not None and stamped == before:
        return before
    return replace(stamped, updated_at=step.now, version=step.offset)


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
    protected = replace(position, status=target, stop_order=order)
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
    closing = replace(_retire_resting_orders(position, except_id=gone), status=target, close_order=order)
    return _Effect(
        position=closing,
        commands=(*_cancels(step, closing), _close_position(step, closing, order)),
        notes=(*notes, f"close attempt {attempt} of {closing.quantity}"),
    )


def _may_rest(position: Position, order: OrderRef) -> bool:
    """False once an answer proved the order filled, canceled, refused or never there."""
    return not any(report_key(order.client_order_id, outcome) in position.seen_reports for outcome in _FINAL_OUTCOMES)


def _current_stop_accepted(position: Position) -> bool:
    stop = position.stop_order
    return stop is not None and report_key(stop.client_order_id, ReportOutcome.ACCEPTED) in position.seen_reports


def _retire_resting_orders(position: Position, *, except_id: str | None = None) -> Position:
    """The position with its orders that may still rest (its stop, an entry seen resting) to cancel.

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
    return replace(position, orders_to_cancel=tuple(to_cancel))


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
    return _Effect(position=replace(position, status=target), commands=(), notes=(note,))


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
    elif pct is not None and not 0 < pct < 100:
        problem = f"stop_loss_pct {pct} is not in (0, 100)"
    else:
        return _open_with(step, signal, side, quantity, target)
    return _Refusal(AuditDecision.REFUSED, f"open signal {signal.signal_id} refused: {problem}")


def _open_with(step: _Step, signal: Signal, side: Side, quantity: Decimal, target: Status) -> _Effect:
    new_id = position_id(step.key, step.offset)
    pct = signal.stop_loss_pct
    entry = _new_order(new_id, OrderRole.ENTRY, 1, side, quantity)
    opened = Position(
        id=new_id,
        symbol=signal.symbol,
        exchange=signal.exchange,
        side=side,
        quantity=quantity,
        requested_quantity=quantity,
        entry_price=None,
        stop_loss_pct=pct if pct is not None else step.policy.default_stop_loss_pct,
        stop_loss_price=None,
        status=target,
        source=PositionSource.SIGNAL,
        signal_id=signal.signal_id,
        opened_at=step.now,
        closed_at=None,
        updated_at=step.now,
        deadline_at=None,
        close_requested=False,
        entry_order=entry,
        stop_order=None,
        close_order=None,
        seen_reports=(),
        version=step.offset,
    )
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
    adopted = Position(
        id=new_id,
        symbol=snapshot.symbol,
        exchange=snapshot.exchange,
        side=snapshot.side,
        quantity=snapshot.quantity,
        requested_quantity=None,
        entry_price=snapshot.entry_price,
        stop_loss_pct=step.policy.default_stop_loss_pct,
        stop_loss_price=None,
        status=target,
        source=PositionSource.EXCHANGE,
        signal_id=None,
        opened_at=step.now,
        closed_at=None,
        updated_at=step.now,
        deadline_at=None,
        close_requested=False,
        entry_order=None,
        stop_order=None,
        close_order=None,
        seen_reports=(),
        version=step.offset,
    )
    note = (
        f"adopted {new_id} from the exchange: "
        f"{snapshot.side} {snapshot.quantity} at {snapshot.entry_price}"
    )
    return _protect(step, adopted, target, attempt=1, notes=(note,))


def _close_signal(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    if target in ENTRY_STATUSES:
        return _Effect(
            position=replace(position, close_requested=True),
            commands=(),
            notes=("close requested; the position closes as soon as its entry fill is known",),
        )
    return _start_closing(step, position, target, notes=("close signal",))


def _exchange_shows_position(step: _Step, position: Position, target: Status) -> _Effect | _Refusal:
    snapshot = _payload_as(step, ExchangeSnapshot)
    differences = _exchange_differences(position, snapshot)
    synced = replace(
        position,
        side=snapshot.side if snapshot.side is not None else position.side,
        quantity=snapshot.quantity,
        entry_price=snapshot.entry_price if snapshot.entry_price is not None else position.entry_price,
    )
    if position.status in ENTRY_STATUSES:
        notes = ("the exchange confirms the entry", *differences)
        if target is Status.CLOSING:
            notes = (*notes, "close was requested")
            return _start_closing(step, synced, target, notes=notes)
        return _protect(step, synced, target, attempt=1, notes=notes)
    return _Effect(
        position=replace(synced, status=target),
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
    synced = replace(
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
        return _Effect(position=replace(position, status=target, closed_at_exchange=True), commands=(),
                       notes=("exchange is flat: the close went through",))
    # Its stop may still rest at the exchange; a stop of a closed position must not.
    ended = replace(_retire_resting_orders(position), status=target, closed_at_exchange=True)
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
        return _Effect(position=replace(position, status=target), commands=_cancels(step, position),
                       notes=(f"{passed}; canceling again {names}",))
    if position.status is Status.CLOSING and _last_close_failed(position):
        return _start_closing(step, position, target, notes=(passed,))
    role = _role_in_flight(position.status)
    order = position.order_for(role)
    if order is None:
        return _Refusal(AuditDecision.IGNORED, f"position {position.id} has no {role} order to query")
    cancels = _cancels(step, position) if position.status is Status.CLOSING else ()
    return _Effect(
        position=replace(position, status=target),
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
    filled = replace(
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
    protected = replace(position, status=target, stop_loss_price=price)
    notes: tuple[str, ...] = (f"stop-loss resting at {price}",)
    if protected.orders_to_cancel:  # replaced stops go only now that the new one rests
        notes = (*notes, "canceling " + ", ".join(o.client_order_id for o in protected.orders_to_cancel))
    return _Effect(position=protected, commands=_cancels(step, protected), notes=notes)


def _stop_filled(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    ended = replace(_retire_resting_orders(position, except_id=report.client_order_id), status=target,
                    closed_at_exchange=True)
    # Closing: the others were canceled when it began (the deadline repeats them).
    commands = _cancels(step, ended) if position.status is not Status.CLOSING else ()
    return _Effect(position=ended, commands=commands, notes=(f"stop-loss filled at {report.average_price}",))


def _stop_cancel_confirmed(step: _Step, position: Position, target: Status) -> _Effect:
    report = _payload_as(step, ExecutionReport)
    remaining = tuple(o for o in position.orders_to_cancel if o.client_order_id != report.client_order_id)
    return _Effect(position=replace(position, status=target, orders_to_cancel=remaining), commands=(),
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
    return _Effect(position=replace(position, status=target, closed_at_exchange=True), commands=(),
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

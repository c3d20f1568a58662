"""The pure decision function of the position state machine (docs/state-machine.md).

`decide(state, applied, policy)` takes one input of one key and returns the key's next
state, the commands to send and exactly one audit record. It reads no clock (time comes
from the input), does no I/O and never mutates: every new value is a new one (a position
through `verdicts._replace_position`, `dataclasses.replace` compiled for its fields), built
only after the transition table has accepted the input.

Order of judgement for an input:
1. routing: an input of another key is a programmer error (`KeyMismatchError`);
2. redelivery: `offset <= last_offset` returns the state as it is, no commands, no audit;
3. identity filters: a seen signal id or report is a duplicate; a stale snapshot, a stale
   or not-yet-due deadline and a report for another order or position are ignored;
4. the table: `(from_status, trigger)` gives the next status or a named no-op;
5. the effect of the transition builds the new position and the commands.
"""

from __future__ import annotations

from streams.domain.commands import Command, Decision
from streams.domain.exceptions import InvalidValueError, KeyMismatchError
from streams.domain.ids import key_for, key_of_position_id, report_key
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
    LatestSnapshot,
    OrderRole,
    Policy,
    Position,
    ReportOutcome,
    SeenSignal,
    Signal,
    SignalAction,
    Status,
)
from streams.domain.transitions import (
    CANCEL_CONFIRMED_BY,
    HELD_WHILE_ORDERS_TO_CANCEL,
    RELEASED_ONCE_CANCELS_CONFIRMED,
    NoOp,
    Trigger,
    next_step,
    report_trigger,
    table_status,
)
from streams.domain.effects import (
    _EFFECTS_ON_FREE_KEY,
    _EFFECTS_ON_POSITION,
)
from streams.domain.verdicts import (
    _Effect,
    _Refusal,
    _STOP_STATUSES,
    _Step,
    _Verdict,
    _current_stop_accepted,
    _error_suffix,
    _new_audit_record,
    _new_decision,
    _new_key_state,
    _replace_position,
    _stop_covers,
    _to_cancel,
    _unchanged,
)

__all__ = ["decide"]


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
    step = _Step(before, applied.offset, event, policy, event.ts, before.key, event.payload)
    return _conclude(step, _judge(step))


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


_INPUT_KINDS = {
    Signal: InputKind.SIGNAL,
    ExchangeSnapshot: InputKind.SNAPSHOT,
    ExecutionReport: InputKind.REPORT,
    Deadline: InputKind.DEADLINE,
}


def _input_kind(payload: InputPayload) -> InputKind:
    kind = _INPUT_KINDS.get(type(payload))
    if kind is not None:
        return kind
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
    new_state = _new_key_state(
        key=state.key,
        last_offset=step.offset,
        seen_signals=seen_signals,
        position=verdict.position,
        last_exchange_ts=exchange_ts,
        latest_snapshot=_latest_snapshot(step),
    )
    # A verdict that changes nothing carries the state's own position (`_stamp`): identity says it.
    position_changed = verdict.position is not state.position
    audited_id = _audited_position_id(step.payload, verdict.position, position_changed)
    client_order_id, order_role, order_outcome = _audited_order(step.payload, verdict.commands)
    audit = _new_audit_record(
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
        refusal_code=verdict.refusal_code,
    )
    return _new_decision(
        state=new_state, commands=verdict.commands, audit=audit, position_changed=position_changed
    )


def _latest_snapshot(step: _Step) -> LatestSnapshot | None:
    """The key's newest snapshot once this input is applied: a snapshot fetched later replaces it.

    Kept whatever the verdict (a snapshot stale against a fill still carries the newest mark
    price): the pages read it, decisions never do.
    """
    kept = step.state.latest_snapshot
    snapshot = step.payload
    if not isinstance(snapshot, ExchangeSnapshot) or (kept is not None and snapshot.fetched_at <= kept.fetched_at):
        return kept
    return LatestSnapshot.of(snapshot, received_at=step.now)


def _remember_signal(step: _Step, signal_id: str) -> tuple[SeenSignal, ...]:
    """The key's signal memory with `signal_id` added and ids past the retention dropped.

    Bounded by time, never by count: an id is kept at least `signal_id_retention_ms` after
    its first delivery, however many signals come in between. Only a signal's own time
    prunes, so another host's clock (a snapshot, a report) can never shorten the window.
    """
    horizon = step.now - step.policy.signal_id_retention_ms
    kept = [seen for seen in step.state.seen_signals if seen.first_seen_at >= horizon]
    return (*kept, SeenSignal(signal_id, step.now))


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
    return _through_table(step, trigger, remember_signal_id=signal.signal_id)


def _judge_snapshot(step: _Step, snapshot: ExchangeSnapshot) -> _Verdict:
    if snapshot.fetched_at <= step.state.last_exchange_ts:
        return _unchanged(
            step,
            AuditDecision.IGNORED,
            f"stale snapshot: fetched at {snapshot.fetched_at}, "
            f"the exchange is already known as of {step.state.last_exchange_ts}",
        )
    return _through_table(step, _snapshot_trigger(step.state.live_position, snapshot),
                          exchange_ts=snapshot.fetched_at)


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
        return _ignored_report(step, report,
                               f"late report for position {report.position_id}; the key's position is {current}")
    seen = report_key(report.client_order_id, report.outcome)
    if seen in position.seen_reports:
        return _unchanged(step, AuditDecision.DUPLICATE, f"report {seen} already applied")
    if position.status.is_terminal:
        return _ignored_report(step, report, f"late report for ended position {position.id} ({position.status}): "
                                             f"{report.role} {report.outcome}")
    order = position.order_for(report.role)
    is_current = order is not None and order.client_order_id == report.client_order_id
    # The current stop keeps the table's meaning (its fill closes the position); any other
    # order to cancel (a replaced stop, an entry seen resting) is bookkeeping only.
    current_stop = is_current and report.role is OrderRole.STOP_LOSS
    if not current_stop and _to_cancel(position, report.client_order_id) is not None:
        return _judge_order_to_cancel(step, position, report, seen)._replace(exchange_ts=report.ts)
    if not is_current:
        awaited = order.client_order_id if order is not None else "none"
        return _ignored_report(step, report, f"report for {report.role} order {report.client_order_id}, "
                                             f"but position {position.id} awaits {awaited}")
    return _through_table(step, report_trigger(report.role, _effective_outcome(report)), seen_report=seen,
                          exchange_ts=report.ts)


def _ignored_report(step: _Step, report: ExecutionReport, reason: str) -> _Verdict:
    """The key's state unchanged but for the exchange's time the report brings."""
    return _unchanged(step, AuditDecision.IGNORED, reason, exchange_ts=report.ts)


def _effective_outcome(report: ExecutionReport) -> ReportOutcome:
    """A canceled (or expired) order that executed a quantity above zero is a (partial) fill.

    Binance ends a MARKET order EXPIRED when it fills only in part; what it executed is held.
    """
    if report.outcome is ReportOutcome.CANCELED and (report.filled_quantity or 0) > 0:
        return ReportOutcome.FILLED
    return report.outcome


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
        position=_replace_position(position, orders_to_cancel=remaining),
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


def _through_table(step: _Step, trigger: Trigger, *, seen_report: str | None = None,
                   remember_signal_id: str | None = None, exchange_ts: int | None = None) -> _Verdict:
    """Look the transition up first; build the new position only once the table accepts it.

    `remember_signal_id` and `exchange_ts` go into the verdict whatever the table says.
    """
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
        return _unchanged(step, target.decision, reason, target.code, remember_signal_id=remember_signal_id,
                          exchange_ts=exchange_ts)
    if position is None:
        effect = _EFFECTS_ON_FREE_KEY[trigger](step, target)
    else:
        effect = _EFFECTS_ON_POSITION[trigger](step, position, target)
    if isinstance(effect, _Refusal):
        return _unchanged(step, effect.decision, effect.reason, effect.code, remember_signal_id=remember_signal_id,
                          exchange_ts=exchange_ts)
    effect = _held_or_released(effect)
    after = _stamp(step, position, effect, seen_report)
    changed = after is not position  # `_stamp` gives the position itself back when nothing changed
    transition = f"{from_status or 'free'} -> {after.status} on {trigger}"
    return _Verdict(
        decision=AuditDecision.APPLIED if changed or effect.commands else AuditDecision.IGNORED,
        reason="; ".join((transition, *effect.notes)),
        position=after,
        commands=effect.commands,
        remember_signal_id=remember_signal_id,
        exchange_ts=exchange_ts,
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
        return _Effect(_replace_position(position, status=held), effect.commands,
                       (*effect.notes, f"held {held} (not {position.status}) until {names} is confirmed canceled"))
    released = RELEASED_ONCE_CANCELS_CONFIRMED.get(position.status)
    ready = (released is Status.ACTIVE and _current_stop_accepted(position)) or (
        released is Status.CLOSED and position.closed_at_exchange)
    if released is None or not ready:
        return effect
    return _Effect(_replace_position(position, status=released), effect.commands,
                   (*effect.notes, f"every order to cancel is confirmed gone: {released}"))


def _stamp(step: _Step, before: Position | None, effect: _Effect, seen_report: str | None) -> Position:
    """Set what every transition sets: deadline, end time, seen report, version.

    The deadline is (re)armed when the status changes or an order is commanded, so a
    snapshot that merely agrees never postpones it; it is cleared outside in-flight statuses.
    Returns `before` itself when the stamped position would equal it, else a value that differs
    from it: callers compare by identity.
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
    closed_at = step.now if ended_now else after.closed_at
    # Effects never set these stamps themselves, so the stamped position equals `before` exactly
    # when the effect's does and the stamps stay as they were: then `before` itself, no new value.
    if (before is not None and seen_report is None and deadline_at == after.deadline_at
            and closed_at == after.closed_at and (after is before or after == before)):
        return before
    return _replace_position(
        after,
        deadline_at=deadline_at,
        closed_at=closed_at,
        seen_reports=after.seen_reports if seen_report is None else (*after.seen_reports, seen_report),
        updated_at=step.now,
        version=step.offset,
    )

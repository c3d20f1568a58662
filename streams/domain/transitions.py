"""The position transition table, as data.

`decide` derives one `Trigger` from each input (plus the facts of the current position,
as NautilusTrader derives `OrderFilled` vs `OrderPartiallyFilled`), looks the pair
`(from_status, trigger)` up here, and only then builds new values. `FREE` (None) stands for
"no position, or only an ended one": a terminal status behaves exactly like a free key.

Every pair of `FROM_STATUSES x Trigger` is in exactly one of two tables:
- `TRANSITIONS` maps it to the next status (possibly the same one, with an effect such as
  a re-placed order or a moved deadline);
- `NO_OPS` names it as an explicit refusal or no-op, with the audit decision and reason.
`WHEN_CLOSE_REQUESTED` overrides a few rows of either while a close waits for the entry's fill.
`HELD_WHILE_ORDERS_TO_CANCEL` and `RELEASED_ONCE_CANCELS_CONFIRMED` say which status a
position holds instead of `active` or `closed` while one of its orders (a replaced stop, the
stop of a position that ends) awaits the exchange's confirmation that it is gone, and which
status it takes once the last is confirmed; `CANCEL_CONFIRMED_BY` names the answers that
confirm it.
`tests/unit/domain/test_transitions.py` proves the tables total, disjoint and free of dead ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from streams.domain.exceptions import TransitionTableError
from streams.domain.model import AuditDecision, OrderRole, RefusalCode, ReportOutcome, Status

__all__ = [
    "CANCEL_CONFIRMED_BY",
    "ENTRY_STATUSES",
    "FREE",
    "FROM_STATUSES",
    "HELD_WHILE_ORDERS_TO_CANCEL",
    "IN_FLIGHT_STATUSES",
    "LIVE_STATUSES",
    "NO_OPS",
    "NoOp",
    "RELEASED_ONCE_CANCELS_CONFIRMED",
    "REPORT_TRIGGERS",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "Trigger",
    "WHEN_CLOSE_REQUESTED",
    "in_flight_statuses",
    "next_step",
    "report_trigger",
    "table_status",
    "terminal_statuses",
]


class Trigger(StrEnum):
    """What happened, as far as the state machine cares."""

    OPEN = "open"
    CLOSE = "close"

    ENTRY_ACCEPTED = "entry_accepted"
    ENTRY_FILLED = "entry_filled"
    ENTRY_REJECTED = "entry_rejected"
    ENTRY_CANCELED = "entry_canceled"
    ENTRY_NOT_FOUND = "entry_not_found"
    ENTRY_UNKNOWN = "entry_unknown"

    SL_ACCEPTED = "sl_accepted"
    SL_FILLED = "sl_filled"
    SL_REJECTED = "sl_rejected"
    SL_CANCELED = "sl_canceled"
    SL_NOT_FOUND = "sl_not_found"
    SL_UNKNOWN = "sl_unknown"

    CLOSE_ACCEPTED = "close_accepted"
    CLOSE_FILLED = "close_filled"
    CLOSE_REJECTED = "close_rejected"
    CLOSE_CANCELED = "close_canceled"
    CLOSE_NOT_FOUND = "close_not_found"
    CLOSE_UNKNOWN = "close_unknown"

    SNAPSHOT_POSITION = "snapshot_position"
    # The exchange holds more than the current stop-loss covers, or the other side.
    SNAPSHOT_UNCOVERED = "snapshot_uncovered"
    # The exchange shows no position for the symbol.
    SNAPSHOT_FLAT = "snapshot_flat"

    DEADLINE = "deadline"


FREE: None = None
"""The from-status of a key with no position, or only an ended one."""

TERMINAL_STATUSES: frozenset[Status] = frozenset(s for s in Status if s.is_terminal)
IN_FLIGHT_STATUSES: frozenset[Status] = frozenset(s for s in Status if s.is_in_flight)
LIVE_STATUSES: frozenset[Status] = frozenset(s for s in Status if s.is_live)
ENTRY_STATUSES: frozenset[Status] = frozenset({Status.PENDING_ENTRY, Status.ENTRY_PLACED})
FROM_STATUSES: tuple[Status | None, ...] = (FREE, *(s for s in Status if s.is_live))
"""Every from-status the table has rows for; terminal statuses are looked up as FREE."""

_ROLE_PREFIX = {OrderRole.ENTRY: "entry", OrderRole.STOP_LOSS: "sl", OrderRole.CLOSE: "close"}

REPORT_TRIGGERS: Mapping[tuple[OrderRole, ReportOutcome], Trigger] = MappingProxyType(
    {
        (role, outcome): Trigger(f"{_ROLE_PREFIX[role]}_{outcome.value}")
        for role in OrderRole
        for outcome in ReportOutcome
    }
)


def report_trigger(role: OrderRole, outcome: ReportOutcome) -> Trigger:
    """The trigger of an execution report: role prefix + outcome (`sl_not_found`)."""
    return REPORT_TRIGGERS[(role, outcome)]


def terminal_statuses() -> frozenset[Status]:
    """`closed` and `rolled_back`: the position has ended, the key is free."""
    return TERMINAL_STATUSES


def in_flight_statuses() -> frozenset[Status]:
    """The statuses that wait for an order's answer and so carry a deadline."""
    return IN_FLIGHT_STATUSES


def table_status(status: Status | None) -> Status | None:
    """The from-status to look a position's status up with: terminal statuses are FREE."""
    if status is None or status.is_terminal:
        return FREE
    return status


_PE, _EP = Status.PENDING_ENTRY, Status.ENTRY_PLACED
_SL, _ACT, _CLG = Status.PENDING_SL, Status.ACTIVE, Status.CLOSING
_CLD, _RB = Status.CLOSED, Status.ROLLED_BACK
_T = Trigger

TRANSITIONS: Mapping[tuple[Status | None, Trigger], Status] = MappingProxyType(
    {
        # A free key: a signal opens, a snapshot adopts.
        (FREE, _T.OPEN): _PE,  # PlaceEntry; id from this offset
        (FREE, _T.SNAPSHOT_POSITION): _SL,  # adopted: PlaceStopLoss at the default pct
        # Entry in flight.
        (_PE, _T.ENTRY_ACCEPTED): _EP,
        (_PE, _T.ENTRY_FILLED): _SL,  # PlaceStopLoss from the fill
        (_EP, _T.ENTRY_FILLED): _SL,
        (_PE, _T.SNAPSHOT_POSITION): _SL,  # the confirmation of this open; exchange quantity wins
        (_EP, _T.SNAPSHOT_POSITION): _SL,
        (_PE, _T.ENTRY_REJECTED): _RB,
        (_EP, _T.ENTRY_REJECTED): _RB,
        (_PE, _T.ENTRY_CANCELED): _RB,  # ended without a fill, like a rejection
        (_EP, _T.ENTRY_CANCELED): _RB,
        # not_found is the executor's verdict after a lookup no earlier attempt can outrun
        # (its recvWindow has passed and the id is fenced): the entry never happened.
        (_PE, _T.ENTRY_NOT_FOUND): _RB,
        (_EP, _T.ENTRY_NOT_FOUND): _RB,
        (_PE, _T.CLOSE): _PE,  # close_requested: closed as soon as the fill is known
        (_EP, _T.CLOSE): _EP,
        (_PE, _T.DEADLINE): _PE,  # QueryOrder(entry), deadline moved
        (_EP, _T.DEADLINE): _EP,
        # Stop-loss in flight, or resting.
        (_SL, _T.SL_ACCEPTED): _ACT,  # stop price from the report
        (_SL, _T.SL_REJECTED): _CLG,  # emergency ClosePosition
        (_SL, _T.SL_NOT_FOUND): _SL,  # PlaceStopLoss, attempt + 1
        (_SL, _T.SL_CANCELED): _SL,  # PlaceStopLoss, attempt + 1
        (_ACT, _T.SL_CANCELED): _SL,  # the stop was removed outside: protect again
        (_SL, _T.SL_FILLED): _CLD,  # the stop closed the position
        (_ACT, _T.SL_FILLED): _CLD,
        (_CLG, _T.SL_FILLED): _CLD,
        (_CLG, _T.SL_CANCELED): _CLG,  # the stop's cancel confirmed; closed once the close is done
        (_CLG, _T.SL_NOT_FOUND): _CLG,
        (_SL, _T.DEADLINE): _SL,  # QueryOrder(stop), or CancelOrder of replaced stops; deadline moved
        # The exchange's view of an open position.
        (_SL, _T.SNAPSHOT_POSITION): _SL,  # side/quantity updated when they differ
        (_ACT, _T.SNAPSHOT_POSITION): _ACT,
        (_CLG, _T.SNAPSHOT_POSITION): _CLG,
        # The stop no longer covers what the exchange holds: a new stop for the exchange's
        # side and quantity (attempt + 1); the old one is canceled once the new one is accepted.
        (_SL, _T.SNAPSHOT_UNCOVERED): _SL,
        (_ACT, _T.SNAPSHOT_UNCOVERED): _SL,
        (_SL, _T.SNAPSHOT_FLAT): _CLD,  # stop hit or closed outside: CancelOrder(stop)
        (_ACT, _T.SNAPSHOT_FLAT): _CLD,
        (_CLG, _T.SNAPSHOT_FLAT): _CLD,
        # Closing.
        (_SL, _T.CLOSE): _CLG,  # CancelOrder(stop), ClosePosition
        (_ACT, _T.CLOSE): _CLG,
        (_CLG, _T.CLOSE_FILLED): _CLD,
        (_CLG, _T.CLOSE_REJECTED): _CLG,  # remembered; the deadline retries with attempt + 1
        (_CLG, _T.CLOSE_CANCELED): _CLG,
        (_CLG, _T.CLOSE_NOT_FOUND): _CLG,
        (_CLG, _T.DEADLINE): _CLG,  # ClosePosition attempt + 1 after a failure, else QueryOrder; cancels again
    }
)

HELD_WHILE_ORDERS_TO_CANCEL: Mapping[Status, Status] = MappingProxyType(
    {
        # Not `active` while a replaced stop may still rest beside the new one: the contract's
        # `active` is "protected by its stop", and the cleanup needs a deadline.
        _ACT: _SL,
        # Not ended while one of its orders may still rest at the exchange.
        _CLD: _CLG,
    }
)
"""The status a position holds instead, while its `orders_to_cancel` is not empty."""

RELEASED_ONCE_CANCELS_CONFIRMED: Mapping[Status, Status] = MappingProxyType(
    {
        _SL: _ACT,  # ... when its current stop-loss is accepted
        _CLG: _CLD,  # ... when the exchange no longer holds the position (`closed_at_exchange`)
    }
)
"""The status a held position takes once its last order to cancel is confirmed gone."""

CANCEL_CONFIRMED_BY: frozenset[ReportOutcome] = frozenset(
    {ReportOutcome.CANCELED, ReportOutcome.NOT_FOUND, ReportOutcome.FILLED}
)
"""Answers that prove an order to cancel is gone: canceled, never there, or triggered.

A rejected or unknown cancel proves nothing: the deadline cancels again.
"""

@dataclass(frozen=True, slots=True)
class NoOp:
    """A (status, trigger) pair that leaves the position as it is.

    `reason` may name `{position_id}` and `{status}` of the current position.
    """

    decision: AuditDecision
    reason: str
    #: For a refusal, its stable code (metrics and pages use it; the reason is for people).
    code: RefusalCode | None = None


def _rows(
    statuses: Iterable[Status | None], triggers: Iterable[Trigger], decision: AuditDecision, reason: str,
    code: RefusalCode | None = None,
) -> dict[tuple[Status | None, Trigger], NoOp]:
    return {(status, trigger): NoOp(decision, reason, code) for status in statuses for trigger in triggers}


def _role_triggers(role: OrderRole, *outcomes: ReportOutcome) -> tuple[Trigger, ...]:
    return tuple(REPORT_TRIGGERS[(role, outcome)] for outcome in (outcomes or ReportOutcome))


_O = ReportOutcome
_REFUSED, _IGNORED = AuditDecision.REFUSED, AuditDecision.IGNORED
_LIVE = tuple(s for s in FROM_STATUSES if s is not FREE)
_ENTRY = (_PE, _EP)

NO_OPS: Mapping[tuple[Status | None, Trigger], NoOp] = MappingProxyType(
    {
        # Signals that cannot be carried out.
        **_rows(_LIVE, [_T.OPEN], _REFUSED, "position {position_id} already {status}", RefusalCode.ALREADY_OPEN),
        **_rows([FREE], [_T.CLOSE], _REFUSED, "no open position to close", RefusalCode.NOTHING_TO_CLOSE),
        **_rows([_CLG], [_T.CLOSE], _REFUSED, "position {position_id} already closing",
                RefusalCode.ALREADY_CLOSING),
        # Snapshots that change nothing.
        **_rows(
            [FREE], [_T.SNAPSHOT_FLAT], _IGNORED,
            "exchange is flat and no position is open",
        ),
        # Rollback only on evidence: a flat exchange does not tell what became of the entry
        # order (its answer may be lost, an attempt may still arrive); the deadline asks.
        **_rows(
            _ENTRY, [_T.SNAPSHOT_FLAT], _IGNORED,
            "exchange flat but the entry order has no answer yet; the deadline queries it",
        ),
        # Derived only while a stop-loss exists (pending_sl, active).
        **_rows(
            [FREE, *_ENTRY, _CLG], [_T.SNAPSHOT_UNCOVERED], _IGNORED,
            "no stop-loss to compare the exchange's position with",
        ),
        # Deadlines where nothing waits.
        **_rows([FREE, _ACT], [_T.DEADLINE], _IGNORED, "no deadline is pending"),
        # Reports that need no action.
        **_rows([FREE], REPORT_TRIGGERS.values(), _IGNORED, "no position in flight for this report"),
        **_rows(
            _ENTRY, [_T.ENTRY_UNKNOWN], _IGNORED,
            "entry outcome unknown; the deadline queries the order",
        ),
        **_rows([_EP], [_T.ENTRY_ACCEPTED], _IGNORED, "entry already accepted"),
        **_rows(
            _ENTRY, _role_triggers(OrderRole.STOP_LOSS) + _role_triggers(OrderRole.CLOSE),
            _IGNORED, "no such order placed while the entry is in flight",
        ),
        **_rows(
            [_SL, _ACT, _CLG], _role_triggers(OrderRole.ENTRY), _IGNORED,
            "late entry report: position {position_id} is already {status}",
        ),
        **_rows(
            [_SL], [_T.SL_UNKNOWN], _IGNORED,
            "stop-loss outcome unknown; the deadline queries the order",
        ),
        **_rows(
            [_ACT],
            _role_triggers(OrderRole.STOP_LOSS, _O.ACCEPTED, _O.REJECTED, _O.NOT_FOUND, _O.UNKNOWN),
            _IGNORED, "stop-loss already accepted; a later answer about it is stale",
        ),
        **_rows(
            [_CLG],
            _role_triggers(OrderRole.STOP_LOSS, _O.ACCEPTED, _O.REJECTED, _O.UNKNOWN),
            _IGNORED, "position closing; its stop-loss is not confirmed canceled yet, the deadline cancels again",
        ),
        **_rows(
            [_SL, _ACT], _role_triggers(OrderRole.CLOSE), _IGNORED,
            "no close order placed for position {position_id}",
        ),
        **_rows([_CLG], [_T.CLOSE_ACCEPTED], _IGNORED, "close order accepted; waiting for its fill"),
        **_rows(
            [_CLG], [_T.CLOSE_UNKNOWN], _IGNORED,
            "close outcome unknown; the deadline queries the order",
        ),
    }
)


WHEN_CLOSE_REQUESTED: Mapping[tuple[Status | None, Trigger], Status | NoOp] = MappingProxyType(
    {
        # A close signal arrived while the entry was in flight: once the exchange confirms
        # the position, close it (ClosePosition) instead of protecting it (PlaceStopLoss).
        (_PE, _T.ENTRY_FILLED): _CLG,
        (_EP, _T.ENTRY_FILLED): _CLG,
        (_PE, _T.SNAPSHOT_POSITION): _CLG,
        (_EP, _T.SNAPSHOT_POSITION): _CLG,
        # ... and a second close signal has nothing left to ask for.
        (_PE, _T.CLOSE): NoOp(_REFUSED, "close already requested for position {position_id}",
                              RefusalCode.ALREADY_CLOSING),
        (_EP, _T.CLOSE): NoOp(_REFUSED, "close already requested for position {position_id}",
                              RefusalCode.ALREADY_CLOSING),
    }
)


def next_step(from_status: Status | None, trigger: Trigger, *, close_requested: bool) -> Status | NoOp:
    """Look a pair up: the next status, or the NoOp that names the refusal.

    `from_status` must already be a table status (see `table_status`). Raises
    `TransitionTableError` only when the tables miss the pair, which the tests rule out.
    """
    found = (_WHEN_CLOSE_REQUESTED_LOOKUP if close_requested else _LOOKUP).get((from_status, trigger))
    if found is None:
        raise TransitionTableError(f"the transition table has no row for {from_status} on {trigger}")
    return found


#: The tables merged for one lookup: `TRANSITIONS` and `NO_OPS` (disjoint, which the tests
#: prove), and the same with `WHEN_CLOSE_REQUESTED` over them.
_LOOKUP: dict[tuple[Status | None, Trigger], Status | NoOp] = {**NO_OPS, **TRANSITIONS}
_WHEN_CLOSE_REQUESTED_LOOKUP: dict[tuple[Status | None, Trigger], Status | NoOp] = {**_LOOKUP, **WHEN_CLOSE_REQUESTED}

"""The pure `decide`: every status x every input kind, one test per documented rule, and the
old bot's race scenarios A-D (shared/seed/README.md) replayed as pure inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext

import pytest

from streams.domain import (
    AuditDecision,
    CancelOrder,
    ClosePosition,
    Deadline,
    Decision,
    ExecutionReport,
    InputKind,
    InvalidValueError,
    KeyMismatchError,
    OrderRole,
    PlaceEntry,
    PlaceStopLoss,
    Policy,
    PositionSource,
    QueryOrder,
    ReportOutcome,
    SeenSignal,
    Side,
    Signal,
    Status,
    client_order_id,
    decide,
    stop_loss_price,
)
from tests.unit.domain.domain_builders import (
    ENTRY_PRICE,
    FEEDS_BY_STATUS,
    KEY,
    POLICY,
    QUANTITY,
    STEP_MS,
    Feed,
    applied,
    close_signal,
    feed_active,
    feed_closed,
    feed_closing,
    feed_entry_placed,
    feed_free,
    feed_pending_entry,
    feed_pending_sl,
    feed_rolled_back,
    open_signal,
    snapshot,
)

E, SL, C = OrderRole.ENTRY, OrderRole.STOP_LOSS, OrderRole.CLOSE
O = ReportOutcome

# --- the exhaustive table: every status x every input kind ---------------------------------

FREE, PE, EP, PSL, ACT, CLG, CLD, RB = FEEDS_BY_STATUS
ALL_COLUMNS = tuple(FEEDS_BY_STATUS)
ENTRY_COLUMNS = (PE, EP)
LIVE_COLUMNS = (PE, EP, PSL, ACT, CLG)
ENDED_COLUMNS = (CLD, RB)

SAME = "same"  # the position is left exactly as it was


@dataclass(frozen=True)
class Expect:
    """The expected outcome of one (status, input) cell."""

    status: Status | str
    decision: AuditDecision | None
    commands: tuple[tuple[type, OrderRole, int], ...] = ()


def becomes(status: Status, *commands: tuple[type, OrderRole, int]) -> Expect:
    return Expect(status=status, decision=AuditDecision.APPLIED, commands=commands)


def unchanged(decision: AuditDecision | None) -> Expect:
    return Expect(status=SAME, decision=decision)


REFUSED = unchanged(AuditDecision.REFUSED)
IGNORED = unchanged(AuditDecision.IGNORED)
DUPLICATE = unchanged(AuditDecision.DUPLICATE)
REDELIVERED = unchanged(None)
NOT_APPLICABLE = None  # the state has no such earlier input to repeat


def on(*columns: str, expect: Expect | None) -> dict[str, Expect | None]:
    return {column: expect for column in columns}


def everywhere(expect: Expect | None) -> dict[str, Expect | None]:
    return on(*ALL_COLUMNS, expect=expect)


def _ids(feed: Feed, role: OrderRole) -> tuple[str, str]:
    """Position and client ids a report or deadline of this state refers to."""
    assert feed.state is not None
    if feed.state.position is None:
        orphan = f"{KEY}/0"
        return orphan, client_order_id(orphan, role, 1)
    return feed.position.id, feed.client_id(role)


def _report_input(role: OrderRole, outcome: ReportOutcome) -> Callable[[Feed], Decision]:
    fields: dict[str, object] = {}
    if outcome is O.FILLED:
        fields = {"filled_quantity": QUANTITY, "average_price": ENTRY_PRICE}
    if role is SL and outcome is O.ACCEPTED:
        fields = {"stop_price": Decimal("9.8")}

    def send(feed: Feed) -> Decision:
        position_id, client_id = _ids(feed, role)
        return feed.report(role, outcome, position_id=position_id, client_id=client_id, **fields)

    return send


def _deadline_input(kind: str) -> Callable[[Feed], Decision]:
    def send(feed: Feed) -> Decision:
        assert feed.state is not None
        position = feed.state.position
        position_id = position.id if position is not None else f"{KEY}/0"
        status = position.status if position is not None else Status.PENDING_ENTRY
        due = position.deadline_at if position is not None and position.deadline_at is not None else None
        if kind == "stale":
            other = Status.PENDING_SL if status is not Status.PENDING_SL else Status.PENDING_ENTRY
            deadline_ts = feed.now + 1_000_000
            return feed.send(lambda ts: Deadline(position_id, other, deadline_ts, ts), at=deadline_ts)
        fire_at = feed.now + STEP_MS if due is None else (due if kind == "due" else due - 1)
        due_at = due if due is not None else fire_at
        return feed.send(lambda ts: Deadline(position_id, status, due_at, ts), at=fire_at)

    return send


def _flat_late(feed: Feed) -> Decision:
    position = feed.state.position if feed.state is not None else None
    at = position.deadline_at if position is not None and position.deadline_at is not None else None
    return feed.flat(at=at)


def _stale_snapshot(feed: Feed) -> Decision:
    assert feed.state is not None
    return feed.snapshot(fetched_at=feed.state.last_exchange_ts)


def _duplicate_signal(feed: Feed) -> Decision:
    first_signal = next(item.event.payload for item in feed.sent if isinstance(item.event.payload, Signal))
    return feed.resend(first_signal)


def _duplicate_report(feed: Feed) -> Decision:
    last_report = [item.event.payload for item in feed.sent if isinstance(item.event.payload, ExecutionReport)][-1]
    return feed.resend(last_report)


INPUTS: dict[str, Callable[[Feed], Decision]] = {
    "open": lambda feed: feed.open("sig-new-open"),
    "close": lambda feed: feed.close("sig-new-close"),
    **{f"report_{role}_{outcome}": _report_input(role, outcome) for role in OrderRole for outcome in ReportOutcome},
    "report_entry_canceled_after_a_partial_fill": lambda feed: feed.report(
        E, O.CANCELED, position_id=_ids(feed, E)[0], client_id=_ids(feed, E)[1], filled_quantity=Decimal("20"),
        average_price=ENTRY_PRICE),
    "snapshot_position": lambda feed: feed.snapshot(),
    "snapshot_grown": lambda feed: feed.snapshot(quantity=QUANTITY * 2),
    "snapshot_flat_before_deadline": lambda feed: feed.flat(),
    "snapshot_flat_at_deadline": _flat_late,
    "snapshot_stale": _stale_snapshot,
    "deadline_due": _deadline_input("due"),
    "deadline_not_due": _deadline_input("not_due"),
    "deadline_stale": _deadline_input("stale"),
    "duplicate_signal": _duplicate_signal,
    "duplicate_report": _duplicate_report,
    "redelivered_offset": lambda feed: feed.redeliver(feed.sent[-1].offset),
}

EXPECTED: dict[str, dict[str, Expect | None]] = {
    "open": {
        **on(FREE, *ENDED_COLUMNS, expect=becomes(Status.PENDING_ENTRY, (PlaceEntry, E, 1))),
        **on(*LIVE_COLUMNS, expect=REFUSED),
    },
    "close": {
        **on(FREE, CLG, *ENDED_COLUMNS, expect=REFUSED),
        PE: becomes(Status.PENDING_ENTRY),  # close_requested
        EP: becomes(Status.ENTRY_PLACED),
        **on(PSL, ACT, expect=becomes(Status.CLOSING, (CancelOrder, SL, 1), (ClosePosition, C, 1))),
    },
    # Entry reports.
    "report_entry_accepted": {
        **everywhere(IGNORED),
        PE: becomes(Status.ENTRY_PLACED),
        EP: DUPLICATE,
    },
    "report_entry_filled": {
        **everywhere(IGNORED),
        **on(*ENTRY_COLUMNS, expect=becomes(Status.PENDING_SL, (PlaceStopLoss, SL, 1))),
        **on(PSL, ACT, CLG, CLD, expect=DUPLICATE),
    },
    "report_entry_rejected": {
        **everywhere(IGNORED),
        **on(*ENTRY_COLUMNS, expect=becomes(Status.ROLLED_BACK)),
        RB: DUPLICATE,
    },
    "report_entry_canceled": {**everywhere(IGNORED), **on(*ENTRY_COLUMNS, expect=becomes(Status.ROLLED_BACK))},
    # Canceled or expired with an executed quantity above zero is a (partial) fill.
    "report_entry_canceled_after_a_partial_fill": {
        **everywhere(IGNORED),
        **on(*ENTRY_COLUMNS, expect=becomes(Status.PENDING_SL, (PlaceStopLoss, SL, 1))),
    },
    "report_entry_not_found": {**everywhere(IGNORED), **on(*ENTRY_COLUMNS, expect=becomes(Status.ROLLED_BACK))},
    "report_entry_unknown": everywhere(IGNORED),
    # Stop-loss reports.
    "report_stop_loss_accepted": {
        **everywhere(IGNORED),
        PSL: becomes(Status.ACTIVE),
        **on(ACT, CLG, CLD, expect=DUPLICATE),
    },
    "report_stop_loss_filled": {**everywhere(IGNORED), **on(PSL, ACT, CLG, expect=becomes(Status.CLOSED))},
    "report_stop_loss_rejected": {**everywhere(IGNORED), PSL: becomes(Status.CLOSING, (ClosePosition, C, 1))},
    "report_stop_loss_canceled": {
        **everywhere(IGNORED),
        **on(PSL, ACT, expect=becomes(Status.PENDING_SL, (PlaceStopLoss, SL, 2))),
        CLG: becomes(Status.CLOSING),  # its cancel confirmed; closed once the close fills
        CLD: DUPLICATE,  # the closed position's stop cancel was confirmed on the way
    },
    "report_stop_loss_not_found": {
        **everywhere(IGNORED),
        PSL: becomes(Status.PENDING_SL, (PlaceStopLoss, SL, 2)),
        CLG: becomes(Status.CLOSING),
    },
    "report_stop_loss_unknown": everywhere(IGNORED),
    # Close reports.
    "report_close_accepted": everywhere(IGNORED),
    # closing: held until its stop's cancel is confirmed (the feed's cancel is unanswered).
    "report_close_filled": {**everywhere(IGNORED), CLG: becomes(Status.CLOSING), CLD: DUPLICATE},
    "report_close_rejected": {**everywhere(IGNORED), CLG: becomes(Status.CLOSING)},
    "report_close_canceled": {**everywhere(IGNORED), CLG: becomes(Status.CLOSING)},
    "report_close_not_found": {**everywhere(IGNORED), CLG: becomes(Status.CLOSING)},
    "report_close_unknown": everywhere(IGNORED),
    # Snapshots (the position one agrees with the tracked position: BUY 61.8 at 10).
    "snapshot_position": {
        **on(FREE, *ENDED_COLUMNS, *ENTRY_COLUMNS, expect=becomes(Status.PENDING_SL, (PlaceStopLoss, SL, 1))),
        **on(PSL, ACT, CLG, expect=IGNORED),
    },
    # The exchange holds twice what the stop covers: a covering stop (attempt 2) first.
    "snapshot_grown": {
        **on(FREE, *ENDED_COLUMNS, *ENTRY_COLUMNS, expect=becomes(Status.PENDING_SL, (PlaceStopLoss, SL, 1))),
        **on(PSL, ACT, expect=becomes(Status.PENDING_SL, (PlaceStopLoss, SL, 2))),
        CLG: becomes(Status.CLOSING),
    },
    # Ending with the stop's cancel unconfirmed: held closing, never closed with an order open.
    "snapshot_flat_before_deadline": {
        **on(FREE, *ENTRY_COLUMNS, *ENDED_COLUMNS, expect=IGNORED),
        **on(PSL, ACT, expect=becomes(Status.CLOSING, (CancelOrder, SL, 1))),
        CLG: becomes(Status.CLOSING),
    },
    # Rollback only on evidence: a flat exchange past the entry deadline proves nothing.
    "snapshot_flat_at_deadline": {
        **on(FREE, *ENDED_COLUMNS, *ENTRY_COLUMNS, expect=IGNORED),
        **on(PSL, ACT, expect=becomes(Status.CLOSING, (CancelOrder, SL, 1))),
        CLG: becomes(Status.CLOSING),
    },
    "snapshot_stale": everywhere(IGNORED),
    # Deadlines.
    "deadline_due": {
        **on(FREE, ACT, *ENDED_COLUMNS, expect=IGNORED),
        PE: becomes(Status.PENDING_ENTRY, (QueryOrder, E, 1)),
        EP: becomes(Status.ENTRY_PLACED, (QueryOrder, E, 1)),
        PSL: becomes(Status.PENDING_SL, (QueryOrder, SL, 1)),
        CLG: becomes(Status.CLOSING, (CancelOrder, SL, 1), (QueryOrder, C, 1)),
    },
    "deadline_not_due": everywhere(IGNORED),
    "deadline_stale": everywhere(IGNORED),
    # Idempotence.
    "duplicate_signal": everywhere(DUPLICATE),
    "duplicate_report": {**everywhere(DUPLICATE), **on(FREE, PE, expect=NOT_APPLICABLE)},
    "redelivered_offset": everywhere(REDELIVERED),
}

CASES = [
    pytest.param(status, input_name, expect, id=f"{status}-{input_name}")
    for input_name, row in EXPECTED.items()
    for status, expect in row.items()
    if expect is not NOT_APPLICABLE
]


def test_expected_table_covers_every_status_and_every_input_kind():
    # Arrange
    every_input = set(INPUTS)

    # Act
    covered_inputs = set(EXPECTED)
    incomplete_rows = {name for name, row in EXPECTED.items() if set(row) != set(ALL_COLUMNS)}

    # Assert
    assert covered_inputs == every_input
    assert incomplete_rows == set()


@pytest.mark.parametrize(("status", "input_name", "expect"), CASES)
def test_decide_status_x_input_matches_expected_table(status: str, input_name: str, expect: Expect):
    # Arrange
    feed = FEEDS_BY_STATUS[status]()
    before = feed.state
    assert before is not None

    # Act
    decision = INPUTS[input_name](feed)

    # Assert
    if expect.decision is None:
        assert decision == Decision(state=before, commands=(), audit=None, position_changed=False)
        return
    assert decision.audit is not None
    assert decision.audit.decision == expect.decision, decision.audit.reason
    assert decision.state.last_offset == before.last_offset + 1
    assert decision.audit.offset == decision.state.last_offset
    assert decision.position_changed == (decision.state.position != before.position)
    position = decision.state.position
    if expect.status == SAME:
        assert position == before.position
    else:
        assert position is not None and position.status == expect.status
    expected_commands = [
        (kind, client_order_id(position.id, role, attempt)) for kind, role, attempt in expect.commands
    ] if position is not None else []
    assert [(type(command), command.client_order_id) for command in decision.commands] == expected_commands


# --- one test per rule of docs/state-machine.md --------------------------------------------


def test_decide_open_on_free_key_creates_position_with_id_from_offset():
    # Arrange
    feed = Feed()

    # Act
    decision = feed.open("sig-1", side=Side.SELL, quantity=Decimal("3"), stop_loss_pct=Decimal("2.5"))

    # Assert
    position = decision.state.position
    assert position is not None
    assert position.id == f"{KEY}/0"
    assert (position.side, position.quantity, position.requested_quantity) == (Side.SELL, Decimal("3"), Decimal("3"))
    assert (position.source, position.signal_id, position.stop_loss_pct) == (
        PositionSource.SIGNAL, "sig-1", Decimal("2.5"),
    )
    assert position.deadline_at == feed.now + POLICY.entry_timeout_ms
    (entry,) = decision.commands
    assert entry == PlaceEntry(
        command_id=f"{KEY}/0/place_entry/{client_order_id(position.id, E, 1)}",
        key=KEY,
        position_id=position.id,
        symbol="APTUSDT",
        exchange="binance",
        client_order_id=client_order_id(position.id, E, 1),
        side=Side.SELL,
        quantity=Decimal("3"),
    )


def test_decide_open_without_stop_loss_pct_uses_policy_default():
    # Arrange
    feed = Feed()

    # Act
    decision = feed.open(stop_loss_pct=None)

    # Assert
    assert decision.state.position is not None
    assert decision.state.position.stop_loss_pct == POLICY.default_stop_loss_pct


def test_decide_state_none_is_a_fresh_key():
    # Arrange
    item = applied(0, open_signal("sig-1", 1000), 1000)

    # Act
    decision = decide(None, item, POLICY)

    # Assert
    assert decision.state.key == KEY
    assert decision.state.last_offset == 0
    assert decision.state.seen_signals == (SeenSignal("sig-1", 1000),)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"side": None}, "no side"),
        ({"quantity": None}, "no quantity"),
        ({"quantity": Decimal("0")}, "quantity 0 is not > 0"),
        ({"stop_loss_pct": Decimal("100")}, "stop_loss_pct 100 is not in (0, 100)"),
    ],
)
def test_decide_invalid_open_signal_is_refused_with_reason(fields: dict, problem: str):
    # Arrange
    feed = Feed()

    # Act
    decision = feed.open("sig-bad", **fields)

    # Assert
    assert decision.state.position is None
    assert decision.commands == ()
    assert decision.audit is not None
    assert decision.audit.decision == AuditDecision.REFUSED
    assert decision.audit.reason == f"open signal sig-bad refused: {problem}"


def test_decide_open_while_in_flight_is_refused_naming_the_position():
    # Arrange
    feed = feed_entry_placed()
    position = feed.position

    # Act
    decision = feed.open("sig-2")

    # Assert
    assert decision.audit is not None
    assert decision.audit.decision == AuditDecision.REFUSED
    assert decision.audit.reason == f"position {position.id} already entry_placed"
    assert decision.audit.position_id == position.id
    assert decision.state.position == position


def test_decide_duplicate_signal_id_has_no_effect():
    # Arrange
    feed = feed_rolled_back()  # the key is free again, so a new open would be accepted

    # Act
    decision = feed.open("sig-open")

    # Assert
    assert decision.audit is not None
    assert decision.audit.decision == AuditDecision.DUPLICATE
    assert decision.audit.reason == "signal sig-open already seen"
    assert decision.commands == ()


def test_decide_repeated_signal_id_after_hundreds_of_other_signals_is_still_a_duplicate():
    # Arrange: an open that rolled back (the key is free), then 300 other signals.
    feed = feed_rolled_back()
    for number in range(300):
        feed.close(f"sig-between-{number}")

    # Act
    decision = feed.open("sig-open")

    # Assert: no count bound: the 301st signal after it still knows the first.
    assert decision.audit is not None and decision.audit.decision == AuditDecision.DUPLICATE
    assert decision.commands == ()


def test_decide_repeated_signal_id_is_a_duplicate_until_the_retention_has_passed():
    # Arrange
    feed = feed_rolled_back()
    first_seen = feed.sent[0].event.ts
    retention = POLICY.signal_id_retention_ms

    # Act: another signal at the last instant of the window prunes nothing; the repeat
    # right after is still a duplicate.
    feed.send(lambda ts: close_signal("sig-late", ts), at=first_seen + retention)
    at_the_edge = feed.open("sig-open")

    # Assert
    assert at_the_edge.audit is not None and at_the_edge.audit.decision == AuditDecision.DUPLICATE
    assert retention >= 7 * 24 * 3600 * 1000


def test_decide_signal_ids_past_the_retention_are_dropped_by_the_next_signal():
    # Arrange
    feed = Feed()
    feed.close("sig-old")
    retention = POLICY.signal_id_retention_ms

    # Act: a snapshot from a clock far ahead does not prune; the next signal does.
    feed.snapshot(at=feed.now + 10 * retention)
    assert feed.state is not None and feed.state.has_seen_signal("sig-old")
    feed.close("sig-new")

    # Assert
    assert [seen.signal_id for seen in feed.state.seen_signals] == ["sig-new"]


def test_decide_redelivered_offset_returns_state_unchanged_without_audit():
    # Arrange
    feed = feed_pending_sl()
    before = feed.state

    # Act
    decision = feed.redeliver(0)

    # Assert
    assert decision == Decision(state=before, commands=(), audit=None, position_changed=False)


def test_decide_every_applied_input_advances_last_offset_and_writes_one_audit():
    # Arrange
    feed = Feed()

    # Act
    decisions = [feed.open(), feed.open("sig-2"), feed.flat(), feed.close("sig-3")]

    # Assert
    assert [d.state.last_offset for d in decisions] == [0, 1, 2, 3]
    assert [(d.audit.key, d.audit.offset) for d in decisions if d.audit] == [(KEY, n) for n in range(4)]
    assert [d.audit.input_kind for d in decisions if d.audit] == [
        InputKind.SIGNAL, InputKind.SIGNAL, InputKind.SNAPSHOT, InputKind.SIGNAL,
    ]


def test_decide_entry_accepted_moves_to_entry_placed_and_rearms_deadline():
    # Arrange
    feed = feed_pending_entry()

    # Act
    decision = feed.report(E, O.ACCEPTED)

    # Assert
    position = decision.state.position
    assert position is not None
    assert position.status == Status.ENTRY_PLACED
    assert position.deadline_at == feed.now + POLICY.entry_timeout_ms
    assert position.version == decision.state.last_offset


def test_decide_entry_fill_places_stop_loss_below_fill_price_for_buy():
    # Arrange
    feed = feed_pending_entry()

    # Act
    decision = feed.fill_entry(quantity=QUANTITY, price=Decimal("10"))

    # Assert
    position = decision.state.position
    assert position is not None
    assert (position.status, position.entry_price, position.deadline_at) == (
        Status.PENDING_SL, Decimal("10"), feed.now + POLICY.stop_loss_timeout_ms,
    )
    (stop,) = decision.commands
    assert isinstance(stop, PlaceStopLoss)
    assert (stop.side, stop.quantity, stop.stop_price) == (Side.SELL, QUANTITY, Decimal("9.8"))


def test_decide_stop_price_is_above_entry_for_sell():
    # Arrange
    entry_price, pct = Decimal("200"), Decimal("2.5")

    # Act
    buy, sell = stop_loss_price(Side.BUY, entry_price, pct), stop_loss_price(Side.SELL, entry_price, pct)

    # Assert
    assert (buy, sell) == (Decimal("195.000"), Decimal("205.000"))


def test_decide_stop_price_ignores_callers_decimal_context():
    # Arrange
    with localcontext() as context:
        context.prec = 2

        # Act
        price = stop_loss_price(Side.BUY, Decimal("12.345"), Decimal("2"))

    # Assert
    assert price == Decimal("12.0981")


def test_decide_entry_fill_quantity_differs_from_request_fill_wins_and_is_audited():
    # Arrange
    feed = feed_pending_entry()

    # Act
    decision = feed.fill_entry(quantity=Decimal("61.0"))

    # Assert
    assert decision.state.position is not None
    assert decision.state.position.quantity == Decimal("61.0")
    assert decision.audit is not None
    assert "filled quantity 61.0 differs from requested 61.8; the fill wins" in decision.audit.reason


def test_decide_snapshot_during_entry_confirms_it_and_exchange_quantity_wins():
    # Arrange
    feed = feed_entry_placed()
    position_id = feed.position.id

    # Act
    decision = feed.snapshot(quantity=Decimal("61.0"), entry_price=Decimal("10.01"))

    # Assert
    position = decision.state.position
    assert position is not None
    assert (position.id, position.status, position.quantity, position.entry_price) == (
        position_id, Status.PENDING_SL, Decimal("61.0"), Decimal("10.01"),
    )
    assert position.requested_quantity == QUANTITY
    assert decision.audit is not None
    assert "exchange quantity 61.0 differs from requested 61.8; exchange wins" in decision.audit.reason
    (stop,) = decision.commands
    assert isinstance(stop, PlaceStopLoss) and stop.quantity == Decimal("61.0")


def test_decide_snapshot_side_differs_exchange_wins_and_a_stop_on_the_other_side_replaces_the_old():
    # Arrange
    feed = feed_active()
    old_stop = feed.position.stop_order

    # Act
    decision = feed.snapshot(side=Side.SELL)

    # Assert: the wrong-side stop is replaced (attempt 2, BUY), canceled only once the new rests.
    position = decision.state.position
    assert position is not None and (position.side, position.status) == (Side.SELL, Status.PENDING_SL)
    assert decision.audit is not None
    assert decision.audit.decision == AuditDecision.APPLIED
    assert "exchange side SELL differs from BUY; exchange wins" in decision.audit.reason
    (stop,) = decision.commands
    assert isinstance(stop, PlaceStopLoss) and (stop.side, stop.quantity) == (Side.BUY, QUANTITY)
    assert stop.client_order_id == client_order_id(position.id, SL, 2)
    assert position.orders_to_cancel == (old_stop,)


def test_decide_entry_rejected_rolls_back_and_frees_the_key():
    # Arrange
    feed = feed_pending_entry()

    # Act
    decision = feed.report(E, O.REJECTED, error_code=-2019, error_message="Margin is insufficient.")

    # Assert
    position = decision.state.position
    assert position is not None
    assert (position.status, position.closed_at, position.deadline_at) == (Status.ROLLED_BACK, feed.now, None)
    assert decision.state.live_position is None
    assert decision.audit is not None
    assert "entry rejected (-2019 Margin is insufficient.)" in decision.audit.reason


def test_decide_flat_snapshot_before_entry_deadline_is_ignored_like_after_it():
    # Arrange: no clock is compared, so the poller's clock cannot change the decision
    feed = feed_entry_placed()

    # Act
    decision = feed.flat()

    # Assert
    assert decision.state.position == feed.decisions[-2].state.position
    assert decision.audit is not None
    assert decision.audit.reason == "exchange flat but the entry order has no answer yet; the deadline queries it"


def test_decide_flat_snapshot_past_entry_deadline_rolls_nothing_back_without_evidence():
    # Arrange: the entry's answer never came; the exchange shows nothing yet.
    feed = feed_pending_entry()
    deadline_at = feed.position.deadline_at
    assert deadline_at is not None

    # Act
    decision = feed.flat(at=deadline_at + 1)

    # Assert: rollback only on evidence; the deadline queries the order.
    assert decision.state.position == feed.decisions[-2].state.position
    assert decision.audit is not None and decision.audit.decision == AuditDecision.IGNORED
    assert decision.audit.reason == "exchange flat but the entry order has no answer yet; the deadline queries it"


def test_decide_entry_query_not_found_is_the_evidence_that_rolls_back():
    # Arrange
    feed = feed_pending_entry()
    feed.flat(at=feed.position.deadline_at)
    (query,) = feed.deadline().commands
    assert isinstance(query, QueryOrder) and query.role is E

    # Act
    decision = feed.report(E, O.NOT_FOUND)

    # Assert
    assert decision.state.position is not None and decision.state.position.status == Status.ROLLED_BACK


@pytest.mark.parametrize("executed", [Decimal("20"), Decimal("61.8")])
def test_decide_entry_canceled_with_executed_quantity_is_a_fill_the_position_holds_what_was_filled(executed):
    # Arrange: Binance ends a MARKET order short of liquidity EXPIRED with executedQty > 0.
    feed = feed_entry_placed()

    # Act
    decision = feed.report(E, O.CANCELED, filled_quantity=executed, average_price=ENTRY_PRICE)

    # Assert
    position = decision.state.position
    assert position is not None and (position.status, position.quantity) == (Status.PENDING_SL, executed)
    (stop,) = decision.commands
    assert isinstance(stop, PlaceStopLoss) and stop.quantity == executed


def test_decide_entry_canceled_with_nothing_executed_rolls_back():
    # Arrange
    feed = feed_entry_placed()

    # Act
    decision = feed.report(E, O.CANCELED, filled_quantity=Decimal("0"))

    # Assert
    assert decision.state.position is not None and decision.state.position.status == Status.ROLLED_BACK


def test_decide_stop_accepted_activates_with_the_reported_stop_price():
    # Arrange
    feed = feed_pending_sl()

    # Act
    decision = feed.report(SL, O.ACCEPTED, stop_price=Decimal("9.79"))

    # Assert
    position = decision.state.position
    assert position is not None
    assert (position.status, position.stop_loss_price, position.deadline_at) == (
        Status.ACTIVE, Decimal("9.79"), None,
    )


def test_decide_stop_rejected_closes_the_unprotected_position():
    # Arrange
    feed = feed_pending_sl()

    # Act
    decision = feed.report(SL, O.REJECTED, error_code=-2021, error_message="Order would immediately trigger.")

    # Assert
    position = decision.state.position
    assert position is not None and position.status == Status.CLOSING
    (close,) = decision.commands
    assert isinstance(close, ClosePosition)
    assert (close.side, close.quantity) == (Side.SELL, QUANTITY)


def test_decide_stop_not_found_places_a_new_attempt_with_a_new_client_id():
    # Arrange
    feed = feed_pending_sl()
    first_attempt = feed.client_id(SL)

    # Act
    decision = feed.report(SL, O.NOT_FOUND)

    # Assert
    (stop,) = decision.commands
    assert isinstance(stop, PlaceStopLoss)
    assert stop.client_order_id == client_order_id(feed.position.id, SL, 2) != first_attempt
    assert feed.position.stop_order is not None and feed.position.stop_order.attempt == 2


def test_decide_snapshot_quantity_change_while_active_updates_quantity_only():
    # Arrange
    feed = feed_active()
    feed.snapshot(quantity=Decimal("61.0"))  # no longer the requested quantity

    # Act
    decision = feed.snapshot(quantity=Decimal("30"))

    # Assert
    position = decision.state.position
    assert position is not None
    assert (position.status, position.quantity) == (Status.ACTIVE, Decimal("30"))
    assert decision.commands == ()
    assert decision.audit is not None
    assert "exchange quantity 30 differs from tracked 61.0; exchange wins" in decision.audit.reason


def test_decide_snapshot_agreeing_with_position_is_ignored_and_keeps_deadline():
    # Arrange
    feed = feed_pending_sl()
    before = feed.position

    # Act
    decision = feed.snapshot()

    # Assert
    assert decision.state.position == before
    assert decision.position_changed is False
    assert decision.audit is not None and decision.audit.decision == AuditDecision.IGNORED


def test_decide_flat_snapshot_while_active_cancels_the_stop_and_is_closed_once_the_cancel_is_confirmed():
    # Arrange
    feed = feed_active()
    stop_id = client_order_id(feed.position.id, SL, 1)

    # Act
    flat = feed.flat()
    confirmed = feed.report(SL, O.CANCELED)

    # Assert: held closing (with a deadline) while the stop may rest; closed once it is gone.
    held = flat.state.position
    assert held is not None and (held.status, held.closed_at_exchange) == (Status.CLOSING, True)
    assert held.deadline_at is not None and held.closed_at is None
    (cancel,) = flat.commands
    assert cancel == CancelOrder(
        command_id=f"{feed.position.id}/cancel_order/{stop_id}/{flat.audit.offset}",
        key=KEY,
        position_id=feed.position.id,
        symbol="APTUSDT",
        exchange="binance",
        client_order_id=stop_id,
        role=SL,
    )
    closed = confirmed.state.position
    assert closed is not None and (closed.status, closed.orders_to_cancel) == (Status.CLOSED, ())
    assert closed.closed_at == feed.now and confirmed.commands == ()


@pytest.mark.parametrize("answer", [O.UNKNOWN, O.REJECTED])
def test_decide_ended_position_whose_stop_cancel_is_not_confirmed_cancels_again_at_each_deadline(answer):
    # Arrange
    feed = feed_active()
    feed.flat()
    feed.report(SL, answer)

    # Act
    first = feed.deadline()
    second = feed.deadline()
    gone = feed.report(SL, O.NOT_FOUND)

    # Assert
    for decision in (first, second):
        (cancel,) = decision.commands
        assert isinstance(cancel, CancelOrder) and cancel.client_order_id == client_order_id(feed.position.id, SL, 1)
        assert decision.state.position is not None and decision.state.position.status == Status.CLOSING
    assert first.commands[0].command_id != second.commands[0].command_id
    assert gone.state.position is not None and gone.state.position.status == Status.CLOSED


def test_decide_close_signal_while_active_cancels_stop_then_closes_reduce_only():
    # Arrange
    feed = feed_active()

    # Act
    decision = feed.close()

    # Assert
    cancel, close = decision.commands
    assert isinstance(cancel, CancelOrder) and cancel.role == SL
    assert isinstance(close, ClosePosition)
    assert (close.side, close.quantity) == (Side.SELL, QUANTITY)
    assert feed.position.deadline_at == feed.now + POLICY.close_timeout_ms


def test_decide_close_during_entry_is_remembered_and_fill_closes_instead_of_protecting():
    # Arrange
    feed = feed_pending_entry()
    feed.close()
    assert feed.position.close_requested

    # Act
    decision = feed.fill_entry()

    # Assert
    assert decision.state.position is not None and decision.state.position.status == Status.CLOSING
    assert [type(command) for command in decision.commands] == [ClosePosition]


def test_decide_close_during_entry_then_snapshot_confirms_and_closes():
    # Arrange
    feed = feed_entry_placed()
    feed.close()

    # Act
    decision = feed.snapshot()

    # Assert: the entry was seen resting (accepted): it is canceled too, nothing stays open.
    assert decision.state.position is not None and decision.state.position.status == Status.CLOSING
    cancel, close = decision.commands
    assert isinstance(cancel, CancelOrder) and (cancel.role, cancel.client_order_id) == (E, feed.client_id(E))
    assert isinstance(close, ClosePosition)


def test_decide_second_close_during_entry_is_refused():
    # Arrange
    feed = feed_pending_entry()
    feed.close("sig-close-1")

    # Act
    decision = feed.close("sig-close-2")

    # Assert
    assert decision.audit is not None
    assert decision.audit.decision == AuditDecision.REFUSED
    assert decision.audit.reason == f"close already requested for position {feed.position.id}"


def test_decide_close_rejected_is_remembered_and_the_deadline_retries_with_attempt_two():
    # Arrange
    feed = feed_closing()
    feed.report(SL, O.CANCELED)
    feed.report(C, O.REJECTED, error_code=-2022, error_message="ReduceOnly Order is rejected.")

    # Act
    decision = feed.deadline()

    # Assert
    (retry,) = decision.commands
    assert isinstance(retry, ClosePosition)
    assert retry.client_order_id == client_order_id(feed.position.id, C, 2)
    assert feed.position.close_order is not None and feed.position.close_order.attempt == 2


def test_decide_closing_deadline_without_failure_queries_the_close_order():
    # Arrange
    feed = feed_closing()
    feed.report(SL, O.CANCELED)

    # Act
    decision = feed.deadline()

    # Assert
    (query,) = decision.commands
    assert isinstance(query, QueryOrder)
    assert (query.role, query.client_order_id) == (C, client_order_id(feed.position.id, C, 1))


def test_decide_closing_deadline_with_the_stop_cancel_unconfirmed_cancels_it_again_and_queries_the_close():
    # Arrange
    feed = feed_closing()

    # Act
    decision = feed.deadline()

    # Assert
    cancel, query = decision.commands
    assert isinstance(cancel, CancelOrder) and cancel.client_order_id == client_order_id(feed.position.id, SL, 1)
    assert isinstance(query, QueryOrder) and query.role is C


def test_decide_deadline_queries_again_with_distinct_command_ids_and_moves_the_deadline():
    # Arrange
    feed = feed_entry_placed()

    # Act
    first = feed.deadline()
    second = feed.deadline()

    # Assert
    (query_1,), (query_2,) = first.commands, second.commands
    assert query_1.client_order_id == query_2.client_order_id
    assert query_1.command_id != query_2.command_id
    assert feed.position.deadline_at == feed.now + POLICY.entry_timeout_ms


def test_decide_deadline_not_due_yet_is_ignored():
    # Arrange
    feed = feed_pending_sl()
    deadline_at = feed.position.deadline_at
    assert deadline_at is not None

    # Act
    decision = feed.deadline(at=deadline_at - 1)

    # Assert
    assert decision.commands == ()
    assert decision.audit is not None and decision.audit.reason.startswith("deadline not due")


def test_decide_deadline_for_an_earlier_status_is_stale():
    # Arrange
    feed = feed_pending_sl()

    # Act
    decision = feed.deadline(status=Status.PENDING_ENTRY, at=feed.now + 1_000_000)

    # Assert
    assert decision.commands == ()
    assert decision.audit is not None and decision.audit.reason.startswith("stale deadline")


def test_decide_stale_snapshot_is_ignored_with_reason():
    # Arrange
    feed = feed_closed()
    assert feed.state is not None
    last_exchange_ts = feed.state.last_exchange_ts

    # Act: a snapshot fetched before the close fill still shows the position
    decision = feed.snapshot(fetched_at=last_exchange_ts - 1)

    # Assert
    assert decision.state.position == feed.decisions[-2].state.position
    assert decision.audit is not None
    assert decision.audit.reason.startswith("stale snapshot")


def test_decide_snapshot_records_mark_price_and_pnl_as_the_latest_snapshot_without_changing_the_position():
    # Arrange
    feed = feed_active()
    position_before = feed.position

    # Act: the exchange agrees on the position and marks it above the entry
    fetched_at = feed.now + 5
    decision = feed.snapshot(fetched_at=fetched_at, mark_price=Decimal("3.3000"),
                             unrealized_pnl=Decimal("2.71998000"))

    # Assert: shown, never decided on
    latest = decision.state.latest_snapshot
    assert latest is not None
    assert (latest.fetched_at, latest.received_at) == (fetched_at, feed.now)
    assert (latest.side, latest.quantity, latest.entry_price) == (Side.BUY, QUANTITY, ENTRY_PRICE)
    assert (latest.mark_price, latest.unrealized_pnl) == (Decimal("3.3000"), Decimal("2.71998000"))
    assert decision.state.position == position_before
    assert decision.position_changed is False and decision.commands == ()


def test_decide_snapshot_fetched_earlier_than_the_latest_keeps_the_latest():
    # Arrange
    feed = feed_active()
    feed.snapshot(fetched_at=feed.now + 100, mark_price=Decimal("3.40"))

    # Act: a snapshot fetched before it arrives later in the log
    decision = feed.snapshot(fetched_at=feed.now - 50, mark_price=Decimal("3.10"))

    # Assert
    assert decision.state.latest_snapshot is not None
    assert decision.state.latest_snapshot.mark_price == Decimal("3.40")


def test_decide_inputs_other_than_snapshots_keep_the_latest_snapshot():
    # Arrange
    feed = feed_active()
    kept = feed.snapshot(mark_price=Decimal("3.30")).state.latest_snapshot

    # Act
    decision = feed.close()

    # Assert
    assert kept is not None and decision.state.latest_snapshot == kept


def test_decide_snapshot_stale_against_a_fill_still_brings_the_newest_mark_price():
    # Arrange
    feed = feed_active()
    feed.snapshot(fetched_at=feed.now - 200, mark_price=Decimal("3.00"))
    assert feed.state is not None
    last_exchange_ts = feed.state.last_exchange_ts

    # Act: fetched after the previous snapshot, before the newest report: stale for decisions
    decision = feed.snapshot(fetched_at=last_exchange_ts - 1, mark_price=Decimal("3.20"))

    # Assert
    assert decision.audit is not None and decision.audit.reason.startswith("stale snapshot")
    assert decision.state.latest_snapshot is not None
    assert decision.state.latest_snapshot.mark_price == Decimal("3.20")


def test_decide_reports_advance_last_exchange_ts():
    # Arrange
    feed = feed_pending_entry()

    # Act
    decision = feed.report(E, O.ACCEPTED)

    # Assert
    assert decision.state.last_exchange_ts == feed.now


def test_decide_late_report_still_advances_last_exchange_ts():
    # Arrange
    feed = feed_rolled_back()

    # Act
    decision = feed.report(E, O.FILLED, filled_quantity=QUANTITY, average_price=ENTRY_PRICE)

    # Assert
    assert decision.audit is not None and decision.audit.decision == AuditDecision.IGNORED
    assert decision.state.last_exchange_ts == feed.now


def test_decide_flat_snapshot_on_free_key_is_ignored_never_a_position():
    # Arrange
    feed = feed_free()

    # Act
    decision = feed.flat()

    # Assert
    assert decision.state.position is None
    assert decision.audit is not None and decision.audit.decision == AuditDecision.IGNORED


def test_decide_snapshot_on_free_key_adopts_with_default_stop():
    # Arrange
    feed = feed_free()

    # Act
    decision = feed.snapshot(side=Side.SELL, quantity=Decimal("5"), entry_price=Decimal("100"))

    # Assert
    position = decision.state.position
    assert position is not None
    assert (position.id, position.source, position.signal_id, position.requested_quantity) == (
        f"{KEY}/1", PositionSource.EXCHANGE, None, None,
    )
    (stop,) = decision.commands
    assert isinstance(stop, PlaceStopLoss)
    assert (stop.side, stop.quantity, stop.stop_price) == (Side.BUY, Decimal("5"), Decimal("102.00"))


def test_decide_snapshot_without_entry_price_is_not_adopted():
    # Arrange
    feed = feed_free()

    # Act
    decision = feed.snapshot(entry_price=None)

    # Assert
    assert decision.state.position is None
    assert decision.audit is not None and decision.audit.decision == AuditDecision.IGNORED


def test_decide_late_report_for_ended_position_is_ignored_and_recorded():
    # Arrange
    feed = feed_closed()

    # Act
    decision = feed.report(SL, O.NOT_FOUND)

    # Assert
    assert decision.commands == ()
    assert decision.audit is not None
    assert decision.audit.decision == AuditDecision.IGNORED
    assert decision.audit.reason.startswith(f"late report for ended position {feed.position.id} (closed)")
    assert decision.audit.position_id == feed.position.id


def test_decide_report_for_superseded_attempt_is_ignored():
    # Arrange
    feed = feed_pending_sl()
    first_attempt = feed.client_id(SL)
    feed.report(SL, O.NOT_FOUND)

    # Act
    decision = feed.report(SL, O.ACCEPTED, client_id=first_attempt)

    # Assert
    assert decision.state.position is not None and decision.state.position.status == Status.PENDING_SL
    assert decision.audit is not None and decision.audit.decision == AuditDecision.IGNORED


def test_decide_unknown_outcome_stays_in_flight_until_the_deadline_query():
    # Arrange
    feed = feed_pending_entry()

    # Act
    unknown = feed.report(E, O.UNKNOWN)
    query = feed.deadline()

    # Assert
    assert unknown.audit is not None and unknown.audit.decision == AuditDecision.IGNORED
    assert feed.position.status == Status.PENDING_ENTRY
    assert [type(command) for command in query.commands] == [QueryOrder]


def test_decide_input_of_another_key_raises_key_mismatch():
    # Arrange
    feed = feed_pending_entry()
    other = applied(5, open_signal("sig-x", 1, symbol="BTCUSDT"), 1, key="BTCUSDT@binance")

    # Act / Assert
    with pytest.raises(KeyMismatchError):
        decide(feed.state, other, POLICY)


def test_decide_payload_of_another_key_raises_key_mismatch():
    # Arrange
    misrouted = applied(0, close_signal("sig-x", 1, symbol="BTCUSDT"), 1)

    # Act / Assert
    with pytest.raises(KeyMismatchError):
        decide(None, misrouted, POLICY)


def test_values_refuse_float_money():
    # Arrange / Act / Assert
    with pytest.raises(InvalidValueError):
        snapshot(1, quantity=61.8)  # type: ignore[arg-type]


def test_policy_refuses_out_of_range_settings():
    # Arrange / Act / Assert
    with pytest.raises(InvalidValueError):
        Policy(Decimal("0"), 1, 1, 1, 1)


def test_decide_replaying_same_inputs_gives_same_states_commands_and_ids():
    # Arrange
    def run() -> list[Decision]:
        feed = feed_pending_sl()
        feed.report(SL, O.NOT_FOUND)
        feed.snapshot(quantity=Decimal("61.0"))
        feed.close()
        feed.deadline()
        return feed.decisions

    # Act
    first, second = run(), run()

    # Assert
    assert first == second


def test_decide_returns_new_values_and_state_values_are_frozen():
    # Arrange
    feed = feed_active()
    before = feed.state
    assert before is not None

    # Act
    feed.close()

    # Assert
    assert feed.state is not before
    assert before.position is not None and before.position.status == Status.ACTIVE
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.last_offset = 99  # type: ignore[misc]


# --- the old bot's race scenarios (shared/seed/README.md) ----------------------------------


def test_scenario_a_two_opens_at_once_second_is_refused():
    # Arrange
    feed = Feed()

    # Act
    first = feed.open("sig-1")
    second = feed.open("sig-2")

    # Assert
    assert [type(command) for command in first.commands] == [PlaceEntry]
    assert second.commands == ()
    assert second.audit is not None
    assert second.audit.decision == AuditDecision.REFUSED
    assert second.audit.reason == f"position {KEY}/0 already pending_entry"
    assert feed.position.id == f"{KEY}/0"


def test_scenario_b_snapshot_during_stop_loss_wait_one_position_exchange_quantity():
    # Arrange: open 61.8, the fill arrives, the stop-loss is on its way
    feed = Feed()
    feed.open("sig-2548", quantity=Decimal("61.8"))
    feed.fill_entry(quantity=Decimal("61.8"), price=Decimal("4.312"))
    position_id = feed.position.id

    # Act: the synchroniser's snapshot sees 61.0 on the exchange
    decision = feed.snapshot(quantity=Decimal("61.0"), entry_price=Decimal("4.312"))

    # Assert
    position = decision.state.position
    assert position is not None
    assert (position.id, position.status, position.quantity) == (position_id, Status.PENDING_SL, Decimal("61.0"))
    assert decision.commands == ()
    assert decision.audit is not None
    assert "exchange quantity 61.0 differs from requested 61.8; exchange wins" in decision.audit.reason
    stops = [c for d in feed.decisions for c in d.commands if isinstance(c, PlaceStopLoss)]
    assert len(stops) == 1


def test_scenario_b_snapshot_before_fill_confirms_and_fill_places_no_second_stop():
    # Arrange
    feed = Feed()
    feed.open("sig-2548", quantity=Decimal("61.8"))
    position_id = feed.position.id

    # Act: the snapshot comes first, the fill report second
    confirmed = feed.snapshot(quantity=Decimal("61.0"), entry_price=Decimal("4.312"))
    late_fill = feed.fill_entry(quantity=Decimal("61.8"), price=Decimal("4.312"))

    # Assert
    assert confirmed.audit is not None
    assert "exchange quantity 61.0 differs from requested 61.8; exchange wins" in confirmed.audit.reason
    assert late_fill.commands == ()
    assert late_fill.audit is not None and late_fill.audit.decision == AuditDecision.IGNORED
    position = feed.position
    assert (position.id, position.status, position.quantity) == (position_id, Status.PENDING_SL, Decimal("61.0"))
    stops = [c for d in feed.decisions for c in d.commands if isinstance(c, PlaceStopLoss)]
    assert len(stops) == 1


def test_scenario_c_rejected_entry_rolls_back_and_new_open_gets_new_position_id():
    # Arrange
    feed = feed_rolled_back()
    old_id = feed.position.id

    # Act
    decision = feed.open("sig-retry")

    # Assert
    position = decision.state.position
    assert position is not None
    assert position.status == Status.PENDING_ENTRY
    assert position.id != old_id
    assert position.id == f"{KEY}/{decision.state.last_offset}"
    (entry,) = decision.commands
    assert isinstance(entry, PlaceEntry) and entry.client_order_id != client_order_id(old_id, E, 1)
    # One state per key holds one position: the ended one is replaced, never kept beside it.
    assert decision.state.live_position is position


def test_scenario_d_stuck_entry_after_crash_deadline_query_not_found_rolls_back():
    # Arrange: the position was left in entry_placed when the old process died
    feed = feed_entry_placed()

    # Act
    query = feed.deadline()
    answer = feed.report(E, O.NOT_FOUND)

    # Assert
    assert [type(command) for command in query.commands] == [QueryOrder]
    assert answer.state.position is not None and answer.state.position.status == Status.ROLLED_BACK
    assert answer.state.live_position is None
    # and a new signal for the symbol opens a new position, never a second live one
    reopened = feed.open("sig-after-crash")
    assert reopened.state.position is not None and reopened.state.position.status == Status.PENDING_ENTRY


def test_scenario_d_stuck_entry_after_crash_snapshot_resolves_it():
    # Arrange
    feed = feed_entry_placed()

    # Act
    decision = feed.snapshot()

    # Assert
    assert decision.state.position is not None and decision.state.position.status == Status.PENDING_SL
    assert [type(command) for command in decision.commands] == [PlaceStopLoss]


# --- the audit record tells a position's story ---------------------------------------------


def test_audit_records_carry_the_status_after_and_the_order_each_input_concerned():
    # Arrange
    feed = Feed()

    # Act: open (an entry placed), a second open refused, the entry filled, a stale report for another position.
    opened = feed.open("sig-1")
    refused = feed.open("sig-2")
    filled = feed.fill_entry()
    stale = feed.report(OrderRole.ENTRY, ReportOutcome.FILLED, position_id=f"{KEY}/999", client_id="old",
                        filled_quantity=QUANTITY, average_price=ENTRY_PRICE)

    # Assert
    entry = opened.commands[0]
    assert (opened.audit.status_after, opened.audit.client_order_id, opened.audit.order_role,
            opened.audit.order_outcome) == (Status.PENDING_ENTRY, entry.client_order_id, OrderRole.ENTRY, None)
    assert (refused.audit.decision, refused.audit.position_id, refused.audit.status_after,
            refused.audit.client_order_id) == (AuditDecision.REFUSED, feed.position.id, Status.PENDING_ENTRY, None)
    assert (filled.audit.status_after, filled.audit.client_order_id, filled.audit.order_role,
            filled.audit.order_outcome) == (Status.PENDING_SL, entry.client_order_id, OrderRole.ENTRY,
                                            ReportOutcome.FILLED)
    assert (stale.audit.position_id, stale.audit.status_after, stale.audit.client_order_id) == (f"{KEY}/999", None, "old")

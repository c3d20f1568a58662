"""Proofs about the transition table itself, and that `decide` follows it."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from decimal import Decimal

import pytest

from streams.domain import (
    AuditDecision,
    Decision,
    OrderRole,
    ReportOutcome,
    Status,
    client_order_id,
)
from streams.domain.transitions import (
    CANCEL_CONFIRMED_BY,
    FREE,
    FROM_STATUSES,
    HELD_WHILE_ORDERS_TO_CANCEL,
    IN_FLIGHT_STATUSES,
    NO_OPS,
    RELEASED_ONCE_CANCELS_CONFIRMED,
    REPORT_TRIGGERS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    WHEN_CLOSE_REQUESTED,
    NoOp,
    Trigger,
    in_flight_statuses,
    next_step,
    table_status,
    terminal_statuses,
)
from tests.unit.domain.domain_builders import (
    ENTRY_PRICE,
    FEEDS_BY_STATUS,
    KEY,
    QUANTITY,
    Feed,
    feed_closed_awaiting_cancel,
    feed_entry_placed,
    feed_pending_entry,
    feed_replacing_stop,
)

ALL_PAIRS = list(itertools.product(FROM_STATUSES, Trigger))


def _edges() -> dict[Status | None, set[Status | None]]:
    """The table as a graph; an ended status continues as FREE (the key is free again)."""
    graph: dict[Status | None, set[Status | None]] = {status: set() for status in (FREE, *Status)}
    for (source, _trigger), target in itertools.chain(TRANSITIONS.items(), WHEN_CLOSE_REQUESTED.items()):
        if not isinstance(target, NoOp):
            graph[source].add(target)
    for status in TERMINAL_STATUSES:
        graph[status].add(table_status(status))
    return graph


def _reachable(start: Status | None) -> set[Status | None]:
    graph, seen, queue = _edges(), {start}, deque([start])
    while queue:
        for successor in graph[queue.popleft()]:
            if successor not in seen:
                seen.add(successor)
                queue.append(successor)
    return seen


def test_transitions_every_pair_is_a_transition_or_an_explicit_no_op():
    # Arrange
    pairs = set(ALL_PAIRS)

    # Act
    missing = pairs - set(TRANSITIONS) - set(NO_OPS)
    both = set(TRANSITIONS) & set(NO_OPS)
    foreign = (set(TRANSITIONS) | set(NO_OPS)) - pairs

    # Assert
    assert missing == set()
    assert both == set()
    assert foreign == set()


def test_transitions_close_requested_overrides_only_existing_rows():
    # Arrange / Act
    overridden = set(WHEN_CLOSE_REQUESTED)
    sources = {source for source, _ in WHEN_CLOSE_REQUESTED}
    targets = {target for target in WHEN_CLOSE_REQUESTED.values() if not isinstance(target, NoOp)}
    refused = {trigger for (_, trigger), target in WHEN_CLOSE_REQUESTED.items() if isinstance(target, NoOp)}

    # Assert
    assert overridden <= set(TRANSITIONS)
    assert sources == {Status.PENDING_ENTRY, Status.ENTRY_PLACED}
    assert targets == {Status.CLOSING}
    assert refused == {Trigger.CLOSE}


def test_transitions_every_status_is_reachable_from_free():
    # Arrange / Act
    reachable = _reachable(FREE)

    # Assert
    assert set(Status) <= reachable


@pytest.mark.parametrize("status", [s for s in Status if not s.is_terminal])
def test_transitions_non_terminal_status_can_reach_a_terminal_one(status: Status):
    # Arrange / Act
    reachable = _reachable(status)

    # Assert
    assert reachable & TERMINAL_STATUSES


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_transitions_terminal_status_leads_to_a_new_position(status: Status):
    # Arrange
    from_status = table_status(status)

    # Act
    opened = next_step(from_status, Trigger.OPEN, close_requested=False)
    adopted = next_step(from_status, Trigger.SNAPSHOT_POSITION, close_requested=False)

    # Assert
    assert from_status is FREE
    assert (opened, adopted) == (Status.PENDING_ENTRY, Status.PENDING_SL)


def test_transitions_free_key_has_no_row_for_terminal_statuses():
    # Arrange / Act
    sources = {source for source, _ in itertools.chain(TRANSITIONS, NO_OPS)}

    # Assert
    assert sources.isdisjoint(TERMINAL_STATUSES)


def test_transitions_every_in_flight_status_acts_on_its_deadline():
    # Arrange / Act
    deadline_rows = {status: TRANSITIONS.get((status, Trigger.DEADLINE)) for status in IN_FLIGHT_STATUSES}

    # Assert
    assert deadline_rows == {status: status for status in IN_FLIGHT_STATUSES}
    assert isinstance(NO_OPS[(Status.ACTIVE, Trigger.DEADLINE)], NoOp)


def test_transitions_status_helpers_list_in_flight_and_terminal_statuses():
    # Arrange / Act
    in_flight, terminal = in_flight_statuses(), terminal_statuses()

    # Assert
    assert terminal == {Status.CLOSED, Status.ROLLED_BACK}
    assert in_flight == {Status.PENDING_ENTRY, Status.ENTRY_PLACED, Status.PENDING_SL, Status.CLOSING}
    assert set(Status) - in_flight - terminal == {Status.ACTIVE}


def test_transitions_held_statuses_are_in_flight_and_release_to_what_they_hold_back():
    # Arrange / Act
    held, released = dict(HELD_WHILE_ORDERS_TO_CANCEL), dict(RELEASED_ONCE_CANCELS_CONFIRMED)

    # Assert: a held position keeps a deadline (the cleanup is retried) and is given back
    # exactly the status it was held from.
    assert held == {Status.ACTIVE: Status.PENDING_SL, Status.CLOSED: Status.CLOSING}
    assert set(held.values()) <= IN_FLIGHT_STATUSES
    assert {v: k for k, v in held.items()} == released
    assert CANCEL_CONFIRMED_BY == {ReportOutcome.CANCELED, ReportOutcome.NOT_FOUND, ReportOutcome.FILLED}


def test_transitions_every_role_and_outcome_has_a_report_trigger():
    # Arrange / Act
    triggers = set(REPORT_TRIGGERS.values())

    # Assert
    assert len(triggers) == len(OrderRole) * len(ReportOutcome)
    assert triggers <= set(Trigger)


# --- decide follows the table ---------------------------------------------------------------

# States to start from: every status, plus the entry statuses with a close requested.
def _pending_entry_close_requested() -> Feed:
    feed = feed_pending_entry()
    feed.close()
    return feed


def _entry_placed_close_requested() -> Feed:
    feed = feed_entry_placed()
    feed.close()
    return feed


START_STATES: dict[str, Callable[[], Feed]] = {
    **FEEDS_BY_STATUS,
    "pending_entry+close_requested": _pending_entry_close_requested,
    "entry_placed+close_requested": _entry_placed_close_requested,
    "pending_sl+replacing_stop": feed_replacing_stop,
    "closing+cancel_pending": feed_closed_awaiting_cancel,
}

# Inputs decide() judges before the table: identity filters. Their audit reasons start so.
FILTER_REASONS = ("stale deadline", "deadline not due", "late report", "report for", "stale snapshot")


def _input_for(trigger: Trigger) -> Callable[[Feed], Decision] | None:
    """An input that derives `trigger`, or None when no input can in that state."""
    if trigger is Trigger.OPEN:
        return lambda feed: feed.open("sig-table-open")
    if trigger is Trigger.CLOSE:
        return lambda feed: feed.close("sig-table-close")
    if trigger is Trigger.SNAPSHOT_POSITION:
        return lambda feed: feed.snapshot(quantity=_held_quantity(feed))
    if trigger is Trigger.SNAPSHOT_UNCOVERED:
        return lambda feed: feed.snapshot(quantity=_held_quantity(feed) * 3)
    if trigger is Trigger.DEADLINE:
        return lambda feed: feed.deadline()
    if trigger is Trigger.SNAPSHOT_FLAT:
        return None  # handled by the flat cases: fetched before and after the deadline
    role, outcome = next(pair for pair, t in REPORT_TRIGGERS.items() if t is trigger)

    def send(feed: Feed) -> Decision:
        assert feed.state is not None
        fields: dict[str, object] = {}
        if outcome is ReportOutcome.FILLED:
            fields = {"filled_quantity": QUANTITY, "average_price": ENTRY_PRICE}
        if feed.state.position is None:
            orphan = f"{KEY}/0"
            return feed.report(role, outcome, position_id=orphan, client_id=client_order_id(orphan, role, 1), **fields)
        return feed.report(role, outcome, **fields)

    return send


def _held_quantity(feed: Feed) -> Decimal:
    live = feed.state.live_position if feed.state is not None else None
    return live.quantity if live is not None else QUANTITY


def _derived(trigger: Trigger, live) -> Trigger:
    """The trigger decide derives from the input built for `trigger` in that state."""
    if trigger is Trigger.SNAPSHOT_UNCOVERED and (live is None or live.status not in (Status.PENDING_SL, Status.ACTIVE)):
        return Trigger.SNAPSHOT_POSITION  # no stop to outgrow: a plain position snapshot
    return trigger


def _settled(expected: Status, after) -> Status:
    """The table's target as held (orders to cancel remain) or released (none remain)."""
    if after.orders_to_cancel:
        return HELD_WHILE_ORDERS_TO_CANCEL.get(expected, expected)
    accepted = after.stop_order is not None and f"{after.stop_order.client_order_id}|accepted" in after.seen_reports
    if (expected is Status.PENDING_SL and accepted) or (expected is Status.CLOSING and after.closed_at_exchange):
        return RELEASED_ONCE_CANCELS_CONFIRMED[expected]
    return expected


def _cases() -> list:
    cases = []
    for state_name in START_STATES:
        for trigger in Trigger:
            if trigger is Trigger.SNAPSHOT_FLAT:
                continue
            if trigger is Trigger.DEADLINE and state_name == "free":
                continue  # a free key without any position gets no deadline at all
            cases.append(pytest.param(state_name, trigger, id=f"{state_name}-{trigger}"))
        for early in (True, False):
            cases.append(pytest.param(state_name, "flat_early" if early else "flat_late", id=f"{state_name}-flat-{early}"))
    return cases


@pytest.mark.parametrize(("state_name", "trigger"), _cases())
def test_decide_follows_the_table(state_name: str, trigger: Trigger | str):
    # Arrange
    feed = START_STATES[state_name]()
    before = feed.state
    assert before is not None
    live = before.live_position
    from_status = table_status(live.status if live is not None else None)
    if trigger in ("flat_early", "flat_late"):
        has_deadline = live is not None and live.deadline_at is not None
        # Fetched before or after the deadline, a flat exchange means the same (no clock is compared)
        derived = Trigger.SNAPSHOT_FLAT
        at = live.deadline_at if trigger == "flat_late" and has_deadline else None
        send: Callable[[Feed], Decision] = lambda f: f.flat(at=at)  # noqa: E731
    else:
        derived = _derived(trigger, live)  # type: ignore[arg-type]
        maybe_send = _input_for(trigger)  # type: ignore[arg-type]
        assert maybe_send is not None
        send = maybe_send
    expected = next_step(from_status, derived, close_requested=live is not None and live.close_requested)

    # Act
    decision = send(feed)

    # Assert
    audit = decision.audit
    assert audit is not None
    filtered = audit.reason.startswith(FILTER_REASONS)
    if audit.decision is AuditDecision.DUPLICATE:
        # The very answer was applied while reaching the start state: a duplicate, whatever the row.
        assert decision.state.position == before.position and decision.commands == ()
    elif filtered:
        # An identity filter may only pre-empt a pair the table would not act on anyway.
        assert isinstance(expected, NoOp), audit.reason
        assert decision.state.position == before.position
    elif isinstance(expected, NoOp):
        assert audit.decision is expected.decision
        assert decision.state.position == before.position
        assert decision.commands == ()
    else:
        after = decision.state.position
        assert after is not None
        settled = _settled(expected, after)
        assert audit.reason.startswith(f"{from_status or 'free'} -> {settled} on {derived}"), audit.reason
        assert after.status is settled


def test_decide_follows_the_table_covers_every_transition_row():
    # Arrange: the rows the parametrised cases above reach
    reached: set[tuple[Status | None, Trigger]] = set()
    for state_name, builder in START_STATES.items():
        state = builder().state
        assert state is not None
        live = state.live_position
        from_status = table_status(live.status if live is not None else None)
        reached.update((from_status, trigger) for trigger in Trigger)

    # Act
    unreached = set(TRANSITIONS) - reached

    # Assert
    assert unreached == set()



# --- docs/state-machine.md says what the table does ----------------------------------------


def _documented_moves() -> tuple[set[tuple[object, object, object]], set[tuple[object, object]]]:
    """(from, trigger, to) the doc's table states, and every (from, trigger) it mentions at all."""
    import re
    from pathlib import Path

    from streams.domain import FREE, REPORT_TRIGGERS, Status, Trigger

    text = (Path(__file__).resolve().parents[3] / "docs" / "state-machine.md").read_text(encoding="utf-8")
    table = text.split("### The table", 1)[1].split("\n\n", 2)[1]
    live = [status for status in Status if not status.is_terminal]
    moves, mentioned = set(), set()
    for line in table.splitlines()[2:]:
        origin, triggers, target = (cell.strip() for cell in line.strip("|").split("|")[:3])
        if "late report" in triggers:
            continue
        froms = live if origin == "any live" else [
            FREE if name == "free" else Status(name) for name in re.findall(r"`(\w+)`|\b(free)\b", origin)
            for name in [next(part for part in name if part)]]
        named = [Trigger(name) for name in re.findall(r"`(\w+)`", triggers)]
        if "any report" in triggers:
            named += list(REPORT_TRIGGERS.values())
        to_names = re.findall(r"`(\w+)`", target.split(",")[0])
        for origin_status in froms:
            for trigger in named:
                mentioned.add((origin_status, trigger))
                if target.startswith("unchanged"):
                    moves.add((origin_status, trigger, origin_status))
                elif target == "free":
                    moves.add((origin_status, trigger, FREE))
                elif to_names:
                    moves.add((origin_status, trigger, Status(to_names[0])))
    return moves, mentioned


def test_the_documented_table_states_every_transition_of_the_code():
    from streams.domain import TRANSITIONS

    moves, _ = _documented_moves()
    missing = {(origin, trigger, target) for (origin, trigger), target in TRANSITIONS.items()
               if (origin, trigger, target) not in moves}
    assert missing == set()


def test_every_move_the_documented_table_states_is_in_the_code():
    from streams.domain import NO_OPS, TRANSITIONS

    moves, _ = _documented_moves()
    wrong = {(origin, trigger, target) for origin, trigger, target in moves
             if TRANSITIONS.get((origin, trigger)) != target
             and not (target == origin and (origin, trigger) in NO_OPS)}
    assert moves and wrong == set()

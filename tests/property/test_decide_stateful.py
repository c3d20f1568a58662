"""Stateful property test: `decide` against a small model of the exchange and the executor.

Hypothesis drives random interleavings of signals (new and repeated), execution reports
(delivered, dropped, duplicated, reordered), lost commands, exchange snapshots (fresh and
stale), redelivered offsets, outside trades, triggered stops, clock jumps and deadlines, on
two or three symbols. The test plays the agent (one `decide` per input, state carried per
key) and the executor (runs the commands against the model exchange and reports back).

The model exchange follows Binance's documented client-id rule: an id is unique among OPEN
orders only, so a filled or canceled order's id is accepted again and names a second order.
The model executor follows the placement protocol of `streams/exchange/executor.py`: it
looks an order up by its client id before placing it, never sends while an earlier request
for that id may still land (a request held in the network), and a query or cancel closes
the id to any later placement (the fence). Actions add lost answers, held requests that land
late or expire, commands delivered twice and positions changed by hand; the invariants
check that the exchange never holds more orders for a position than the machine decided,
that an active position's stop covers what the exchange holds, and that an ended position
leaves no order open.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streams.domain import (
    AppliedInput,
    AuditDecision,
    CancelOrder,
    ClosePosition,
    Command,
    Deadline,
    Decision,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    InputPayload,
    KeyState,
    OrderRole,
    PlaceEntry,
    PlaceStopLoss,
    Policy,
    Position,
    QueryOrder,
    SIGNAL_ID_RETENTION_MIN_MS,
    ReportOutcome,
    Side,
    Signal,
    SignalAction,
    Status,
    decide,
    key_for,
    key_of_position_id,
)

EXCHANGE = "binance"
SYMBOLS = ("APTUSDT", "BTCUSDT", "ETHUSDT")
PRICES = {"APTUSDT": Decimal("4.312"), "BTCUSDT": Decimal("65000.1"), "ETHUSDT": Decimal("3000")}
QUANTITIES = (Decimal("0.5"), Decimal("2"), Decimal("61.8"))
START_TS = 1_761_173_440_000
POLICY = Policy(
    default_stop_loss_pct=Decimal("2"),
    entry_timeout_ms=10_000,
    stop_loss_timeout_ms=5_000,
    close_timeout_ms=8_000,
    signal_id_retention_ms=SIGNAL_ID_RETENTION_MIN_MS,
)
SETTLE_ROUNDS = 3  # a closing position needs two (the query, then the retry); a replaced stop one more
MAX_DRAIN_STEPS = 500


# --- the model exchange ---------------------------------------------------------------------


@dataclass
class ExchangeOrder:
    symbol: str
    role: OrderRole
    side: Side
    quantity: Decimal
    stop_price: Decimal | None
    status: str  # "new" (resting), "filled" or "canceled"; rejected orders never exist
    filled_quantity: Decimal | None = None


class ModelExchange:
    """Net positions per symbol at a fixed price; every order, several per client id once final."""

    def __init__(self) -> None:
        self.net: dict[str, Decimal] = {symbol: Decimal(0) for symbol in SYMBOLS}
        self.by_client_id: dict[str, list[ExchangeOrder]] = defaultdict(list)

    @property
    def orders(self) -> dict[str, ExchangeOrder]:
        """The latest order of each client id (what a lookup by client id answers)."""
        return {cid: placed[-1] for cid, placed in self.by_client_id.items() if placed}

    def latest(self, client_order_id: str) -> ExchangeOrder | None:
        placed = self.by_client_id.get(client_order_id)
        return placed[-1] if placed else None

    def accept(self, client_order_id: str, order: ExchangeOrder) -> ExchangeOrder:
        """A new order under `client_order_id` (the caller checked that none with it is open)."""
        self.by_client_id[client_order_id].append(order)
        return order

    def side_of(self, symbol: str) -> Side | None:
        net = self.net[symbol]
        return None if net == 0 else (Side.BUY if net > 0 else Side.SELL)

    def trade(self, symbol: str, side: Side, quantity: Decimal) -> None:
        self.net[symbol] += quantity if side is Side.BUY else -quantity

    def reduce_only(self, symbol: str, side: Side, quantity: Decimal) -> Decimal:
        """Fill a reduce-only order as far as the position allows; return what filled."""
        held = self.side_of(symbol)
        if held is None or held is side:
            return Decimal(0)
        filled = min(quantity, abs(self.net[symbol]))
        self.trade(symbol, side, filled)
        return filled

    def snapshot(self, symbol: str, fetched_at: int) -> ExchangeSnapshot:
        side = self.side_of(symbol)
        return ExchangeSnapshot(
            exchange=EXCHANGE,
            symbol=symbol,
            fetched_at=fetched_at,
            side=side,
            quantity=abs(self.net[symbol]),
            entry_price=PRICES[symbol] if side is not None else None,
        )

    def work_resting_entries(self, symbol: str, *, fill: bool) -> None:
        """Entries the exchange accepted but had not filled now fill (or expire)."""
        for order in self.orders.values():
            if order.symbol == symbol and order.role is OrderRole.ENTRY and order.status == "new":
                if fill:
                    self.trade(symbol, order.side, order.quantity)
                    order.status, order.filled_quantity = "filled", order.quantity
                else:
                    order.status = "canceled"

    def cancel_stops(self, symbol: str) -> None:
        """Someone cancels the symbol's resting stops by hand (no report: nobody asked)."""
        for order in self.orders.values():
            if order.symbol == symbol and order.role is OrderRole.STOP_LOSS and order.status == "new":
                order.status = "canceled"

    def trigger_stops(self, symbol: str) -> None:
        """The market crosses every resting stop of the symbol (no report: nobody asked)."""
        for order in self.orders.values():
            if order.symbol == symbol and order.role is OrderRole.STOP_LOSS and order.status == "new":
                filled = self.reduce_only(symbol, order.side, order.quantity)
                order.status = "filled" if filled else "canceled"  # nothing to reduce: expired
                order.filled_quantity = filled or None


# --- the model executor ---------------------------------------------------------------------


def _report(command: Command, outcome: ReportOutcome, ts: int, **fields: object) -> ExecutionReport:
    values: dict[str, object] = {
        "exchange_order_id": None,
        "filled_quantity": None,
        "average_price": None,
        "stop_price": None,
        "error_code": None,
        "error_message": None,
    }
    values.update(fields)
    return ExecutionReport(
        position_id=command.position_id,
        client_order_id=command.client_order_id,
        role=command.role,
        outcome=outcome,
        ts=ts,
        **values,  # type: ignore[arg-type]
    )


def _report_of_order(command: Command, order: ExchangeOrder | None, ts: int) -> ExecutionReport:
    if order is None:
        return _report(command, ReportOutcome.NOT_FOUND, ts)
    exchange_order_id = f"x-{command.client_order_id}"
    if order.status == "new":
        return _report(
            command, ReportOutcome.ACCEPTED, ts, exchange_order_id=exchange_order_id, stop_price=order.stop_price
        )
    if order.status == "filled":
        return _report(
            command,
            ReportOutcome.FILLED,
            ts,
            exchange_order_id=exchange_order_id,
            filled_quantity=order.filled_quantity,
            average_price=PRICES[order.symbol],
        )
    return _report(command, ReportOutcome.CANCELED, ts, exchange_order_id=exchange_order_id)


def place_at_exchange(
    exchange: ModelExchange, command: Command, ts: int, *, reject: bool, round_down: bool, rest: bool = False
) -> ExecutionReport:
    """A placement request reaching the exchange, whoever sent it and whenever; its answer.

    `reject` makes the exchange refuse it, `round_down` fills an entry at the market's step
    size, `rest` leaves an entry accepted but not yet filled. No lookup here: the exchange
    applies its own rule only (an id is refused only while its order is open).
    """
    latest = exchange.latest(command.client_order_id)
    if latest is not None and latest.status == "new":
        return _report_of_order(command, latest, ts)  # -4116; the sender looks the order up
    if isinstance(command, PlaceEntry):
        if reject:
            return _report(command, ReportOutcome.REJECTED, ts, error_code=-2019, error_message="Margin is insufficient.")
        quantity = command.quantity
        if round_down and quantity >= 1:
            quantity = quantity.quantize(Decimal(1), rounding=ROUND_DOWN)  # the market's step size
        if rest:
            order = ExchangeOrder(command.symbol, OrderRole.ENTRY, command.side, quantity, None, "new")
        else:
            exchange.trade(command.symbol, command.side, quantity)
            order = ExchangeOrder(command.symbol, OrderRole.ENTRY, command.side, quantity, None, "filled", quantity)
    elif isinstance(command, PlaceStopLoss):
        held = exchange.side_of(command.symbol)
        if reject or held is None or held is command.side:
            return _report(
                command, ReportOutcome.REJECTED, ts, error_code=-2021, error_message="Order would immediately trigger."
            )
        price = command.stop_price.quantize(Decimal("0.001"))
        order = ExchangeOrder(command.symbol, OrderRole.STOP_LOSS, command.side, command.quantity, price, "new")
        order = exchange.accept(command.client_order_id, order)
        return _report_of_order(command, order, ts)
    else:
        assert isinstance(command, ClosePosition)
        filled = exchange.reduce_only(command.symbol, command.side, command.quantity)
        if not filled:
            return _report(
                command, ReportOutcome.REJECTED, ts, error_code=-2022, error_message="ReduceOnly Order is rejected."
            )
        order = ExchangeOrder(command.symbol, OrderRole.CLOSE, command.side, command.quantity, None, "filled", filled)
    return _report_of_order(command, exchange.accept(command.client_order_id, order), ts)


class ModelExecutor:
    """The executor's placement protocol, over the model exchange.

    A placement first looks its client id up and reports what it finds. It never sends
    while an earlier request for the id may still land (`in_flight`: the real executor
    waits out recvWindow + margin, or reports unknown), nor after the id was closed
    (`fenced`) by a query, a cancel, or a definitive answer to an earlier placement (a
    rejected stop sent again after the machine moved on would rest forever). A query or
    cancel of an id with a request in flight answers unknown.
    """

    def __init__(self, exchange: ModelExchange) -> None:
        self.exchange = exchange
        self.in_flight: dict[str, Command] = {}  # requests sent whose fate the exchange has not decided
        self.fenced: set[str] = set()

    def execute(self, command: Command, ts: int, *, fate: str = "done", round_down: bool = False) -> ExecutionReport | None:
        """Carry `command` out; None when its answer is lost (`held`: the request itself is late)."""
        cid = command.client_order_id
        if cid in self.in_flight:
            return _report(command, ReportOutcome.UNKNOWN, ts)  # an earlier request may still land
        existing = self.exchange.latest(cid)
        if isinstance(command, QueryOrder | CancelOrder):
            self.fenced.add(cid)
            if isinstance(command, CancelOrder) and existing is not None and existing.status == "new":
                existing.status = "canceled"
            return _report_of_order(command, existing, ts)
        if existing is not None:
            return _report_of_order(command, existing, ts)  # looked up: already there, not placed again
        if cid in self.fenced:
            return _report(command, ReportOutcome.UNKNOWN, ts)  # closed by a query: never sent again
        if fate == "held":
            self.in_flight[cid] = command
            return None
        report = place_at_exchange(self.exchange, command, ts, reject=fate == "rejected", round_down=round_down,
                                   rest=fate == "resting")
        if fate == "answer lost":
            return None
        self.fenced.add(cid)  # answered: fenced before the report is published
        return report

    def land(self, cid: str, ts: int) -> None:
        """A held request reaches the exchange within its recvWindow; its answer reaches nobody."""
        place_at_exchange(self.exchange, self.in_flight.pop(cid), ts, reject=False, round_down=False)

    def expire(self, cid: str) -> None:
        """A held request arrives after its recvWindow: the exchange refuses it (-1021)."""
        del self.in_flight[cid]


# --- the state machine ----------------------------------------------------------------------


class PositionPipeline(RuleBasedStateMachine):
    """The agent (decide per input, state per key) wired to the model executor and exchange."""

    def __init__(self) -> None:
        super().__init__()
        self.exchange = ModelExchange()
        self.executor = ModelExecutor(self.exchange)
        self.executed: list[Command] = []  # every command the executor has taken, for redelivery
        # Stops that triggered or were canceled with nobody asking: until a query answers for
        # them the machine cannot know (docs/state-machine.md, known limits).
        self.stops_gone_unseen: set[str] = set()
        self.now = START_TS
        self.states: dict[str, KeyState | None] = {key_for(symbol, EXCHANGE): None for symbol in SYMBOLS}
        self.next_offset: dict[str, int] = defaultdict(int)
        self.applied: dict[str, list[AppliedInput]] = defaultdict(list)
        self.signals: dict[str, list[Signal]] = defaultdict(list)
        self.remembered: dict[str, list[str]] = defaultdict(list)  # the model's own dedup memory
        self.applied_snapshots: dict[str, list[ExchangeSnapshot]] = defaultdict(list)
        self.pending_commands: list[Command] = []
        self.pending_reports: list[ExecutionReport] = []
        self.placed: dict[str, Command] = {}  # client id -> the place/close command that created it
        self.latest_by_position_id: dict[str, Position] = {}
        self.signal_count = 0

    # -- plumbing ---------------------------------------------------------------------------

    def tick(self) -> int:
        self.now += 1
        return self.now

    def apply(self, key: str, payload: InputPayload) -> Decision:
        """What the agent does for one input: decide, write back, send the commands."""
        before = self.states[key]
        offset = self.next_offset[key]
        item = AppliedInput(offset=offset, event=InputEvent(f"{key}#{offset}", key, self.tick(), payload))
        decision = decide(before, item, POLICY)

        assert decision.audit is not None and (decision.audit.key, decision.audit.offset) == (key, offset)
        assert decision.state.last_offset == offset
        self.check_lineage(before, decision.state)
        for command in decision.commands:
            self.check_client_id(command)
        if decision.state.position is not None:
            self.latest_by_position_id[decision.state.position.id] = decision.state.position

        self.states[key] = decision.state
        self.next_offset[key] += 1
        self.applied[key].append(item)
        self.pending_commands.extend(decision.commands)
        return decision

    def check_lineage(self, before: KeyState | None, after: KeyState) -> None:
        """A position is only ever replaced once it has ended: never two live ones."""
        old = before.position if before is not None else None
        new = after.position
        if old is not None and new is not None and new.id != old.id:
            assert old.status.is_terminal, f"live position {old.id} ({old.status}) replaced by {new.id}"

    def check_client_id(self, command: Command) -> None:
        """A client id names one order: placed once (or retried identically), then queried/canceled."""
        if isinstance(command, PlaceEntry | PlaceStopLoss | ClosePosition):
            earlier = self.placed.setdefault(command.client_order_id, command)
            assert earlier == command, f"client id {command.client_order_id} reused by {command} after {earlier}"
        else:
            placed = self.placed.get(command.client_order_id)
            assert placed is not None, f"{command} names an order never placed"
            assert placed.role is command.role and placed.position_id == command.position_id

    def live_positions(self) -> list[Position]:
        return [s.live_position for s in self.states.values() if s is not None and s.live_position is not None]

    # -- signals ----------------------------------------------------------------------------

    def send_signal(self, key: str, signal: Signal) -> Decision:
        was_remembered = signal.signal_id in self.remembered[key]
        position_before = self.states[key].position if self.states[key] is not None else None
        decision = self.apply(key, signal)
        assert decision.audit is not None
        if was_remembered:
            assert decision.audit.decision is AuditDecision.DUPLICATE
            assert decision.commands == () and decision.state.position == position_before
        else:
            assert decision.audit.decision is not AuditDecision.DUPLICATE
            self.remembered[key] = self.remembered[key] + [signal.signal_id]
            self.signals[key].append(signal)
        return decision

    @rule(symbol=st.sampled_from(SYMBOLS), side=st.sampled_from(Side), quantity=st.sampled_from(QUANTITIES))
    def open_signal(self, symbol: str, side: Side, quantity: Decimal) -> None:
        self.signal_count += 1
        key = key_for(symbol, EXCHANGE)
        live_before = self.states[key].live_position if self.states[key] is not None else None
        signal = Signal(f"sig-{self.signal_count}", SignalAction.OPEN, symbol, EXCHANGE, side, quantity, None, self.now)
        decision = self.send_signal(key, signal)
        if live_before is not None:
            assert decision.commands == () and decision.audit is not None
            assert decision.audit.decision is AuditDecision.REFUSED

    @rule(symbol=st.sampled_from(SYMBOLS))
    def close_signal(self, symbol: str) -> None:
        self.signal_count += 1
        signal = Signal(f"sig-{self.signal_count}", SignalAction.CLOSE, symbol, EXCHANGE, None, None, None, self.now)
        self.send_signal(key_for(symbol, EXCHANGE), signal)

    @precondition(lambda self: any(self.signals.values()))
    @rule(data=st.data())
    def repeat_a_signal(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, sent in self.signals.items() if sent)))
        self.send_signal(key, data.draw(st.sampled_from(self.signals[key])))

    # -- the executor -----------------------------------------------------------------------

    @precondition(lambda self: self.pending_commands)
    @rule(
        data=st.data(),
        fate=st.sampled_from(("done", "done", "rejected", "resting", "dropped", "answer lost", "held")),
        round_down=st.booleans(),
        gave_up=st.integers(0, 4),
    )
    def executor_takes_a_command(
        self, data: st.DataObject, fate: str, round_down: bool, gave_up: int
    ) -> None:
        """Run any pending command (so out of order); or drop it (the executor crashed before
        acting); or lose its answer after the exchange carried it out; or hold the request in
        the network, so it may land later or expire."""
        command = self.pending_commands.pop(data.draw(st.integers(0, len(self.pending_commands) - 1)))
        if fate == "dropped":
            return
        self.executed.append(command)
        report = self.executor.execute(command, self.tick(), fate=fate, round_down=round_down)
        if report is None:
            return
        if gave_up == 0:  # the executor gave up after retries: nothing is known
            report = replace(
                report, outcome=ReportOutcome.UNKNOWN, exchange_order_id=None, filled_quantity=None,
                average_price=None, stop_price=None,
            )
        self.pending_reports.append(report)

    @precondition(lambda self: self.executed)
    @rule(data=st.data())
    def a_command_is_delivered_twice(self, data: st.DataObject) -> None:
        """A command reaches the executor again (a redelivery after a crash, a resend)."""
        self.pending_commands.append(data.draw(st.sampled_from(self.executed)))

    @precondition(lambda self: self.executor.in_flight)
    @rule(data=st.data(), lands=st.booleans())
    def a_held_request_reaches_the_exchange(self, data: st.DataObject, lands: bool) -> None:
        """Within its recvWindow it is carried out (a filled id is accepted again: Binance's
        rule), its answer reaching nobody; after it, the exchange refuses it."""
        cid = data.draw(st.sampled_from(sorted(self.executor.in_flight)))
        if lands:
            self.executor.land(cid, self.tick())
        else:
            self.executor.expire(cid)

    @precondition(lambda self: self.pending_reports)
    @rule(data=st.data(), fate=st.sampled_from(("delivered", "delivered", "delivered twice", "dropped")))
    def a_report_travels(self, data: st.DataObject, fate: str) -> None:
        """Deliver any pending report (so out of order), deliver it and keep a copy, or drop it."""
        index = data.draw(st.integers(0, len(self.pending_reports) - 1))
        report = self.pending_reports[index] if fate == "delivered twice" else self.pending_reports.pop(index)
        if fate != "dropped":
            self.apply(key_of_position_id(report.position_id), report)

    # -- the exchange moving on its own -----------------------------------------------------

    @rule(
        symbol=st.sampled_from(SYMBOLS),
        event=st.sampled_from(
            ("stops trigger", "stops canceled", "entries fill", "entries expire", "outside trade")
        ),
        side=st.sampled_from(Side),
        quantity=st.sampled_from(QUANTITIES),
    )
    def the_exchange_moves(self, symbol: str, event: str, side: Side, quantity: Decimal) -> None:
        """What happens at the exchange without a command: nobody reports it."""
        if event in ("stops trigger", "stops canceled"):
            self.stops_gone_unseen.update(
                cid for cid, order in self.exchange.orders.items()
                if order.symbol == symbol and order.role is OrderRole.STOP_LOSS and order.status == "new")
        if event == "stops trigger":
            self.exchange.trigger_stops(symbol)
        elif event == "stops canceled":
            self.exchange.cancel_stops(symbol)
        elif event in ("entries fill", "entries expire"):
            self.exchange.work_resting_entries(symbol, fill=event == "entries fill")
        else:  # the position changed by hand (grown, reduced, flipped or opened)
            self.exchange.trade(symbol, side, quantity)

    # -- snapshots --------------------------------------------------------------------------

    def fresh_snapshot(self, symbol: str) -> Decision:
        key = key_for(symbol, EXCHANGE)
        snapshot = self.exchange.snapshot(symbol, fetched_at=self.now + 1)
        decision = self.apply(key, snapshot)
        self.applied_snapshots[key].append(snapshot)
        live = decision.state.live_position
        if snapshot.is_flat:
            # Flat: nothing stays tracked, unless the entry's outcome is not known yet (rollback
            # only on evidence) or an order of the ended position awaits its cancel.
            assert live is None or live.status in (Status.PENDING_ENTRY, Status.ENTRY_PLACED) or (
                live.status is Status.CLOSING and live.closed_at_exchange and live.orders_to_cancel
            ), f"flat exchange but {live}"
        else:
            # The exchange's position is tracked by exactly one live position, as it is there.
            assert live is not None, f"exchange holds {snapshot} but nothing tracks it"
            assert (live.side, live.quantity) == (snapshot.side, snapshot.quantity)
        return decision

    @rule(symbol=st.sampled_from(SYMBOLS))
    def take_a_snapshot(self, symbol: str) -> None:
        self.fresh_snapshot(symbol)

    @precondition(lambda self: any(self.applied_snapshots.values()))
    @rule(data=st.data())
    def replay_a_stale_snapshot(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, sent in self.applied_snapshots.items() if sent)))
        stale = data.draw(st.sampled_from(self.applied_snapshots[key]))
        before = self.states[key]
        decision = self.apply(key, stale)
        assert decision.audit is not None and decision.audit.decision is AuditDecision.IGNORED
        assert decision.commands == ()
        assert before is not None and decision.state.position == before.position

    # -- redelivery, time and deadlines -----------------------------------------------------

    @precondition(lambda self: any(self.applied.values()))
    @rule(data=st.data())
    def redeliver_an_offset(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, items in self.applied.items() if items)))
        item = data.draw(st.sampled_from(self.applied[key]))
        state = self.states[key]
        decision = decide(state, item, POLICY)
        assert decision == Decision(state=state, commands=(), audit=None, position_changed=False)

    @rule(milliseconds=st.integers(1, 20_000))
    def advance_the_clock(self, milliseconds: int) -> None:
        self.now += milliseconds

    def fire_due_deadlines(self) -> None:
        for position in self.live_positions():
            if position.deadline_at is not None and position.deadline_at <= self.now:
                deadline = Deadline(position.id, position.status, position.deadline_at, self.now + 1)
                decision = self.apply(key_of_position_id(position.id), deadline)
                assert decision.audit is not None and decision.audit.decision is AuditDecision.APPLIED

    @rule(to_next_deadline=st.booleans())
    def the_timer_fires(self, to_next_deadline: bool) -> None:
        """The worker's timer: fire every due deadline, optionally after waiting for the next one."""
        upcoming = [p.deadline_at for p in self.live_positions() if p.deadline_at is not None]
        if to_next_deadline and upcoming:
            self.now = max(self.now, min(upcoming))
        self.fire_due_deadlines()

    def waiting_positions(self) -> list[Position]:
        return [p for p in self.live_positions() if p.deadline_at is not None and p.deadline_at > self.now + 2]

    @precondition(lambda self: self.waiting_positions())
    @rule(data=st.data())
    def a_deadline_fires_early(self, data: st.DataObject) -> None:
        waiting = self.waiting_positions()
        position = data.draw(st.sampled_from(waiting))
        assert position.deadline_at is not None
        decision = self.apply(
            key_of_position_id(position.id), Deadline(position.id, position.status, position.deadline_at, self.now + 1)
        )
        assert decision.audit is not None and decision.audit.decision is AuditDecision.IGNORED
        assert decision.commands == ()

    # -- liveness -----------------------------------------------------------------------------

    def drain(self) -> None:
        """A reliable executor: run every command and deliver every report, in order."""
        for _ in range(MAX_DRAIN_STEPS):
            if self.pending_reports:
                report = self.pending_reports.pop(0)
                self.apply(key_of_position_id(report.position_id), report)
            elif self.pending_commands:
                command = self.pending_commands.pop(0)
                report = self.executor.execute(command, self.tick())
                assert report is not None
                self.pending_reports.append(report)
            else:
                return
        raise AssertionError("commands and reports keep producing each other")

    @rule()
    def settle(self) -> None:
        """Past every deadline, with a reliable executor and a snapshot per round, nothing is in flight.

        Then the exchange holds what the machine tracks, every active position's stop covers
        it, and no order is left open but the stop of a live position.
        """
        for cid in sorted(self.executor.in_flight):  # every held request lands at last
            self.executor.land(cid, self.tick())
        for _ in range(SETTLE_ROUNDS):
            self.drain()
            for symbol in SYMBOLS:
                self.exchange.work_resting_entries(symbol, fill=True)  # a market order fills at last
            for symbol in SYMBOLS:
                self.fresh_snapshot(symbol)
            self.drain()
            deadlines = [p.deadline_at for p in self.live_positions() if p.deadline_at is not None]
            if deadlines:
                self.now = max(self.now, max(deadlines))
            self.fire_due_deadlines()
            self.drain()
        in_flight = [p for p in self.live_positions() if p.status.is_in_flight]
        assert in_flight == [], f"still in flight after {SETTLE_ROUNDS} rounds: {in_flight}"
        for symbol in SYMBOLS:
            state = self.states[key_for(symbol, EXCHANGE)]
            live = state.live_position if state is not None else None
            held = self.exchange.snapshot(symbol, self.now)
            tracked = (live.side, live.quantity) if live is not None else (None, Decimal(0))
            assert tracked == (held.side, held.quantity), f"{symbol}: exchange {held}, tracked {live}"
            if live is not None and live.stop_order is not None and live.stop_order.client_order_id not in self.stops_gone_unseen:
                stop = self.exchange.latest(live.stop_order.client_order_id)
                assert live.status is Status.ACTIVE and stop is not None and stop.status == "new", (live, stop)
                assert stop.side is held.side.opposite() and stop.quantity >= held.quantity, (held, stop)
        live_stops = {p.stop_order.client_order_id for p in self.live_positions() if p.stop_order is not None}
        for cid, order in self.exchange.orders.items():
            if order.status == "new":
                assert cid in live_stops, f"{cid} ({self.placed[cid].position_id}) left open: {order}"

    def teardown(self) -> None:
        self.settle()

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def at_most_one_live_position_per_key(self) -> None:
        live_per_key: dict[str, int] = defaultdict(int)
        for position in self.latest_by_position_id.values():
            if position.status.is_live:
                live_per_key[key_of_position_id(position.id)] += 1
        assert all(count <= 1 for count in live_per_key.values()), dict(live_per_key)

    @invariant()
    def orders_placed_for_a_position_never_exceed_the_orders_decided(self) -> None:
        placed_per_position: dict[str, int] = defaultdict(int)
        decided_per_position: dict[str, int] = defaultdict(int)
        for cid, command in self.placed.items():
            decided_per_position[command.position_id] += 1
            orders = self.exchange.by_client_id.get(cid, [])
            assert len(orders) <= 1, f"client id {cid} placed {len(orders)} times: {orders}"
            placed_per_position[command.position_id] += len(orders)
        assert set(self.exchange.by_client_id) <= set(self.placed), "an order nobody decided"
        for position_id, placed in placed_per_position.items():
            assert placed <= decided_per_position[position_id], position_id

    @invariant()
    def exactly_the_in_flight_statuses_have_a_deadline(self) -> None:
        for state in self.states.values():
            if state is not None and state.position is not None:
                position = state.position
                assert (position.deadline_at is not None) == position.status.is_in_flight, position


PositionPipeline.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_decide_stateful = PositionPipeline.TestCase

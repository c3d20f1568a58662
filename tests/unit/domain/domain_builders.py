"""Hand-written builders for the pure domain tests: no mocks, only real values and `decide`.

`Feed` plays the stream agent: it applies inputs one offset after another and carries the
state over, so every state a test starts from is one `decide` can actually reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from streams.domain import (
    AppliedInput,
    Deadline,
    Decision,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    InputPayload,
    KeyState,
    OrderRole,
    Policy,
    Position,
    SIGNAL_ID_RETENTION_MIN_MS,
    ReportOutcome,
    Side,
    Signal,
    SignalAction,
    Status,
    client_order_id,
    decide,
)

SYMBOL = "APTUSDT"
EXCHANGE = "binance"
KEY = f"{SYMBOL}@{EXCHANGE}"
START_TS = 1_761_173_440_000
STEP_MS = 100
ENTRY_PRICE = Decimal("10")
QUANTITY = Decimal("61.8")

POLICY = Policy(
    default_stop_loss_pct=Decimal("2"),
    entry_timeout_ms=10_000,
    stop_loss_timeout_ms=5_000,
    close_timeout_ms=8_000,
    signal_id_retention_ms=SIGNAL_ID_RETENTION_MIN_MS,
)


def open_signal(
    signal_id: str,
    ts: int,
    *,
    side: Side | None = Side.BUY,
    quantity: Decimal | None = QUANTITY,
    stop_loss_pct: Decimal | None = None,
    symbol: str = SYMBOL,
) -> Signal:
    return Signal(
        signal_id=signal_id,
        action=SignalAction.OPEN,
        symbol=symbol,
        exchange=EXCHANGE,
        side=side,
        quantity=quantity,
        stop_loss_pct=stop_loss_pct,
        ts=ts,
    )


def close_signal(signal_id: str, ts: int, *, symbol: str = SYMBOL) -> Signal:
    return Signal(
        signal_id=signal_id,
        action=SignalAction.CLOSE,
        symbol=symbol,
        exchange=EXCHANGE,
        side=None,
        quantity=None,
        stop_loss_pct=None,
        ts=ts,
    )


def snapshot(
    fetched_at: int,
    *,
    side: Side | None = Side.BUY,
    quantity: Decimal = QUANTITY,
    entry_price: Decimal | None = ENTRY_PRICE,
    mark_price: Decimal | None = None,
    unrealized_pnl: Decimal | None = None,
) -> ExchangeSnapshot:
    return ExchangeSnapshot(
        exchange=EXCHANGE,
        symbol=SYMBOL,
        fetched_at=fetched_at,
        side=side,
        quantity=quantity,
        entry_price=entry_price,
        mark_price=mark_price,
        unrealized_pnl=unrealized_pnl,
    )


def flat_snapshot(fetched_at: int) -> ExchangeSnapshot:
    return ExchangeSnapshot(
        exchange=EXCHANGE, symbol=SYMBOL, fetched_at=fetched_at, side=None, quantity=Decimal(0), entry_price=None
    )


def report(
    position_id: str,
    client_id: str,
    role: OrderRole,
    outcome: ReportOutcome,
    ts: int,
    *,
    filled_quantity: Decimal | None = None,
    average_price: Decimal | None = None,
    stop_price: Decimal | None = None,
    error_code: int | None = None,
    error_message: str | None = None,
) -> ExecutionReport:
    return ExecutionReport(
        position_id=position_id,
        client_order_id=client_id,
        role=role,
        outcome=outcome,
        ts=ts,
        exchange_order_id=f"x-{client_id}" if outcome is not ReportOutcome.NOT_FOUND else None,
        filled_quantity=filled_quantity,
        average_price=average_price,
        stop_price=stop_price,
        error_code=error_code,
        error_message=error_message,
    )


def applied(offset: int, payload: InputPayload, ts: int, *, key: str = KEY) -> AppliedInput:
    return AppliedInput(offset=offset, event=InputEvent(event_id=f"evt-{offset}", key=key, ts=ts, payload=payload))


@dataclass
class Feed:
    """Applies inputs to one key in offset order, like the agent, and keeps what it sent."""

    state: KeyState | None = None
    now: int = START_TS
    next_offset: int = 0
    policy: Policy = POLICY
    sent: list[AppliedInput] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    # -- plumbing -------------------------------------------------------------------------

    def send(self, make_payload: Callable[[int], InputPayload], *, at: int | None = None) -> Decision:
        """Apply the payload built for time `at` (default: STEP_MS after the previous input)."""
        self.now = at if at is not None else self.now + STEP_MS
        item = applied(self.next_offset, make_payload(self.now), self.now)
        decision = decide(self.state, item, self.policy)
        self.state = decision.state
        self.next_offset += 1
        self.sent.append(item)
        self.decisions.append(decision)
        return decision

    def redeliver(self, offset: int) -> Decision:
        """Apply an input again with its original offset (a redelivery after a crash)."""
        original = next(item for item in self.sent if item.offset == offset)
        return decide(self.state, original, self.policy)

    @property
    def position(self) -> Position:
        assert self.state is not None and self.state.position is not None, "the key has no position"
        return self.state.position

    def client_id(self, role: OrderRole) -> str:
        """The id of the position's current order for `role`, or of its first attempt."""
        order = self.position.order_for(role)
        return order.client_order_id if order is not None else client_order_id(self.position.id, role, 1)

    # -- inputs ---------------------------------------------------------------------------

    def open(self, signal_id: str = "sig-open", **fields: object) -> Decision:
        return self.send(lambda ts: open_signal(signal_id, ts, **fields))  # type: ignore[arg-type]

    def close(self, signal_id: str = "sig-close") -> Decision:
        return self.send(lambda ts: close_signal(signal_id, ts))

    def resend(self, payload: InputPayload) -> Decision:
        """Send an earlier payload again as a new input (a new offset)."""
        return self.send(lambda ts: payload)

    def report(
        self,
        role: OrderRole,
        outcome: ReportOutcome,
        *,
        position_id: str | None = None,
        client_id: str | None = None,
        **fields: object,
    ) -> Decision:
        pid = position_id if position_id is not None else self.position.id
        cid = client_id if client_id is not None else self.client_id(role)
        return self.send(lambda ts: report(pid, cid, role, outcome, ts, **fields))  # type: ignore[arg-type]

    def fill_entry(self, quantity: Decimal = QUANTITY, price: Decimal = ENTRY_PRICE) -> Decision:
        return self.report(OrderRole.ENTRY, ReportOutcome.FILLED, filled_quantity=quantity, average_price=price)

    def snapshot(self, *, fetched_at: int | None = None, at: int | None = None, **fields: object) -> Decision:
        return self.send(
            lambda ts: snapshot(fetched_at if fetched_at is not None else ts, **fields),  # type: ignore[arg-type]
            at=at,
        )

    def flat(self, *, fetched_at: int | None = None, at: int | None = None) -> Decision:
        return self.send(lambda ts: flat_snapshot(fetched_at if fetched_at is not None else ts), at=at)

    def deadline(
        self, *, at: int | None = None, position_id: str | None = None, status: Status | None = None
    ) -> Decision:
        """Fire the timer for the position (default: exactly at its deadline)."""
        position = self.position
        due = position.deadline_at if position.deadline_at is not None else self.now + STEP_MS
        fire_at = at if at is not None else max(due, self.now + 1)
        return self.send(
            lambda ts: Deadline(
                position_id=position_id if position_id is not None else position.id,
                status=status if status is not None else position.status,
                due_at=due,
                ts=ts,
            ),
            at=fire_at,
        )


# -- a feed in each status, reached through decide itself -----------------------------------


def feed_free() -> Feed:
    """A key with state but no position: a close was refused (its signal id is remembered)."""
    feed = Feed()
    feed.close("sig-seen")
    return feed


def feed_pending_entry() -> Feed:
    feed = Feed()
    feed.open()
    return feed


def feed_entry_placed() -> Feed:
    feed = feed_pending_entry()
    feed.report(OrderRole.ENTRY, ReportOutcome.ACCEPTED)
    return feed


def feed_pending_sl() -> Feed:
    feed = feed_pending_entry()
    feed.fill_entry()
    return feed


def feed_active() -> Feed:
    feed = feed_pending_sl()
    feed.report(OrderRole.STOP_LOSS, ReportOutcome.ACCEPTED, stop_price=Decimal("9.8"))
    return feed


def feed_closing() -> Feed:
    feed = feed_active()
    feed.close()
    return feed


def feed_closed() -> Feed:
    feed = feed_closing()
    feed.report(OrderRole.STOP_LOSS, ReportOutcome.CANCELED)  # the stop goes first, as commanded
    feed.report(OrderRole.CLOSE, ReportOutcome.FILLED, filled_quantity=QUANTITY, average_price=Decimal("11"))
    return feed


def feed_replacing_stop() -> Feed:
    """pending_sl held: a stop for the grown position rests, the undersized one awaits its cancel."""
    feed = feed_active()
    feed.snapshot(quantity=QUANTITY * 2)
    feed.report(OrderRole.STOP_LOSS, ReportOutcome.ACCEPTED)
    return feed


def feed_closed_awaiting_cancel() -> Feed:
    """closing held: the close filled, the stop's cancel is not confirmed yet."""
    feed = feed_closing()
    feed.report(OrderRole.CLOSE, ReportOutcome.FILLED, filled_quantity=QUANTITY, average_price=Decimal("11"))
    return feed


def feed_rolled_back() -> Feed:
    feed = feed_pending_entry()
    feed.report(OrderRole.ENTRY, ReportOutcome.REJECTED, error_code=-2019, error_message="Margin is insufficient.")
    return feed


FEEDS_BY_STATUS: dict[str, Callable[[], Feed]] = {
    "free": feed_free,
    "pending_entry": feed_pending_entry,
    "entry_placed": feed_entry_placed,
    "pending_sl": feed_pending_sl,
    "active": feed_active,
    "closing": feed_closing,
    "closed": feed_closed,
    "rolled_back": feed_rolled_back,
}

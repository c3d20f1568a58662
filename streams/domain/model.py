"""Immutable values of the position state machine (see docs/state-machine.md).

Money and quantities are `Decimal` (a float is refused at construction), times are epoch
milliseconds taken from the inputs. Every value is a frozen, slotted dataclass: a new state
is always a new value, which is what makes the Faust table write a changelog entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from streams.domain.exceptions import InvalidValueError

__all__ = [
    "AppliedInput",
    "AuditDecision",
    "RefusalCode",
    "is_stop_loss_pct",
    "Deadline",
    "ExchangeSnapshot",
    "ExecutionReport",
    "InputEvent",
    "InputKind",
    "InputPayload",
    "KeyState",
    "LatestSnapshot",
    "OrderRef",
    "OrderRole",
    "Policy",
    "Position",
    "PositionSource",
    "ReportOutcome",
    "SIGNAL_ID_RETENTION_MIN_MS",
    "SeenSignal",
    "Side",
    "Signal",
    "SignalAction",
    "Status",
]


class Side(StrEnum):
    """Direction of a position: `BUY` is long, `SELL` is short."""

    BUY = "BUY"
    SELL = "SELL"

    def opposite(self) -> Side:
        """The side that reduces a position of this side (its stop-loss and close side)."""
        return Side.SELL if self is Side.BUY else Side.BUY


class Status(StrEnum):
    """Lifecycle status of a position; the values are the external contract's strings."""

    PENDING_ENTRY = "pending_entry"
    ENTRY_PLACED = "entry_placed"
    PENDING_SL = "pending_sl"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"
    ROLLED_BACK = "rolled_back"

    @property
    def is_terminal(self) -> bool:
        """True for `closed` and `rolled_back`: the position has ended and the key is free."""
        return self in _TERMINAL

    @property
    def is_in_flight(self) -> bool:
        """True while an order of the position awaits an answer (the status has a deadline)."""
        return self in _IN_FLIGHT

    @property
    def is_live(self) -> bool:
        """True for every status that occupies the key (in flight or `active`)."""
        return self not in _TERMINAL


_TERMINAL = frozenset({Status.CLOSED, Status.ROLLED_BACK})
_IN_FLIGHT = frozenset({Status.PENDING_ENTRY, Status.ENTRY_PLACED, Status.PENDING_SL, Status.CLOSING})


class OrderRole(StrEnum):
    """What an order is for."""

    ENTRY = "entry"
    STOP_LOSS = "stop_loss"
    CLOSE = "close"


class SignalAction(StrEnum):
    """What a trading signal asks for."""

    OPEN = "open"
    CLOSE = "close"


class ReportOutcome(StrEnum):
    """What the executor learned about one order."""

    ACCEPTED = "accepted"  # resting at the exchange, e.g. a stop order NEW
    FILLED = "filled"
    REJECTED = "rejected"
    CANCELED = "canceled"
    NOT_FOUND = "not_found"  # answer to a query: the exchange has no such order
    UNKNOWN = "unknown"  # the executor gave up after retries; nothing is known


class PositionSource(StrEnum):
    """Who created a position: a signal, or the exchange snapshot that adopted it."""

    SIGNAL = "signal"
    EXCHANGE = "exchange"


class InputKind(StrEnum):
    """The kind of input an audit record is about."""

    SIGNAL = "signal"
    SNAPSHOT = "snapshot"
    REPORT = "report"
    DEADLINE = "deadline"


class AuditDecision(StrEnum):
    """What `decide` did with one input."""

    APPLIED = "applied"  # the position changed or commands were issued
    REFUSED = "refused"  # a signal that cannot be carried out (open while open, nothing to close)
    IGNORED = "ignored"  # nothing to do: stale, late, not due, or the exchange agrees already
    DUPLICATE = "duplicate"  # a signal id or an execution report seen before


class RefusalCode(StrEnum):
    """Why a signal was refused, as a stable code: metrics and pages count these, people read the reason."""

    ALREADY_OPEN = "already_open"  # an open while the key has a live position
    ALREADY_CLOSING = "already_closing"  # a close while one is under way or already requested
    NOTHING_TO_CLOSE = "nothing_to_close"  # a close on a key without a live position
    INVALID_SIGNAL = "invalid_signal"  # an open the state machine cannot carry out (no side, quantity <= 0, ...)


def is_stop_loss_pct(pct: Decimal) -> bool:
    """The one rule for a stop-loss distance: a percentage strictly between 0 and 100."""
    return Decimal(0) < pct < Decimal(100)


def require_finite_decimal(owner: object, name: str, value: object, *, optional: bool) -> None:
    """Refuse floats and non-finite numbers where money or quantities are expected."""
    if value is None and optional:
        return
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidValueError(
            f"{type(owner).__name__}.{name} must be a finite Decimal, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class Signal:
    """A trading signal from the feed. Field validity is judged by `decide`, not here."""

    signal_id: str
    action: SignalAction
    symbol: str
    exchange: str
    side: Side | None
    quantity: Decimal | None
    stop_loss_pct: Decimal | None
    ts: int

    def __post_init__(self) -> None:
        require_finite_decimal(self, "quantity", self.quantity, optional=True)
        require_finite_decimal(self, "stop_loss_pct", self.stop_loss_pct, optional=True)


@dataclass(frozen=True, slots=True)
class ExchangeSnapshot:
    """The exchange's position for one symbol at `fetched_at`.

    `quantity == 0` (and `side is None`) is *flat*. A failed fetch produces no snapshot at
    all: absence is never "flat".
    """

    exchange: str
    symbol: str
    fetched_at: int
    side: Side | None
    quantity: Decimal
    entry_price: Decimal | None
    # What the exchange marks the position at and its unrealized profit at that mark (Binance
    # positionRisk's markPrice, unRealizedProfit). Shown to people, never decided on; None in
    # snapshots written before they were read, or when the exchange sends none.
    mark_price: Decimal | None = None
    unrealized_pnl: Decimal | None = None

    def __post_init__(self) -> None:
        require_finite_decimal(self, "quantity", self.quantity, optional=False)
        require_finite_decimal(self, "entry_price", self.entry_price, optional=True)
        require_finite_decimal(self, "mark_price", self.mark_price, optional=True)
        require_finite_decimal(self, "unrealized_pnl", self.unrealized_pnl, optional=True)
        if self.quantity < 0:
            raise InvalidValueError(f"ExchangeSnapshot.quantity must be >= 0, got {self.quantity}")
        if (self.side is None) != (self.quantity == 0):
            raise InvalidValueError(
                "ExchangeSnapshot.side must be None exactly when quantity is 0, "
                f"got side={self.side!r} quantity={self.quantity}"
            )

    @property
    def is_flat(self) -> bool:
        """True when the exchange holds no position for the symbol."""
        return self.quantity == 0


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    """The executor's answer about one order (to a place, cancel or query command)."""

    position_id: str
    client_order_id: str
    role: OrderRole
    outcome: ReportOutcome
    ts: int
    exchange_order_id: str | None
    filled_quantity: Decimal | None
    average_price: Decimal | None
    stop_price: Decimal | None
    error_code: int | None
    error_message: str | None

    def __post_init__(self) -> None:
        require_finite_decimal(self, "filled_quantity", self.filled_quantity, optional=True)
        require_finite_decimal(self, "average_price", self.average_price, optional=True)
        require_finite_decimal(self, "stop_price", self.stop_price, optional=True)


@dataclass(frozen=True, slots=True)
class Deadline:
    """Emitted by the worker's timer when a position's `deadline_at` has passed."""

    position_id: str
    status: Status
    due_at: int
    ts: int


InputPayload = Signal | ExchangeSnapshot | ExecutionReport | Deadline


@dataclass(frozen=True, slots=True)
class InputEvent:
    """One input for the key `SYMBOL@exchange`, as written on the `position-inputs` topic.

    `policy` is the policy its producer ran with: recorded in the input, so that deciding
    it again (a replay, a decision diff) uses what the original run used. None for inputs
    written before it was recorded.
    """

    event_id: str
    key: str
    ts: int
    payload: InputPayload
    policy: Policy | None = None


@dataclass(frozen=True, slots=True)
class AppliedInput:
    """An input plus its offset in its partition: the input's identity for idempotence and ids."""

    offset: int
    event: InputEvent

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise InvalidValueError(f"AppliedInput.offset must be >= 0, got {self.offset}")


SIGNAL_ID_RETENTION_MIN_MS = 7 * 24 * 3600 * 1000
"""The contract's floor: a repeated signal id has no effect for at least 7 days."""


@dataclass(frozen=True, slots=True)
class Policy:
    """Settings `decide` needs: the default stop distance, the deadlines and the dedup memory.

    `signal_id_retention_ms` is how long a signal id is remembered after its first
    delivery, however many other signals arrive in between (bounded by time, not count).
    """

    default_stop_loss_pct: Decimal
    entry_timeout_ms: int
    stop_loss_timeout_ms: int
    close_timeout_ms: int
    signal_id_retention_ms: int = SIGNAL_ID_RETENTION_MIN_MS

    def __post_init__(self) -> None:
        require_finite_decimal(self, "default_stop_loss_pct", self.default_stop_loss_pct, optional=False)
        if not is_stop_loss_pct(self.default_stop_loss_pct):
            raise InvalidValueError(
                f"Policy.default_stop_loss_pct must be in (0, 100), got {self.default_stop_loss_pct}"
            )
        for name in ("entry_timeout_ms", "stop_loss_timeout_ms", "close_timeout_ms"):
            if getattr(self, name) <= 0:
                raise InvalidValueError(f"Policy.{name} must be > 0, got {getattr(self, name)}")
        if self.signal_id_retention_ms < 1:
            raise InvalidValueError(
                f"Policy.signal_id_retention_ms must be >= 1, got {self.signal_id_retention_ms}"
            )

    def timeout_for(self, status: Status) -> int | None:
        """How long `status` may wait for an answer; None for statuses without a deadline."""
        if status in (Status.PENDING_ENTRY, Status.ENTRY_PLACED):
            return self.entry_timeout_ms
        if status is Status.PENDING_SL:
            return self.stop_loss_timeout_ms
        if status is Status.CLOSING:
            return self.close_timeout_ms
        return None


@dataclass(frozen=True, slots=True)
class OrderRef:
    """An order commanded for one role of a position, and what it asked for.

    `side` and `quantity` are what the order was placed with (for a stop-loss: the side and
    the quantity it covers); None in states recorded before they were kept.
    """

    client_order_id: str
    attempt: int
    side: Side | None = None
    quantity: Decimal | None = None

    def __post_init__(self) -> None:
        require_finite_decimal(self, "quantity", self.quantity, optional=True)


@dataclass(frozen=True, slots=True)
class Position:
    """One position of a key, from its opening (or adoption) to its end.

    `quantity` is what the exchange holds (the exchange wins over the request);
    `version` is the offset of the input that last changed it (the sink's upsert guard);
    `seen_reports` holds `ids.report_key(client_order_id, outcome)` of every report that
    moved it, so a report delivered twice has no second effect.
    `orders_to_cancel` are orders of the position that must not stay open (a replaced
    stop-loss, the stop of a position that ends) until the exchange confirms them canceled,
    triggered or gone; `closed_at_exchange` is set once the exchange no longer holds the
    position (a close or the stop filled, a flat snapshot) while such a confirmation waits.
    """

    id: str
    symbol: str
    exchange: str
    side: Side
    quantity: Decimal
    requested_quantity: Decimal | None
    entry_price: Decimal | None
    stop_loss_pct: Decimal
    stop_loss_price: Decimal | None
    status: Status
    source: PositionSource
    signal_id: str | None
    opened_at: int
    closed_at: int | None
    updated_at: int
    deadline_at: int | None
    close_requested: bool
    entry_order: OrderRef | None
    stop_order: OrderRef | None
    close_order: OrderRef | None
    seen_reports: tuple[str, ...]
    version: int
    orders_to_cancel: tuple[OrderRef, ...] = ()
    closed_at_exchange: bool = False

    def __post_init__(self) -> None:
        require_finite_decimal(self, "quantity", self.quantity, optional=False)
        require_finite_decimal(self, "requested_quantity", self.requested_quantity, optional=True)
        require_finite_decimal(self, "entry_price", self.entry_price, optional=True)
        require_finite_decimal(self, "stop_loss_pct", self.stop_loss_pct, optional=False)
        require_finite_decimal(self, "stop_loss_price", self.stop_loss_price, optional=True)

    def order_for(self, role: OrderRole) -> OrderRef | None:
        """The order currently commanded for `role`, if any."""
        if role is OrderRole.ENTRY:
            return self.entry_order
        if role is OrderRole.STOP_LOSS:
            return self.stop_order
        return self.close_order


@dataclass(frozen=True, slots=True)
class SeenSignal:
    """A signal id a key has seen, and the input time of its first delivery."""

    signal_id: str
    first_seen_at: int


@dataclass(frozen=True, slots=True)
class LatestSnapshot:
    """The newest exchange snapshot a key was given: what the pages set its position against.

    `fetched_at` is the exchange's time of the fetch (the newest wins); `received_at` is the
    time of the snapshot input in the log (the broker's clock, the one the pages count the
    sync's age from). The rest is the snapshot as fetched; `quantity == 0` is flat.
    """

    fetched_at: int
    received_at: int
    side: Side | None
    quantity: Decimal
    entry_price: Decimal | None
    mark_price: Decimal | None
    unrealized_pnl: Decimal | None

    def __post_init__(self) -> None:
        require_finite_decimal(self, "quantity", self.quantity, optional=False)
        require_finite_decimal(self, "entry_price", self.entry_price, optional=True)
        require_finite_decimal(self, "mark_price", self.mark_price, optional=True)
        require_finite_decimal(self, "unrealized_pnl", self.unrealized_pnl, optional=True)

    @classmethod
    def of(cls, snapshot: ExchangeSnapshot, received_at: int) -> LatestSnapshot:
        """The reading of `snapshot`, received in the log at `received_at`."""
        return cls(fetched_at=snapshot.fetched_at, received_at=received_at, side=snapshot.side,
                   quantity=snapshot.quantity, entry_price=snapshot.entry_price, mark_price=snapshot.mark_price,
                   unrealized_pnl=snapshot.unrealized_pnl)


@dataclass(frozen=True, slots=True)
class KeyState:
    """Everything the table holds for one key.

    The position is kept after it ends (closed / rolled_back) so that late or stale inputs
    can be recognised. `last_exchange_ts` is the newest exchange time seen (reports and
    snapshots): a snapshot fetched at or before it is stale. `seen_signals` are the signal
    ids seen within the policy's retention, oldest first. `latest_snapshot` is the newest
    exchange snapshot of the key (by its fetch time), stale or not: it is what the pages show
    (mark price, unrealized PnL, the exchange's quantity, the sync's age), never what
    decisions read.
    """

    key: str
    last_offset: int
    seen_signals: tuple[SeenSignal, ...]
    position: Position | None
    last_exchange_ts: int
    latest_snapshot: LatestSnapshot | None = None

    @classmethod
    def initial(cls, key: str) -> KeyState:
        """The state of a key no input has been applied to yet."""
        return cls(key=key, last_offset=-1, seen_signals=(), position=None, last_exchange_ts=0)

    def has_seen_signal(self, signal_id: str) -> bool:
        """True when `signal_id` was delivered to this key within the retention."""
        return signal_id in [seen.signal_id for seen in self.seen_signals]

    @property
    def live_position(self) -> Position | None:
        """The position occupying the key (in flight or active), or None when the key is free."""
        if self.position is not None and self.position.status.is_live:
            return self.position
        return None

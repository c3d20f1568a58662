"""What `decide` asks the outside world to do, and what it records: commands, audit, decision.

Commands are imperative and carry everything the executor needs, so it never reads the
table. Each has a deterministic `command_id` (see `streams.domain.ids.command_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from streams.domain.model import (
    AuditDecision,
    InputKind,
    KeyState,
    OrderRole,
    RefusalCode,
    ReportOutcome,
    Side,
    Status,
    require_finite_decimal,
)

__all__ = [
    "AuditRecord",
    "CancelOrder",
    "ClosePosition",
    "Command",
    "Decision",
    "PlaceEntry",
    "PlaceStopLoss",
    "QueryOrder",
]


@dataclass(frozen=True, slots=True)
class _CommandHeader:
    """Fields every command carries."""

    command_id: str
    key: str
    position_id: str
    symbol: str
    exchange: str

    #: The command's name on the wire (a subclass keyword, as the role of an order it places).
    kind: ClassVar[str]

    def __init_subclass__(cls, *, kind: str | None = None, role: OrderRole | None = None, **kwargs: object) -> None:
        # ``class PlaceEntry(_OrderCommand, kind=..., role=...)``: what a command is, said where it is named.
        super(_CommandHeader, cls).__init_subclass__(**kwargs)  # zero-argument super() fails in a slots dataclass
        if kind is not None:
            cls.kind = kind
        if role is not None:
            cls.role = role


@dataclass(frozen=True, slots=True)
class _OrderCommand(_CommandHeader):
    """An order the position places: its client id, side and quantity."""

    role: ClassVar[OrderRole]

    client_order_id: str
    side: Side
    quantity: Decimal

    def __post_init__(self) -> None:
        require_finite_decimal(self, "quantity", self.quantity, optional=False)


@dataclass(frozen=True, slots=True)
class PlaceEntry(_OrderCommand, kind="place_entry", role=OrderRole.ENTRY):
    """Place the market order that opens the position."""


@dataclass(frozen=True, slots=True)
class PlaceStopLoss(_OrderCommand, kind="place_stop_loss", role=OrderRole.STOP_LOSS):
    """Place a reduce-only stop-market order.

    `stop_price` is raw (from the entry price and the pct); the executor rounds it to the
    market's precision and reports the placed price back.
    """

    stop_price: Decimal

    def __post_init__(self) -> None:
        _OrderCommand.__post_init__(self)  # zero-argument super() fails in a slots dataclass
        require_finite_decimal(self, "stop_price", self.stop_price, optional=False)


@dataclass(frozen=True, slots=True)
class ClosePosition(_OrderCommand, kind="close_position", role=OrderRole.CLOSE):
    """Close the position with a reduce-only market order."""


@dataclass(frozen=True, slots=True)
class CancelOrder(_CommandHeader, kind="cancel_order"):
    """Cancel an order of the position (the resting stop-loss)."""

    client_order_id: str
    role: OrderRole


@dataclass(frozen=True, slots=True)
class QueryOrder(_CommandHeader, kind="query_order"):
    """Ask the exchange what became of an order; the answer comes back as a report."""

    client_order_id: str
    role: OrderRole


Command = PlaceEntry | PlaceStopLoss | ClosePosition | CancelOrder | QueryOrder


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One row of the audit log per applied input (refusals and no-ops included).

    Its natural key is `(key, offset)`.
    """

    key: str
    offset: int
    event_id: str
    position_id: str | None
    input_kind: InputKind
    decision: AuditDecision
    reason: str
    ts: int
    #: The audited position's status once the input was applied (None: no position, or no longer the key's).
    status_after: Status | None = None
    #: The order concerned: the reported one, or the first order the decision placed.
    client_order_id: str | None = None
    order_role: OrderRole | None = None
    #: The exchange's answer for a reported order; None for an order placed.
    order_outcome: ReportOutcome | None = None
    #: Why a refused input was refused, as a stable code (None unless the decision is ``refused``).
    refusal_code: RefusalCode | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What `decide` returns: the new state, the commands to send and the audit record.

    `audit` is None only for a redelivered input (offset already applied); then the state
    is the one given and there are no commands. `position_changed` tells the agent to
    publish the position's new value.
    """

    state: KeyState
    commands: tuple[Command, ...]
    audit: AuditRecord | None
    position_changed: bool

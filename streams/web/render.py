"""Positions as JSON objects: the contract's columns (section 4), in the contract's formats.

Times are ISO-8601 in UTC with millisecond precision and a ``Z`` (``2026-11-25T18:42:20.123Z``);
prices and quantities are decimal strings exactly as the table holds them, never floats
and never in exponent notation; absent values are ``null``. A few fields beyond the
contract help a person (or the HTML page) read the row: the key, the requested quantity,
the stop-loss percentage and the deadline of the step in flight; and what the key's latest
exchange snapshot says (``mark_price``, ``unrealized_pnl``, ``last_snapshot``: the exchange's
side, quantity and entry price, the fetch's exchange time and the time the pipeline received
it), null before the key's first snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from streams.domain import KeyState, LatestSnapshot, Position

__all__ = ["CONTRACT_COLUMNS", "decimal_text", "iso_utc", "live_positions", "position_to_json", "snapshot_to_json",
           "state_to_json"]

#: The columns of ``monitoring.positions`` (contract section 4) every object carries.
CONTRACT_COLUMNS = (
    "id", "symbol", "exchange", "side", "quantity", "entry_price", "stop_loss_price", "status",
    "source", "signal_id", "opened_at", "closed_at", "updated_at",
)


def iso_utc(epoch_ms: int | None) -> str | None:
    """``epoch_ms`` as ISO-8601 UTC with milliseconds and ``Z``; None stays None."""
    if epoch_ms is None:
        return None
    # Integer arithmetic: a float division could turn .123 into .122999.
    seconds, millis = divmod(int(epoch_ms), 1000)
    moment = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=millis * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decimal_text(value: Decimal | None) -> str | None:
    """A decimal as plain digits (``61.80``, never ``6.18E+1``); None stays None."""
    if value is None:
        return None
    return format(value, "f")


def snapshot_to_json(snapshot: LatestSnapshot | None) -> dict | None:
    """The key's latest exchange snapshot as JSON; None before its first one."""
    if snapshot is None:
        return None
    return {
        "fetched_at": iso_utc(snapshot.fetched_at),
        "received_at": iso_utc(snapshot.received_at),
        "side": snapshot.side.value if snapshot.side is not None else None,
        "quantity": decimal_text(snapshot.quantity),
        "entry_price": decimal_text(snapshot.entry_price),
        "mark_price": decimal_text(snapshot.mark_price),
        "unrealized_pnl": decimal_text(snapshot.unrealized_pnl),
    }


def state_to_json(state: KeyState) -> dict:
    """The key's live position with what its latest snapshot says (mark price, PnL); the position must be live."""
    position = state.live_position
    if position is None:
        raise ValueError(f"{state.key} has no live position")
    return position_to_json(position, state.latest_snapshot)


def position_to_json(position: Position, latest_snapshot: LatestSnapshot | None = None) -> dict:
    """The JSON object of one position: the contract's columns, then the helpful extras."""
    return {
        "id": position.id,
        "symbol": position.symbol,
        "exchange": position.exchange,
        "side": position.side.value,
        "quantity": decimal_text(position.quantity),
        "entry_price": decimal_text(position.entry_price),
        "stop_loss_price": decimal_text(position.stop_loss_price),
        "status": position.status.value,
        "source": position.source.value,
        "signal_id": position.signal_id,
        "opened_at": iso_utc(position.opened_at),
        "closed_at": iso_utc(position.closed_at),
        "updated_at": iso_utc(position.updated_at),
        # Beyond the contract:
        "key": f"{position.symbol}@{position.exchange}",
        "requested_quantity": decimal_text(position.requested_quantity),
        "stop_loss_pct": decimal_text(position.stop_loss_pct),
        "deadline_at": iso_utc(position.deadline_at),
        "close_requested": position.close_requested,
        "stop_order_quantity": decimal_text(position.stop_order.quantity) if position.stop_order else None,
        # From the key's latest exchange snapshot (shown, never decided on):
        "mark_price": decimal_text(latest_snapshot.mark_price) if latest_snapshot else None,
        "unrealized_pnl": decimal_text(latest_snapshot.unrealized_pnl) if latest_snapshot else None,
        "last_snapshot": snapshot_to_json(latest_snapshot),
    }


def live_positions(states: list[KeyState]) -> list[Position]:
    """The positions that occupy their key (every status but ``closed`` and ``rolled_back``)."""
    return [state.live_position for state in states if state.live_position is not None]

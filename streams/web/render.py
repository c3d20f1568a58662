"""Positions as JSON objects: the contract's columns (section 4), in the contract's formats.

Times are ISO-8601 in UTC with millisecond precision and a ``Z`` (``2026-11-25T18:42:20.123Z``);
prices and quantities are decimal strings exactly as the table holds them, never floats
and never in exponent notation; absent values are ``null``. A few fields beyond the
contract help a person (or the HTML page) read the row: the key, the requested quantity,
the stop-loss percentage and the deadline of the step in flight.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from streams.domain import KeyState, Position

__all__ = ["CONTRACT_COLUMNS", "decimal_text", "iso_utc", "live_positions", "position_to_json"]

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


def position_to_json(position: Position) -> dict:
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
    }


def live_positions(states: list[KeyState]) -> list[Position]:
    """The positions that occupy their key (every status but ``closed`` and ``rolled_back``)."""
    return [state.live_position for state in states if state.live_position is not None]

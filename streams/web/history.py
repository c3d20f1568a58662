"""A key's history from PostgreSQL: its positions newest first, each with every input applied or refused for it.

``GET /positions/{SYMBOL}@{exchange}/history/`` (contract, section 5) answers from the
sink's tables, not from the worker's table: closed and rolled-back positions are there, and
every worker answers the same whichever owns the key. An event belongs to a position by the
position id its audit record carries: reports and deadlines name theirs, and every other
input (a refused second open, a repeated signal id, a snapshot) carries the id of the
position live on the key when it was applied.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from streams.web.errors import WebError

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "HistoryUnavailable", "PositionHistory", "json_value", "parse_limit"]

logger = logging.getLogger(__name__)

#: Positions per answer unless ``?limit=N`` says otherwise, and the most one answer may hold.
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

_POSITIONS = """
SELECT id, symbol, exchange, side, quantity, entry_price, stop_loss_price, status, source, signal_id,
       opened_at, closed_at, updated_at, key, requested_quantity, stop_loss_pct, deadline_at, close_requested, version
FROM monitoring.positions
WHERE key = $1
ORDER BY opened_at DESC, version DESC
LIMIT $2
"""

#: The keys of an event in the answer, in the order ``_EVENTS`` selects them (after position_id).
EVENT_KEYS = ("at", "kind", "decision", "reason", "status_after", "client_order_id", "role", "outcome", "offset",
              "event_id")

# The time is formatted by PostgreSQL (ISO UTC, milliseconds, Z, as every view writes it):
# 10,000 events shaped in Python from datetimes took longer than their query.
_EVENTS = """
SELECT position_id, to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), kind, decision, reason,
       status_after, client_order_id, order_role, order_outcome, input_offset, event_id
FROM monitoring.position_events
WHERE key = $1 AND position_id = ANY($2::text[])
ORDER BY input_offset
"""


class HistoryUnavailable(WebError, RuntimeError):
    """PostgreSQL did not answer, or its schema is older than this worker (the sink migrates it)."""


def parse_limit(text: str | None) -> int:
    """``?limit=N``: 1 to ``MAX_LIMIT`` positions, ``DEFAULT_LIMIT`` when absent; ValueError otherwise."""
    if text is None or text == "":
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def json_value(value: Any) -> Any:
    """A database value as the JSON views write it: ISO UTC times with milliseconds, plain decimal digits."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return format(value, "f")  # plain digits, as /positions/ writes them
    return value


class PositionHistory:
    """Reads histories through a small connection pool, opened at the first request."""

    def __init__(self, database_url: str, *, pool_size: int = 2) -> None:
        self._database_url = database_url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def connections(self) -> asyncpg.Pool:
        """The pool, opened at the first call; ``HistoryUnavailable`` when PostgreSQL does not answer."""
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(self._database_url, min_size=0, max_size=self._pool_size,
                                                       command_timeout=10)
            except (OSError, asyncpg.PostgresError) as error:
                raise HistoryUnavailable(f"PostgreSQL is unavailable: {type(error).__name__}: {error}") from error
        return self._pool

    async def read(self, key: str, limit: int = DEFAULT_LIMIT) -> dict[str, Any] | None:
        """``{"key", "positions": [... each with "events"]}``, newest position first; None when the key never had one."""
        pool = await self.connections()
        try:
            async with pool.acquire() as connection:
                positions = await connection.fetch(_POSITIONS, key, limit)
                if not positions:
                    return None
                events = await connection.fetch(_EVENTS, key, [row["id"] for row in positions])
        except asyncpg.UndefinedColumnError as error:
            raise HistoryUnavailable(f"the database schema is older than this worker (start the sink, it migrates "
                                     f"it): {error}") from error
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise HistoryUnavailable(f"PostgreSQL is unavailable: {type(error).__name__}: {error}") from error
        by_position: dict[str, list[dict[str, Any]]] = {row["id"]: [] for row in positions}
        for row in events:
            by_position[row[0]].append(dict(zip(EVENT_KEYS, row[1:])))
        return {"key": key, "positions": [
            {**{name: json_value(value) for name, value in row.items()}, "events": by_position[row["id"]]}
            for row in positions
        ]}

    async def close(self) -> None:
        """Closes the pool, if one was opened."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

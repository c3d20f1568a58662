"""Positions that ended (closed or rolled back), from PostgreSQL: the desk's look back.

``GET /positions/closed/`` answers the positions that ended in the last ``?hours=`` (24 by
default), newest first, optionally of one ``?symbol=``; ``/positions/closed.html`` shows them
with links to each key's timeline. Read from the sink's table, so every worker answers the
same.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from streams.web.history import HistoryUnavailable, json_value

__all__ = ["ClosedQuery", "parse_closed_query", "read_closed", "render_closed_page"]

#: Rows per answer at most (newest first).
MAX_ROWS = 1000

_CLOSED = """
SELECT id, symbol, exchange, side, quantity, entry_price, stop_loss_price, status, source, signal_id,
       opened_at, closed_at, updated_at, key, requested_quantity, stop_loss_pct
FROM monitoring.positions
WHERE status IN ('closed', 'rolled_back') AND updated_at >= $1 AND ($2::text IS NULL OR symbol = $2)
ORDER BY updated_at DESC
LIMIT $3
"""


class ClosedQuery:
    """What the closed view was asked: the window in hours and an optional symbol."""

    def __init__(self, hours: float, symbol: str | None) -> None:
        self.hours = hours
        self.symbol = symbol


def parse_closed_query(query: Any) -> ClosedQuery:
    """``?hours=`` (0 < hours <= 720, default 24) and ``?symbol=`` (letters and digits); ValueError otherwise."""
    raw_hours = query.get("hours") or "24"
    try:
        hours = float(raw_hours)
    except ValueError:
        raise ValueError(f"hours must be a number, got {raw_hours!r}") from None
    if not 0 < hours <= 720:
        raise ValueError(f"hours must be more than 0 and at most 720, got {raw_hours!r}")
    symbol = query.get("symbol") or None
    if symbol is not None and not (symbol.isascii() and symbol.isalnum() and len(symbol) <= 40):
        raise ValueError(f"symbol must be letters and digits, got {symbol!r}")
    return ClosedQuery(hours, symbol.upper() if symbol else None)


async def read_closed(pool: asyncpg.Pool, asked: ClosedQuery, now: datetime | None = None) -> list[dict[str, Any]]:
    """The positions that ended within the window, newest first (at most ``MAX_ROWS``)."""
    since = (now or datetime.now(UTC)) - timedelta(hours=asked.hours)
    try:
        async with pool.acquire() as connection:
            rows = await connection.fetch(_CLOSED, since, asked.symbol, MAX_ROWS)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise HistoryUnavailable(f"PostgreSQL is unavailable: {type(error).__name__}: {error}") from error
    return [{name: json_value(value) for name, value in row.items()} for row in rows]


def render_closed_page(positions: list[dict[str, Any]], asked: ClosedQuery, *, title: str,
                       error: str | None = None) -> str:
    """The HTML table of ended positions, each linked to its key's timeline."""
    def cell(value: object) -> str:
        return "\u2013" if value in (None, "") else html.escape(str(value))

    rows = "".join(
        f'<tr data-position-id="{html.escape(p["id"])}"><td><a href="{html.escape(p["key"])}/history.html">'
        f'{html.escape(p["key"])}</a></td><td>{cell(p["side"])}</td><td class="st-{html.escape(p["status"])}">'
        f'{cell(p["status"])}</td><td class="num">{cell(p["quantity"])}</td><td class="num">'
        f'{cell(p["entry_price"])}</td><td class="num">{cell(p["opened_at"])}</td><td class="num">'
        f'{cell(p["closed_at"] or p["updated_at"])}</td><td>{cell(p["source"])}</td></tr>'
        for p in positions)
    scope = f" of {html.escape(asked.symbol)}" if asked.symbol else ""
    body = (f'<p class="error">{html.escape(error)}</p>' if error else
            f"<table><thead><tr><th>Key</th><th>Side</th><th>Status</th><th>Quantity</th><th>Entry</th>"
            f"<th>Opened</th><th>Ended</th><th>Source</th></tr></thead><tbody>{rows}</tbody></table>"
            + ("" if positions else '<p class="empty">None ended in this window.</p>'))
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ended positions \u2013 {html.escape(title)}</title>
<style>
body {{ margin:0; font:14px/1.45 system-ui, sans-serif; background:#f1f5f9; color:#0f172a; }}
header {{ background:#0f172a; color:#f8fafc; padding:16px 28px; }} header a {{ color:#93c5fd; font-size:12px; }}
main {{ padding:20px 28px; }} table {{ width:100%; border-collapse:collapse; background:#fff; }}
th, td {{ padding:8px 12px; border-bottom:1px solid #e2e8f0; text-align:left; }}
td.num {{ text-align:right; font-family:ui-monospace, monospace; font-size:12px; }}
.st-rolled_back {{ color:#991b1b; }} .error {{ color:#991b1b; }} .empty {{ color:#64748b; }}
</style></head>
<body><header><h1>Positions ended in the last {asked.hours:g} h{scope}</h1>
<a href="../">\u2190 open positions</a></header>
<main>{body}</main></body></html>
"""

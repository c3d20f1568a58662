"""The HTML timeline of a key's positions: one self-contained document, rendered on the server.

Each position shows its columns (quantity held, as the exchange reports it, against the
quantity the signal asked for; the stop-loss price) and its events in log order with the
time since the step before, so "signal -> entry placed -> filled -> stop placed -> active"
reads as durations. Refusals are highlighted. Above them, a live position is set against
the exchange: its side, quantity, entry and stop (the stop price the exchange accepted and
the quantity the stop order covers) beside what the key's latest snapshot shows (side,
quantity, entry, mark price, unrealized PnL), each disagreement marked. Data reaches the
page only through ``html.escape``; nothing is loaded from anywhere else.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["render_history_page", "step_duration"]

_STYLE = """
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  background:#f1f5f9; color:#0f172a; }
header { background:#0f172a; color:#f8fafc; padding:16px 28px; }
header h1 { font-size:18px; margin:0; font-weight:600; }
header a { color:#93c5fd; font-size:12px; }
main { padding:20px 28px 28px; }
.position { background:#fff; border:1px solid #e2e8f0; border-radius:10px; margin-bottom:18px; overflow:hidden; }
.position h2 { font-size:15px; margin:0; padding:12px 16px; border-bottom:1px solid #e2e8f0; background:#f8fafc; }
.facts { display:flex; flex-wrap:wrap; gap:8px 24px; padding:10px 16px; font-size:13px; }
.facts span b { color:#64748b; font-weight:500; margin-right:4px; }
table { width:100%; border-collapse:collapse; }
th { text-align:left; font-size:11px; text-transform:uppercase; letter-spacing:.5px; color:#64748b;
  background:#f8fafc; padding:8px 12px; border-top:1px solid #e2e8f0; border-bottom:1px solid #e2e8f0; }
td { padding:8px 12px; border-bottom:1px solid #f1f5f9; vertical-align:top; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap;
  font-family:ui-monospace, Menlo, "DejaVu Sans Mono", monospace; font-size:12px; }
tr.refused td { background:#fef2f2; }
tr.refused .decision { color:#b91c1c; font-weight:700; }
.chip { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; font-weight:600;
  background:#e2e8f0; }
.st-active { background:#dcfce7; color:#15803d; } .st-closed { background:#e2e8f0; color:#334155; }
.st-rolled_back { background:#fee2e2; color:#991b1b; } .st-closing { background:#ede9fe; color:#6d28d9; }
.st-pending_entry, .st-entry_placed, .st-pending_sl { background:#fef3c7; color:#b45309; }
.muted { color:#64748b; font-size:12px; }
.order { font-family:ui-monospace, Menlo, "DejaVu Sans Mono", monospace; font-size:12px; }
.empty { padding:24px; color:#64748b; }
.versus table { width:auto; min-width:560px; }
.versus td.num { text-align:right; }
.versus tr.differs td { background:#fef2f2; }
.versus tr.differs .verdict { color:#b91c1c; font-weight:700; }
.versus .verdict { color:#15803d; font-size:12px; }
.pnl-pos { color:#15803d; } .pnl-neg { color:#b91c1c; }
"""


def _text(value: object) -> str:
    return "\u2013" if value in (None, "") else html.escape(str(value))


def _parse(at: str | None) -> datetime | None:
    return datetime.fromisoformat(at.replace("Z", "+00:00")) if at else None


def step_duration(before: str | None, after: str | None) -> str:
    """The time between two ISO instants as a person reads it (``+850 ms``, ``+4.2 s``, ``+3 m 5 s``)."""
    start, end = _parse(before), _parse(after)
    if start is None or end is None:
        return ""
    millis = int((end - start).total_seconds() * 1000)
    sign = "+" if millis >= 0 else "\u2212"
    millis = abs(millis)
    if millis < 1000:
        return f"{sign}{millis} ms"
    if millis < 60_000:
        return f"{sign}{millis / 1000:.1f} s"
    minutes, seconds = divmod(millis // 1000, 60)
    if minutes < 60:
        return f"{sign}{minutes} m {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours} h {minutes} m"


def _order(event: Mapping[str, Any]) -> str:
    if not event.get("client_order_id"):
        return ""
    parts = [html.escape(str(part)) for part in (event.get("role"), event.get("client_order_id"),
                                                 event.get("outcome")) if part]
    return '<span class="order">' + " \u00b7 ".join(parts) + "</span>"


def _events(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return '<div class="empty">No event recorded for this position yet.</div>'
    rows = []
    previous: str | None = None
    for event in events:
        refused = event["decision"] == "refused"
        status = event.get("status_after")
        chip = f'<span class="chip st-{html.escape(status)}">{html.escape(status)}</span>' if status else ""
        rows.append(
            f'<tr class="event{" refused" if refused else ""}" data-offset="{int(event["offset"])}">'
            f'<td class="num">{_text(event["at"])}</td>'
            f'<td class="num">{html.escape(step_duration(previous, event["at"]))}</td>'
            f'<td>{_text(event["kind"])}</td>'
            f'<td class="decision">{_text(event["decision"])}</td>'
            f"<td>{chip}</td>"
            f'<td>{_order(event)}</td>'
            f'<td class="muted">{_text(event["reason"])}</td>'
            "</tr>")
        previous = event["at"]
    return ("<table><thead><tr><th>At (UTC)</th><th>Since previous</th><th>Input</th><th>Decision</th>"
            "<th>Status after</th><th>Order</th><th>Reason</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _position(position: Mapping[str, Any]) -> str:
    status = str(position["status"])
    facts = [
        ("side", position["side"]), ("quantity held", position["quantity"]),
        ("requested", position.get("requested_quantity")), ("entry price", position["entry_price"]),
        ("stop-loss price", position["stop_loss_price"]), ("stop-loss %", position.get("stop_loss_pct")),
        ("source", position["source"]), ("signal", position["signal_id"]), ("opened", position["opened_at"]),
        ("closed", position["closed_at"]), ("updated", position["updated_at"]),
    ]
    return (
        f'<section class="position" data-position-id="{html.escape(str(position["id"]))}">'
        f'<h2>{html.escape(str(position["id"]))} <span class="chip st-{html.escape(status)}">'
        f'{html.escape(status)}</span></h2>'
        f'<div class="facts">{"".join(f"<span><b>{name}</b>{_text(value)}</span>" for name, value in facts)}</div>'
        f'{_events(position["events"])}</section>')


def _number(text: object) -> Decimal | None:
    try:
        return Decimal(str(text)) if text not in (None, "") else None
    except InvalidOperation:
        return None


def _versus_row(check: str, label: str, ours: object, theirs: object, agree: bool | None) -> str:
    verdict = "" if agree is None else ("agrees" if agree else "differs")
    return (f'<tr data-check="{check}" class="{"differs" if agree is False else ""}"><td>{label}</td>'
            f'<td class="num ours">{_text(ours)}</td><td class="num theirs">{_text(theirs)}</td>'
            f'<td class="verdict">{verdict}</td></tr>')


def _versus(current: Mapping[str, Any] | None, unavailable: str | None) -> str:
    """The live position against the exchange's latest snapshot (``GET /positions/{key}/``'s answer)."""
    heading = '<section class="position versus" id="versus"><h2>Now, against the exchange</h2>'
    if unavailable:
        return f'{heading}<div class="empty">The live position could not be read: {html.escape(unavailable)}</div></section>'
    if current is None:
        return f'{heading}<div class="empty">No open or in-flight position: nothing to set against the exchange.</div></section>'
    snapshot = current.get("last_snapshot")
    if snapshot is None:
        return (f'{heading}<div class="empty">Position {html.escape(str(current["id"]))} '
                f'({html.escape(str(current["status"]))}): no exchange snapshot of this key yet.</div></section>')
    ours_qty, theirs_qty = _number(current["quantity"]), _number(snapshot["quantity"])
    stop_qty = _number(current.get("stop_order_quantity"))
    pnl = _number(snapshot.get("unrealized_pnl"))
    pnl_class = "" if pnl is None else ("pnl-pos" if pnl >= 0 else "pnl-neg")
    rows = [
        _versus_row("side", "side", current["side"], snapshot["side"], current["side"] == snapshot["side"]),
        _versus_row("quantity", "quantity", current["quantity"], snapshot["quantity"],
                    None if ours_qty is None or theirs_qty is None else ours_qty == theirs_qty),
        _versus_row("entry", "entry price", current["entry_price"], snapshot["entry_price"],
                    None if not (current["entry_price"] and snapshot["entry_price"])
                    else _number(current["entry_price"]) == _number(snapshot["entry_price"])),
        _versus_row("stop", "stop-loss covers (stop order quantity / exchange quantity)",
                    current.get("stop_order_quantity"), snapshot["quantity"],
                    None if stop_qty is None or theirs_qty is None else stop_qty >= theirs_qty),
        _versus_row("stop_price", "stop-loss price / mark price", current["stop_loss_price"],
                    snapshot.get("mark_price"), None),
        f'<tr data-check="pnl"><td>unrealized PnL at the mark</td><td class="num ours">–</td>'
        f'<td class="num theirs {pnl_class}">{_text(snapshot.get("unrealized_pnl"))}</td><td></td></tr>',
    ]
    return (f'{heading}<div class="facts"><span><b>position</b>{_text(current["id"])}</span>'
            f'<span><b>status</b>{_text(current["status"])}</span>'
            f'<span><b>snapshot fetched</b>{_text(snapshot["fetched_at"])}</span>'
            f'<span><b>received</b>{_text(snapshot["received_at"])}</span></div>'
            '<table><thead><tr><th></th><th>pipeline</th><th>exchange (latest snapshot)</th><th></th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def render_history_page(history: Mapping[str, Any] | None, *, key: str, title: str,
                        error: str | None = None, current: Mapping[str, Any] | None = None,
                        current_unavailable: str | None = None) -> str:
    """The page of ``history`` (``PositionHistory.read``'s answer); ``None`` says the key never had a position.

    ``current`` is the key's live position as ``GET /positions/{key}/`` answers it (None: none
    is live), set against the exchange at the top; ``current_unavailable`` says why it could
    not be had.
    """
    if error:
        body = f'<div class="position"><div class="empty">{html.escape(error)}</div></div>'
    elif history is None:
        body = f'<div class="position"><div class="empty">{html.escape(key)} never had a position.</div></div>'
    else:
        body = _versus(current, current_unavailable) + "".join(_position(position) for position in history["positions"])
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(key)} \u2013 {html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header><h1>{html.escape(key)}: history</h1><a href="../../">\u2190 open positions</a></header>
<main>{body}</main>
</body>
</html>
"""

"""The HTML page of open and in-flight positions: one self-contained document, no external asset.

The server renders the rows it has (so the page shows something without JavaScript, and
a screenshot or a text browser sees the data); a small inline script then fetches
``positions/`` every two seconds and redraws, and ticks the ages every second. Nothing is
loaded from anywhere else: styles and script are inline, there are no fonts or images.
Data reaches the DOM only as text (``textContent`` in the script, ``html.escape`` here).
"""

from __future__ import annotations

import html
import json
import re
import time
import urllib.parse
from collections.abc import Sequence

__all__ = ["render_page", "STATUS_LABELS"]

#: How each live status reads on the page, in lifecycle order (also the order of the summary).
STATUS_LABELS = {
    "pending_entry": "pending entry",
    "entry_placed": "entry placed",
    "pending_sl": "pending stop-loss",
    "active": "active",
    "closing": "closing",
}

REFRESH_MS = 2000
_EMPTY = "No open or in-flight positions."
_EMPTY_ERROR = "Waiting for every worker to answer\u2026"

_STYLE = """
:root { --bg:#0f172a; --panel:#ffffff; --ink:#0f172a; --muted:#64748b; --line:#e2e8f0;
  --pending_entry:#b45309; --pending_entry-bg:#fef3c7; --entry_placed:#0369a1; --entry_placed-bg:#e0f2fe;
  --pending_sl:#be123c; --pending_sl-bg:#ffe4e6; --active:#15803d; --active-bg:#dcfce7;
  --closing:#6d28d9; --closing-bg:#ede9fe; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  background:#f1f5f9; color:var(--ink); }
header { background:var(--bg); color:#f8fafc; padding:16px 28px; display:flex; align-items:center;
  justify-content:space-between; gap:16px; }
header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.2px; }
header .sub { color:#94a3b8; font-size:12px; margin-top:2px; }
header .sub a.ended { color:#93c5fd; margin-left:8px; }
.conn { display:flex; align-items:center; gap:8px; font-size:12px; color:#cbd5e1; white-space:nowrap; }
.dot { width:9px; height:9px; border-radius:50%; background:#22c55e; box-shadow:0 0 0 3px rgba(34,197,94,.25); }
.dot.stale { background:#ef4444; box-shadow:0 0 0 3px rgba(239,68,68,.25); }
main { padding:20px 28px 28px; }
.summary { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:16px; }
.card { --c:#0f172a; background:var(--panel); border:1px solid var(--line); border-left:4px solid var(--c);
  border-radius:10px; padding:10px 18px 10px 14px; min-width:150px; }
.card .n { font-size:24px; font-weight:650; font-variant-numeric:tabular-nums; color:var(--c); line-height:1.2; }
.card .l { font-size:11px; color:var(--muted); text-transform:uppercase; letter-spacing:.5px; }
.sc-pending_entry { --c:var(--pending_entry); } .sc-entry_placed { --c:var(--entry_placed); }
.sc-pending_sl { --c:var(--pending_sl); } .sc-active { --c:var(--active); } .sc-closing { --c:var(--closing); }
.banner { display:none; margin-bottom:14px; padding:10px 14px; border-radius:8px; background:#fee2e2;
  color:#991b1b; border:1px solid #fecaca; }
.banner.show { display:block; }
.table-wrap { background:var(--panel); border:1px solid var(--line); border-radius:10px; overflow:hidden; }
table { width:100%; border-collapse:collapse; }
th { text-align:left; font-size:11px; text-transform:uppercase; letter-spacing:.5px; color:var(--muted);
  background:#f8fafc; padding:9px 12px; border-bottom:1px solid var(--line); white-space:nowrap; }
td { padding:9px 12px; border-bottom:1px solid #f1f5f9; white-space:nowrap; vertical-align:middle; }
tr:last-child td { border-bottom:none; }
tbody tr:hover { background:#f8fafc; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums;
  font-family: ui-monospace, "SFMono-Regular", Menlo, "DejaVu Sans Mono", monospace; font-size:13px; }
.sym { font-weight:650; }
.exch { color:var(--muted); font-size:12px; margin-left:4px; }
.chip { display:inline-block; padding:2px 9px; border-radius:999px; font-size:12px; font-weight:600; }
.side-BUY { color:#15803d; background:#dcfce7; }
.side-SELL { color:#b91c1c; background:#fee2e2; }
.st-pending_entry { color:var(--pending_entry); background:var(--pending_entry-bg); }
.st-entry_placed { color:var(--entry_placed); background:var(--entry_placed-bg); }
.st-pending_sl { color:var(--pending_sl); background:var(--pending_sl-bg); }
.st-active { color:var(--active); background:var(--active-bg); }
.st-closing { color:var(--closing); background:var(--closing-bg); }
.muted { color:var(--muted); font-size:13px; }
.overdue { color:#b91c1c; font-weight:600; }
.id { font-family: ui-monospace, Menlo, "DejaVu Sans Mono", monospace; font-size:12px; color:var(--muted); }
.empty { padding:36px; text-align:center; color:var(--muted); }
footer { color:var(--muted); font-size:12px; margin-top:12px; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var LABELS = __LABELS__;
  var ORDER = Object.keys(LABELS);
  var REFRESH_MS = __REFRESH_MS__;
  var rows = __ROWS__;
  var lastOk = Date.now();

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function age(iso, now) {
    if (!iso) { return "\\u2013"; }
    var s = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
    if (s < 60) { return s + "s"; }
    var m = Math.floor(s / 60); if (m < 60) { return m + "m " + (s % 60) + "s"; }
    var h = Math.floor(m / 60); if (h < 24) { return h + "h " + (m % 60) + "m"; }
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function dash(v) { return (v === null || v === undefined || v === "") ? "\\u2013" : v; }

  function renderSummary() {
    var counts = {}; ORDER.forEach(function (s) { counts[s] = 0; });
    rows.forEach(function (p) { if (p.status in counts) { counts[p.status] += 1; } });
    document.getElementById("n-total").textContent = rows.length;
    ORDER.forEach(function (s) { document.getElementById("n-" + s).textContent = counts[s]; });
  }
  function renderRows() {
    var body = document.getElementById("rows");
    var now = Date.now();
    body.textContent = "";
    document.getElementById("empty").style.display = rows.length ? "none" : "block";
    rows.forEach(function (p) {
      var tr = el("tr"); tr.setAttribute("data-key", p.key || (p.symbol + "@" + p.exchange));
      var sym = el("td"); sym.appendChild(el("span", "sym", p.symbol)); sym.appendChild(el("span", "exch", p.exchange));
      tr.appendChild(sym);
      var side = el("td"); side.appendChild(el("span", "chip side-" + p.side, p.side === "BUY" ? "BUY \\u00b7 long" : "SELL \\u00b7 short"));
      tr.appendChild(side);
      var st = el("td"); st.appendChild(el("span", "chip st-" + p.status, LABELS[p.status] || p.status));
      if (p.close_requested && p.status !== "closing") { st.appendChild(el("span", "muted", " \\u00b7 close requested")); }
      tr.appendChild(st);
      tr.appendChild(el("td", "num", dash(p.quantity)));
      tr.appendChild(el("td", "num", dash(p.entry_price)));
      var stop = el("td", "num", dash(p.stop_loss_price));
      if (p.stop_loss_pct) { stop.appendChild(el("span", "muted", " (" + p.stop_loss_pct + "%)")); }
      tr.appendChild(stop);
      tr.appendChild(el("td", "num age", age(p.opened_at, now)));
      var upd = el("td", "num", age(p.updated_at, now) + " ago");
      if (p.deadline_at && Date.parse(p.deadline_at) < now) { upd.className += " overdue"; upd.title = "deadline passed"; }
      tr.appendChild(upd);
      tr.appendChild(el("td", "muted", p.source));
      var idCell = el("td", "id"); var link = el("a", null, p.id);
      link.href = "positions/" + encodeURIComponent(p.key || (p.symbol + "@" + p.exchange)).replace("%40", "@") + "/history.html";
      link.title = "the position's history"; idCell.appendChild(link); tr.appendChild(idCell);
      body.appendChild(tr);
    });
  }
  function setConnection(ok, message) {
    document.getElementById("dot").className = ok ? "dot" : "dot stale";
    var banner = document.getElementById("banner");
    banner.className = ok ? "banner" : "banner show";
    banner.textContent = ok ? "" : message;
    document.getElementById("refreshed").textContent = ok
      ? "updated " + new Date(lastOk).toLocaleTimeString()
      : "last update " + new Date(lastOk).toLocaleTimeString();
  }
  function refresh() {
    fetch("positions/", {cache: "no-store", credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (!r.ok) { return r.text().then(function (t) { throw new Error("HTTP " + r.status + " " + t.slice(0, 200)); }); }
        return r.json();
      })
      .then(function (data) {
        rows = data; lastOk = Date.now();
        document.getElementById("empty").textContent = __EMPTY__;
        renderSummary(); renderRows(); setConnection(true);
      })
      .catch(function (e) { setConnection(false, "Could not refresh the positions: " + e.message); });
  }
  renderSummary(); renderRows(); setConnection(__INITIAL_OK__, __INITIAL_ERROR__);
  setInterval(refresh, REFRESH_MS);
  setInterval(renderRows, 1000);
})();
"""


_PLACEHOLDER = re.compile(r"__[A-Z_]+__")


def _dash(value: object) -> str:
    return "\u2013" if value in (None, "") else html.escape(str(value))


def _history_href(position: dict) -> str:
    key = position.get("key") or f'{position["symbol"]}@{position["exchange"]}'
    return f"positions/{urllib.parse.quote(key, safe='@')}/history.html"


def _row(position: dict) -> str:
    side = position["side"]
    side_text = "BUY \u00b7 long" if side == "BUY" else "SELL \u00b7 short"
    status = position["status"]
    pct = position.get("stop_loss_pct")
    stop_suffix = f' <span class="muted">({html.escape(pct)}%)</span>' if pct else ""
    return (
        f'<tr data-key="{html.escape(position.get("key", ""))}">'
        f'<td><span class="sym">{html.escape(position["symbol"])}</span>'
        f'<span class="exch">{html.escape(position["exchange"])}</span></td>'
        f'<td><span class="chip side-{html.escape(side)}">{side_text}</span></td>'
        f'<td><span class="chip st-{html.escape(status)}">{html.escape(STATUS_LABELS.get(status, status))}</span></td>'
        f'<td class="num">{_dash(position["quantity"])}</td>'
        f'<td class="num">{_dash(position["entry_price"])}</td>'
        f'<td class="num">{_dash(position["stop_loss_price"])}{stop_suffix}</td>'
        f'<td class="num age">{_dash(position["opened_at"])}</td>'
        f'<td class="num">{_dash(position["updated_at"])}</td>'
        f'<td class="muted">{html.escape(position["source"])}</td>'
        f'<td class="id"><a href="{html.escape(_history_href(position), quote=True)}">'
        f'{html.escape(position["id"])}</a></td>'
        "</tr>"
    )


def _script_json(value: object) -> str:
    # "</" inside a <script> would end it early: escape the slash of every "</".
    return json.dumps(value).replace("</", "<\\/")


def render_page(positions: Sequence[dict], *, title: str, error: str | None = None) -> str:
    """The whole page with ``positions`` already in it; ``error`` shows as a banner (e.g. a peer is away)."""
    counts = {status: 0 for status in STATUS_LABELS}
    for position in positions:
        if position["status"] in counts:
            counts[position["status"]] += 1
    cards = "".join(
        f'<div class="card sc-{status}"><div class="n" id="n-{status}">{counts[status]}</div>'
        f'<div class="l">{html.escape(label)}</div></div>'
        for status, label in STATUS_LABELS.items()
    )
    # One pass over the template: a value that happens to contain a placeholder's name
    # (a symbol, an error text) is never substituted again.
    values = {
        "__LABELS__": _script_json(STATUS_LABELS),
        "__REFRESH_MS__": str(REFRESH_MS),
        "__EMPTY__": _script_json(_EMPTY),
        "__ROWS__": _script_json(list(positions)),
        "__INITIAL_OK__": "false" if error else "true",
        "__INITIAL_ERROR__": _script_json(error or ""),
    }
    script = _PLACEHOLDER.sub(lambda match: values[match.group(0)], _SCRIPT)
    rendered_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
  <div><h1>{html.escape(title)}</h1>
  <div class="sub">Open and in-flight positions from the key_to_state table of every worker. Read-only.
  <a class="ended" href="positions/closed.html">Positions ended in the last 24 h</a></div></div>
  <div class="conn"><span id="dot" class="dot{' stale' if error else ''}"></span><span id="refreshed">rendered {rendered_at}</span></div>
</header>
<main>
  <div id="banner" class="banner{' show' if error else ''}">{html.escape(error or '')}</div>
  <section class="summary">
    <div class="card"><div class="n" id="n-total">{len(positions)}</div><div class="l">live positions</div></div>
    {cards}
  </section>
  <div class="table-wrap">
    <table>
      <thead><tr>
        <th>Symbol</th><th>Side</th><th>Status</th><th class="num">Quantity</th><th class="num">Entry price</th>
        <th class="num">Stop-loss price</th><th class="num">Age</th><th class="num">Updated</th><th>Source</th><th>Position</th>
      </tr></thead>
      <tbody id="rows">{''.join(_row(p) for p in positions)}</tbody>
    </table>
    <div id="empty" class="empty" style="display:{'none' if positions else 'block'}">{_EMPTY_ERROR if error else _EMPTY}</div>
  </div>
  <footer>Refreshes every {REFRESH_MS // 1000} s from <code>/positions/</code>. Times are ages since the position opened
  and since its last change; a red age means its in-flight step is past its deadline.</footer>
</main>
<script>{script}</script>
</body>
</html>
"""

"""The HTML page of open and in-flight positions: one self-contained document, no external asset.

The server renders the rows it has (so the page shows something without JavaScript, and
a screenshot or a text browser sees the data); a small inline script then fetches
``positions/`` every two seconds and redraws, and ticks the ages every second. Nothing is
loaded from anywhere else: styles and script are inline, there are no fonts or images.
Data reaches the DOM only as text (``textContent`` in the script, ``html.escape`` here).

Beside the positions: each one's mark price and unrealized PnL from its key's latest
exchange snapshot; per exchange, the time since the newest snapshot any of its positions
received (red once older than ``STALE_AFTER_SYNC_INTERVALS`` sync intervals, at least
``STALE_FLOOR_S``: a sync that stopped shows at once); and the feed of the latest refusals and dead letters
(``refusals/``, see ``streams.web.feed``), refreshed with the positions.
"""

from __future__ import annotations

import html
import json
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["STALE_AFTER_SYNC_INTERVALS", "STALE_FLOOR_S", "STATUS_LABELS", "exchange_syncs", "render_page"]

#: How each live status reads on the page, in lifecycle order (also the order of the summary).
STATUS_LABELS = {
    "pending_entry": "pending entry",
    "entry_placed": "entry placed",
    "pending_sl": "pending stop-loss",
    "active": "active",
    "closing": "closing",
}

REFRESH_MS = 2000
#: A snapshot older than this many sync intervals marks its exchange's sync stale...
STALE_AFTER_SYNC_INTERVALS = 3
#: ... and never younger than this: ages are whole seconds, read against the browser's clock,
#: and a sync of a second or two would otherwise flicker red between two polls.
STALE_FLOOR_S = 15.0
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
.table-wrap { background:var(--panel); border:1px solid var(--line); border-radius:10px; overflow-x:auto; }
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
.syncs { display:flex; flex-wrap:wrap; gap:10px; margin-bottom:16px; }
.sync { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:6px 12px; font-size:13px; }
.sync b { margin-right:6px; } .sync.stale { background:#fee2e2; border-color:#fca5a5; color:#991b1b; font-weight:600; }
.pnl-pos { color:#15803d; } .pnl-neg { color:#b91c1c; }
.feed { display:grid; grid-template-columns:1fr 1fr; gap:16px; margin-top:18px; }
.feed h2 { font-size:13px; text-transform:uppercase; letter-spacing:.5px; color:var(--muted); margin:0;
  padding:10px 12px; border-bottom:1px solid var(--line); background:#f8fafc; }
.feed td { white-space:normal; overflow-wrap:anywhere; font-size:12px; vertical-align:top; }
.feed .code { font-family: ui-monospace, Menlo, "DejaVu Sans Mono", monospace; color:#b91c1c; }
.feed .problems { color:#991b1b; font-size:12px; padding:6px 12px; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var LABELS = __LABELS__;
  var ORDER = Object.keys(LABELS);
  var REFRESH_MS = __REFRESH_MS__;
  var rows = __ROWS__;
  var feed = __FEED__;
  var STALE_AFTER_MS = __STALE_AFTER_MS__;
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
      tr.appendChild(el("td", "num mark", dash(p.mark_price)));
      var pnl = p.unrealized_pnl;
      tr.appendChild(el("td", "num pnl" + (pnl ? (pnl.charAt(0) === "-" ? " pnl-neg" : " pnl-pos") : ""), dash(pnl)));
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
  function renderSyncs() {
    var newest = {}; var now = Date.now();
    rows.forEach(function (p) {
      var at = p.last_snapshot && p.last_snapshot.received_at;
      if (at && (!newest[p.exchange] || Date.parse(at) > Date.parse(newest[p.exchange]))) { newest[p.exchange] = at; }
      if (!(p.exchange in newest)) { newest[p.exchange] = null; }
    });
    var box = document.getElementById("syncs"); box.textContent = "";
    Object.keys(newest).sort().forEach(function (ex) {
      var at = newest[ex];
      var stale = !at || now - Date.parse(at) > STALE_AFTER_MS;
      var card = el("div", "sync" + (stale ? " stale" : "")); card.setAttribute("data-exchange", ex);
      card.appendChild(el("b", null, ex));
      card.appendChild(el("span", "sync-age", at ? "last snapshot " + age(at, now) + " ago" : "no snapshot yet"));
      if (stale) { card.title = "no snapshot for more than " + Math.round(STALE_AFTER_MS / 1000) + " s"; }
      box.appendChild(card);
    });
    if (!Object.keys(newest).length) { box.appendChild(el("div", "sync muted", "exchange sync: no live position to sync")); }
  }
  function fillFeed(id, items, cells) {
    var body = document.getElementById(id); body.textContent = "";
    items.forEach(function (item) {
      var tr = el("tr"); cells(item).forEach(function (c) { tr.appendChild(el("td", c[0], dash(c[1]))); });
      body.appendChild(tr);
    });
    if (!items.length) { var tr = el("tr"); var td = el("td", "muted", "none"); td.colSpan = 4; tr.appendChild(td); body.appendChild(tr); }
  }
  function renderFeed() {
    fillFeed("refusals", feed.refusals, function (r) {
      return [["num", r.at], [null, r.key], ["code", r.refusal_code || r.kind], [null, r.reason]]; });
    fillFeed("dead-letters", feed.dead_letters, function (d) {
      return [["num", d.at], [null, d.key || d.source], ["code", d.error_type], [null, d.reason]]; });
    var problems = document.getElementById("feed-problems");
    problems.textContent = feed.problems.join("; ");
  }
  function refreshFeed() {
    fetch("refusals/", {cache: "no-store", credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) { feed = data; renderFeed(); })
      .catch(function (e) { document.getElementById("feed-problems").textContent = "feed: " + e.message; });
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
        renderSummary(); renderRows(); renderSyncs(); setConnection(true);
      })
      .catch(function (e) { setConnection(false, "Could not refresh the positions: " + e.message); });
  }
  renderSummary(); renderRows(); renderSyncs(); renderFeed(); setConnection(__INITIAL_OK__, __INITIAL_ERROR__);
  setInterval(refresh, REFRESH_MS);
  setInterval(refreshFeed, REFRESH_MS);
  setInterval(function () { renderRows(); renderSyncs(); }, 1000);
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
        f'<td class="num mark">{_dash(position.get("mark_price"))}</td>'
        f'<td class="num pnl{_pnl_class(position.get("unrealized_pnl"))}">{_dash(position.get("unrealized_pnl"))}</td>'
        f'<td class="num">{_dash(position["stop_loss_price"])}{stop_suffix}</td>'
        f'<td class="num age">{_dash(position["opened_at"])}</td>'
        f'<td class="num">{_dash(position["updated_at"])}</td>'
        f'<td class="muted">{html.escape(position["source"])}</td>'
        f'<td class="id"><a href="{html.escape(_history_href(position), quote=True)}">'
        f'{html.escape(position["id"])}</a></td>'
        "</tr>"
    )


def _pnl_class(pnl: str | None) -> str:
    try:
        value = Decimal(pnl) if pnl else None
    except InvalidOperation:
        return ""
    return "" if value is None else (" pnl-pos" if value >= 0 else " pnl-neg")


def _epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def exchange_syncs(positions: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
    """Per exchange of the positions, the newest time one of its snapshots was received (ISO; None: none yet)."""
    newest: dict[str, str | None] = {}
    for position in positions:
        snapshot = position.get("last_snapshot") or {}
        at = snapshot.get("received_at")
        known = newest.get(position["exchange"])
        if at and (known is None or _epoch_s(at) > _epoch_s(known)):
            newest[position["exchange"]] = at
        else:
            newest.setdefault(position["exchange"], None)
    return newest


def _syncs(positions: Sequence[Mapping[str, Any]], stale_after_s: float, now_s: float) -> str:
    cards = []
    for exchange, at in sorted(exchange_syncs(positions).items()):
        age_s = None if at is None else max(0.0, now_s - _epoch_s(at))
        stale = age_s is None or age_s > stale_after_s
        text = "no snapshot yet" if age_s is None else f"last snapshot {int(age_s)}s ago"
        cards.append(f'<div class="sync{" stale" if stale else ""}" data-exchange="{html.escape(exchange)}">'
                     f'<b>{html.escape(exchange)}</b><span class="sync-age">{text}</span></div>')
    return "".join(cards) or '<div class="sync muted">exchange sync: no live position to sync</div>'


def _feed_rows(items: Sequence[Mapping[str, Any]], cells: Sequence[tuple[str, str, str]]) -> str:
    if not items:
        return '<tr><td class="muted" colspan="4">none</td></tr>'
    return "".join("<tr>" + "".join(
        f'<td class="{css}">{_dash(item.get(name) or (item.get(fallback) if fallback else None))}</td>'
        for css, name, fallback in cells) + "</tr>" for item in items)


_REFUSAL_CELLS = (("num", "at", ""), ("", "key", ""), ("code", "refusal_code", "kind"), ("", "reason", ""))
_DEAD_LETTER_CELLS = (("num", "at", ""), ("", "key", "source"), ("code", "error_type", ""), ("", "reason", ""))
_NO_FEED: Mapping[str, Any] = {"refusals": [], "dead_letters": [], "problems": []}


def _script_json(value: object) -> str:
    # "</" inside a <script> would end it early: escape the slash of every "</".
    return json.dumps(value).replace("</", "<\\/")


def render_page(positions: Sequence[dict], *, title: str, error: str | None = None,
                feed: Mapping[str, Any] | None = None, sync_interval_s: float = 30.0) -> str:
    """The whole page with ``positions`` and the ``feed`` (``streams.web.feed.read_feed``) already in it.

    ``error`` shows as a banner (e.g. a peer is away); an exchange's sync shows stale once
    its newest snapshot is older than ``STALE_AFTER_SYNC_INTERVALS`` x ``sync_interval_s`` (at least
    ``STALE_FLOOR_S``).
    """
    feed = feed if feed is not None else _NO_FEED
    stale_after_s = max(STALE_AFTER_SYNC_INTERVALS * sync_interval_s, STALE_FLOOR_S)
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
        "__FEED__": _script_json(dict(feed)),
        "__STALE_AFTER_MS__": str(int(stale_after_s * 1000)),
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
  <section class="syncs" id="syncs">{_syncs(positions, stale_after_s, time.time())}</section>
  <section class="summary">
    <div class="card"><div class="n" id="n-total">{len(positions)}</div><div class="l">live positions</div></div>
    {cards}
  </section>
  <div class="table-wrap">
    <table>
      <thead><tr>
        <th>Symbol</th><th>Side</th><th>Status</th><th class="num">Quantity</th><th class="num">Entry price</th>
        <th class="num">Mark</th><th class="num">Unrealized PnL</th><th class="num">Stop-loss price</th><th class="num">Age</th><th class="num">Updated</th><th>Source</th><th>Position</th>
      </tr></thead>
      <tbody id="rows">{''.join(_row(p) for p in positions)}</tbody>
    </table>
    <div id="empty" class="empty" style="display:{'none' if positions else 'block'}">{_EMPTY_ERROR if error else _EMPTY}</div>
  </div>
  <section class="feed">
    <div class="table-wrap"><h2>Latest refusals</h2>
      <table><tbody id="refusals">{_feed_rows(feed["refusals"], _REFUSAL_CELLS)}</tbody></table></div>
    <div class="table-wrap"><h2>Latest dead letters</h2>
      <table><tbody id="dead-letters">{_feed_rows(feed["dead_letters"], _DEAD_LETTER_CELLS)}</tbody></table></div>
  </section>
  <div id="feed-problems" class="feed problems">{html.escape("; ".join(feed["problems"]))}</div>
  <footer>Refreshes every {REFRESH_MS // 1000} s from <code>/positions/</code> and <code>/refusals/</code>. Times are ages
  since the position opened and since its last change; a red age means its in-flight step is past its deadline. Mark
  price and unrealized PnL come from the key's latest exchange snapshot; an exchange whose newest snapshot is older than
  {STALE_AFTER_SYNC_INTERVALS} sync intervals (at least {STALE_FLOOR_S:g} s; here {stale_after_s:g} s) is red. Refusals are read from
  <code>monitoring.position_events</code>, dead letters from the dead-letter topic.</footer>
</main>
<script>{script}</script>
</body>
</html>
"""

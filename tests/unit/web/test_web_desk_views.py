"""The desk's additions, pure rendering: mark price and PnL, the sync's age, the feed, the position against the exchange."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

from streams.web.feed import dead_letter_to_json
from streams.web.history_page import render_history_page
from streams.web.page import exchange_syncs, render_page
from streams.web.render import iso_utc, state_to_json
from streams.wire import serde
from tests.unit.domain.domain_builders import feed_active


def _active_with_snapshot(mark: str = "10.2", pnl: str = "12.36") -> dict:
    feed = feed_active()
    feed.snapshot(mark_price=Decimal(mark), unrealized_pnl=Decimal(pnl))
    assert feed.state is not None
    return state_to_json(feed.state)


def test_state_json_carries_the_latest_snapshot_mark_price_and_pnl_as_plain_decimal_text():
    # Act
    rendered = _active_with_snapshot(mark="10.20000000", pnl="-1.5E+1")

    # Assert
    assert (rendered["mark_price"], rendered["unrealized_pnl"]) == ("10.20000000", "-15")
    snapshot = rendered["last_snapshot"]
    assert (snapshot["side"], snapshot["quantity"]) == ("BUY", "61.8")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", snapshot["received_at"])
    assert json.loads(json.dumps(rendered)) == rendered


def test_page_shows_mark_and_pnl_cells_and_a_fresh_sync_per_exchange():
    # Arrange: a snapshot received just now
    position = _active_with_snapshot()
    position["last_snapshot"]["received_at"] = iso_utc(int(time.time() * 1000))

    # Act
    page = render_page([position], title="t", sync_interval_s=1)

    # Assert
    assert '<td class="num mark">10.2</td>' in page
    assert '<td class="num pnl pnl-pos">12.36</td>' in page
    assert re.search(r'<div class="sync" data-exchange="binance"><b>binance</b><span class="sync-age">'
                     r"last snapshot \ds ago</span>", page)


def test_page_marks_an_exchange_stale_past_three_sync_intervals():
    # Arrange: the newest snapshot of binance was received 40 s ago, the sync runs every 10 s
    position = _active_with_snapshot(pnl="-3.1")
    position["last_snapshot"]["received_at"] = iso_utc(int(time.time() * 1000) - 40_000)

    # Act
    page = render_page([position], title="t", sync_interval_s=10)

    # Assert
    assert '<div class="sync stale" data-exchange="binance">' in page
    assert '<td class="num pnl pnl-neg">-3.1</td>' in page
    assert "STALE_AFTER_MS = 30000;" in page


def test_page_stale_floor_keeps_a_one_second_sync_fresh_for_fifteen_seconds():
    # Arrange: a snapshot 10 s old where the sync runs every second
    position = _active_with_snapshot()
    position["last_snapshot"]["received_at"] = iso_utc(int(time.time() * 1000) - 10_000)

    # Act
    page = render_page([position], title="t", sync_interval_s=1)

    # Assert
    assert '<div class="sync" data-exchange="binance">' in page and "STALE_AFTER_MS = 15000;" in page


def test_exchange_syncs_take_the_newest_snapshot_of_each_exchange():
    # Arrange
    older, newer, none = (_active_with_snapshot() for _ in range(3))
    older["last_snapshot"]["received_at"] = "2026-12-02T10:00:00.000Z"
    newer["last_snapshot"]["received_at"] = "2026-12-02T10:00:05.000Z"
    none.update(exchange="bybit", last_snapshot=None)

    # Act / Assert
    assert exchange_syncs([older, newer, none]) == {"binance": "2026-12-02T10:00:05.000Z", "bybit": None}


def test_page_feed_shows_refusals_with_their_code_and_dead_letters_as_text():
    # Arrange
    feed = {"refusals": [{"at": "2026-12-02T10:00:00.000Z", "key": "APTUSDT@binance", "refusal_code": "already_open",
                          "kind": "signal", "reason": "open while active <script>"}],
            "dead_letters": [{"at": "2026-12-02T10:00:01.000Z", "key": None, "source": "ws://feed",
                              "error_type": "invalid_json", "reason": "not JSON"}],
            "problems": ["refusals: PostgreSQL is unavailable"]}

    # Act
    page = render_page([], title="t", feed=feed)

    # Assert
    assert '<td class="code">already_open</td>' in page and "open while active &lt;script&gt;" in page
    assert '<td class="">ws://feed</td>' in page and '<td class="code">invalid_json</td>' in page
    assert "refusals: PostgreSQL is unavailable" in page


def test_dead_letter_json_names_its_source_and_an_undecodable_record_says_so():
    # Arrange
    letter = serde.DeadLetter.of("p.position-inputs", 3, 41, b"APTUSDT@binance", b"\xff{not avro", "DecodeError",
                                 ts=1764669600000, reason="not single-object encoded")

    # Act
    shown = dead_letter_to_json(0, 7, serde.encode_dead_letter(letter))
    garbage = dead_letter_to_json(1, 8, b"garbage")

    # Assert
    assert shown["source"] == "p.position-inputs[3]@41" and shown["key"] == "APTUSDT@binance"
    assert (shown["error_type"], shown["at"]) == ("DecodeError", iso_utc(1764669600000))
    assert shown["preview"] == "\ufffd{not avro"
    assert garbage["error_type"] == "UndecodableDeadLetter" and (garbage["partition"], garbage["offset"]) == (1, 8)


def _history(position: dict) -> dict:
    return {"key": "APTUSDT@binance", "positions": [{**position, "events": []}]}


def test_history_page_sets_the_live_position_against_the_exchange_and_marks_agreement():
    # Arrange
    current = _active_with_snapshot()

    # Act
    page = render_history_page(_history(current), key="APTUSDT@binance", title="t", current=current)

    # Assert
    assert 'id="versus"' in page
    assert re.search(r'<tr data-check="quantity" class=""><td>quantity</td><td class="num ours">61.8</td>'
                     r'<td class="num theirs">61.8</td><td class="verdict">agrees</td>', page)
    assert re.search(r'<tr data-check="stop" class="">.*?<td class="num ours">61.8</td>.*?agrees', page)
    assert '<td class="num theirs pnl-pos">12.36</td>' in page


def test_history_page_marks_a_quantity_the_stop_does_not_cover():
    # Arrange: the exchange holds more than the position and its stop cover (a snapshot the
    # state machine has not applied yet: it would make the exchange's quantity the position's)
    current = _active_with_snapshot()
    current["last_snapshot"]["quantity"] = "70"

    # Act
    page = render_history_page(_history(current), key="APTUSDT@binance", title="t", current=current)

    # Assert
    assert '<tr data-check="quantity" class="differs">' in page
    assert '<tr data-check="stop" class="differs">' in page


def test_history_page_without_a_live_position_or_an_owner_says_so():
    # Arrange
    position = _active_with_snapshot()

    # Act
    no_live = render_history_page(_history(position), key="APTUSDT@binance", title="t", current=None)
    away = render_history_page(_history(position), key="APTUSDT@binance", title="t",
                               current_unavailable="no worker owns partition 3 yet")

    # Assert
    assert "nothing to set against the exchange" in no_live
    assert "could not be read: no worker owns partition 3 yet" in away

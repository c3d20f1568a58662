"""JSON rendering of positions (the contract's columns and formats) and the HTML page."""

from __future__ import annotations

import dataclasses
import json
import re
from decimal import Decimal

from streams.web.page import render_page
from streams.web.render import CONTRACT_COLUMNS, decimal_text, iso_utc, live_positions, position_to_json
from tests.unit.domain.domain_builders import feed_active, feed_closed, feed_pending_entry, feed_rolled_back


def test_position_json_has_every_contract_column_in_the_contracts_formats():
    # Arrange
    position = feed_active().position

    # Act
    rendered = position_to_json(position)

    # Assert
    assert list(rendered)[: len(CONTRACT_COLUMNS)] == list(CONTRACT_COLUMNS)
    assert rendered["id"] == position.id and rendered["status"] == "active" and rendered["side"] == "BUY"
    assert rendered["quantity"] == "61.8" and rendered["entry_price"] == "10" and rendered["stop_loss_price"] == "9.8"
    assert rendered["source"] == "signal" and rendered["signal_id"] == "sig-open" and rendered["closed_at"] is None
    for column in ("opened_at", "updated_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rendered[column])
    assert json.loads(json.dumps(rendered)) == rendered  # plain JSON: no Decimal, no datetime


def test_position_json_of_a_pending_entry_has_nulls_where_nothing_is_known():
    # Arrange / Act
    rendered = position_to_json(feed_pending_entry().position)

    # Assert
    assert rendered["status"] == "pending_entry"
    assert rendered["entry_price"] is None and rendered["stop_loss_price"] is None
    assert rendered["deadline_at"] is not None


def test_decimals_keep_their_scale_and_never_use_exponent_notation():
    assert decimal_text(Decimal("61.80")) == "61.80"
    assert decimal_text(Decimal("1E+2")) == "100"
    assert decimal_text(Decimal("0.00000012")) == "0.00000012"
    assert decimal_text(Decimal("1.2E-7")) == "0.00000012"
    assert decimal_text(None) is None


def test_times_are_utc_iso_8601_with_exact_milliseconds():
    assert iso_utc(1_761_173_440_983) == "2025-10-22T22:50:40.983Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_000_001) == "1970-01-01T00:16:40.001Z"
    assert iso_utc(None) is None


def test_live_positions_leave_out_closed_rolled_back_and_free_keys():
    # Arrange
    states = [feed_active().state, feed_closed().state, feed_rolled_back().state, feed_pending_entry().state]

    # Act
    live = live_positions(states)

    # Assert
    assert [p.status.value for p in live] == ["active", "pending_entry"]


def test_page_shows_every_position_and_escapes_what_it_shows():
    # Arrange
    hostile = dataclasses.replace(feed_active().position, symbol="<script>alert(1)</script>")
    positions = [position_to_json(hostile), position_to_json(feed_pending_entry().position)]

    # Act
    page = render_page(positions, title="Positions <test>")

    # Assert
    assert page.startswith("<!doctype html>")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the server-rendered row
    assert "<\\/script>" in page  # the row data inside the script cannot close it
    assert "Positions &lt;test&gt;" in page
    assert 'class="chip st-active"' in page and 'class="chip st-pending_entry"' in page
    assert 'id="n-total">2<' in page
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", page)  # self-contained


def test_page_with_an_error_shows_a_banner_and_no_empty_table_claim():
    # Act
    page = render_page([], title="Positions", error="no worker answered for partitions [1]")

    # Assert
    assert 'class="banner show"' in page and "no worker answered for partitions [1]" in page
    assert "No open or in-flight positions." not in page.split("<script>")[0]

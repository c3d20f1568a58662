"""Validation of the signal feed (contract section 2): every rule, its code and its exact reason."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from streams.wire import serde
from streams.domain import InputEvent, Side, Signal, SignalAction
from streams.ingest.exceptions import InvalidFrame, InvalidSignal
from streams.ingest.validation import parse_frame, to_input_event, validate_signal

KNOWN = {("binance", "APTUSDT"), ("binance", "BTCUSDT")}
MISSING = object()


def is_known(exchange: str, symbol: str) -> bool:
    return (exchange, symbol) in KNOWN


def contract_open(**changes: Any) -> dict[str, Any]:
    """The contract's open example, with fields changed (``MISSING`` removes one)."""
    signal = {"id": "sig-0001", "action": "open", "symbol": "APTUSDT", "exchange": "binance",
              "side": "BUY", "quantity": "61.8", "stop_loss_pct": "2.5", "ts": 1761173440983}
    signal.update(changes)
    return {name: value for name, value in signal.items() if value is not MISSING}


def contract_close(**changes: Any) -> dict[str, Any]:
    """The contract's close example, with fields changed."""
    signal = {"id": "sig-0002", "action": "close", "symbol": "APTUSDT", "exchange": "binance", "ts": 1761173500000}
    signal.update(changes)
    return {name: value for name, value in signal.items() if value is not MISSING}


# --------------------------------------------------------------------------- accepted


def test_validate_signal_contract_open_example_gives_the_exact_signal():
    # Act
    signal = validate_signal(contract_open(), is_known)

    # Assert
    assert signal == Signal(signal_id="sig-0001", action=SignalAction.OPEN, symbol="APTUSDT", exchange="binance",
                            side=Side.BUY, quantity=Decimal("61.8"), stop_loss_pct=Decimal("2.5"), ts=1761173440983)


def test_validate_signal_contract_close_example_gives_a_close_without_side_or_quantity():
    # Act
    signal = validate_signal(contract_close(), is_known)

    # Assert
    assert signal == Signal(signal_id="sig-0002", action=SignalAction.CLOSE, symbol="APTUSDT", exchange="binance",
                            side=None, quantity=None, stop_loss_pct=None, ts=1761173500000)


@pytest.mark.parametrize("stop_loss_pct", [MISSING, None])
def test_validate_signal_open_without_stop_loss_pct_leaves_it_to_the_default(stop_loss_pct):
    # Act
    signal = validate_signal(contract_open(stop_loss_pct=stop_loss_pct), is_known)

    # Assert
    assert signal.stop_loss_pct is None


@pytest.mark.parametrize(("raw", "expected"), [
    ("0.002", Decimal("0.002")), ("61", Decimal("61")), ("007.50", Decimal("7.50")),
    ("0.1000000000000000055511151231257827", Decimal("0.1000000000000000055511151231257827")),
])
def test_validate_signal_quantity_strings_are_kept_exactly(raw, expected):
    # Act
    signal = validate_signal(contract_open(quantity=raw), is_known)

    # Assert
    assert signal.quantity == expected and str(signal.quantity) == str(expected)


@pytest.mark.parametrize("pct", ["0.0001", "99.9999", "2", "50.5"])
def test_validate_signal_stop_loss_pct_strictly_between_0_and_100_is_accepted(pct):
    # Act
    signal = validate_signal(contract_open(stop_loss_pct=pct), is_known)

    # Assert
    assert signal.stop_loss_pct == Decimal(pct)


def test_validate_signal_close_ignores_side_quantity_and_stop_loss_fields():
    # Arrange: fields that would be refused on an open
    item = contract_close(side="sideways", quantity=-1, stop_loss_pct="500")

    # Act
    signal = validate_signal(item, is_known)

    # Assert
    assert (signal.side, signal.quantity, signal.stop_loss_pct) == (None, None, None)


def test_validate_signal_unknown_extra_fields_are_ignored():
    # Act
    signal = validate_signal(contract_open(strategy="breakout", leverage=5), is_known)

    # Assert
    assert signal.signal_id == "sig-0001"


def test_validate_signal_symbol_check_is_asked_only_for_an_otherwise_valid_signal():
    # Arrange
    asked: list[tuple[str, str]] = []

    def recording(exchange: str, symbol: str) -> bool:
        asked.append((exchange, symbol))
        return True

    # Act
    with pytest.raises(InvalidSignal):
        validate_signal(contract_open(quantity="0"), recording)
    validate_signal(contract_open(), recording)

    # Assert
    assert asked == [("binance", "APTUSDT")]


# --------------------------------------------------------------------------- refused

REFUSALS = [
    # (test id, the item, code, exact reason)
    ("array-item", [], "not_an_object", "a signal must be a JSON object, got an array"),
    ("string-item", "open APTUSDT", "not_an_object", 'a signal must be a JSON object, got "open APTUSDT"'),
    ("null-item", None, "not_an_object", "a signal must be a JSON object, got null"),
    ("id-missing", contract_open(id=MISSING), "missing_field", "missing field 'id'"),
    ("id-null", contract_open(id=None), "missing_field", "missing field 'id'"),
    ("id-number", contract_open(id=1), "invalid_field",
     "'id' must be a non-empty string of at most 128 characters, got number 1"),
    ("id-empty", contract_open(id=""), "invalid_field",
     "'id' must be a non-empty string of at most 128 characters, got \"\""),
    ("id-blank", contract_open(id="  "), "invalid_field",
     "'id' must be a non-empty string of at most 128 characters, got \"  \""),
    ("id-too-long", contract_open(id="x" * 129), "invalid_field",
     "'id' must be a non-empty string of at most 128 characters, got 129 characters"),
    ("action-missing", contract_open(action=MISSING), "missing_field", "missing field 'action'"),
    ("action-unknown", contract_open(action="buy"), "unknown_action",
     'unknown action "buy" (expected "open" or "close")'),
    ("action-upper-case", contract_open(action="OPEN"), "unknown_action",
     'unknown action "OPEN" (expected "open" or "close")'),
    ("action-number", contract_open(action=1), "unknown_action",
     'unknown action number 1 (expected "open" or "close")'),
    ("exchange-missing", contract_open(exchange=MISSING), "missing_field", "missing field 'exchange'"),
    ("exchange-empty", contract_open(exchange=""), "invalid_field", "'exchange' must be a non-empty string, got \"\""),
    ("exchange-unknown", contract_open(exchange="kraken"), "unknown_exchange",
     'unknown exchange "kraken" (configured: binance)'),
    ("exchange-other-case", contract_open(exchange="Binance"), "unknown_exchange",
     'unknown exchange "Binance" (configured: binance)'),
    ("symbol-missing", contract_open(symbol=MISSING), "missing_field", "missing field 'symbol'"),
    ("symbol-number", contract_open(symbol=7), "invalid_field", "'symbol' must be a non-empty string, got number 7"),
    ("symbol-with-at", contract_open(symbol="APTUSDT@binance"), "invalid_field",
     "'symbol' must not contain whitespace, '@' or '/', got \"APTUSDT@binance\""),
    ("symbol-unified", contract_open(symbol="APT/USDT:USDT"), "invalid_field",
     "'symbol' must not contain whitespace, '@' or '/', got \"APT/USDT:USDT\""),
    ("symbol-space", contract_open(symbol=" APTUSDT"), "invalid_field",
     "'symbol' must not contain whitespace, '@' or '/', got \" APTUSDT\""),
    ("ts-missing", contract_open(ts=MISSING), "missing_field", "missing field 'ts'"),
    ("ts-string", contract_open(ts="1761173440983"), "invalid_field",
     "'ts' must be a positive integer of epoch milliseconds, got \"1761173440983\""),
    ("ts-fraction", contract_open(ts=Decimal("1761173440983.5")), "invalid_field",
     "'ts' must be a positive integer of epoch milliseconds, got number 1761173440983.5"),
    ("ts-bool", contract_open(ts=True), "invalid_field",
     "'ts' must be a positive integer of epoch milliseconds, got true"),
    ("ts-zero", contract_open(ts=0), "invalid_field", "'ts' must be a positive integer of epoch milliseconds, got number 0"),
    ("ts-beyond-long", contract_open(ts=2 ** 63), "invalid_field",
     f"'ts' must be a positive integer of epoch milliseconds, got number {2 ** 63}"),
    ("side-missing", contract_open(side=MISSING), "missing_field", "missing field 'side'"),
    ("side-lower-case", contract_open(side="buy"), "unknown_side", "'side' must be \"BUY\" or \"SELL\", got \"buy\""),
    ("side-long", contract_open(side="LONG"), "unknown_side", "'side' must be \"BUY\" or \"SELL\", got \"LONG\""),
    ("quantity-missing", contract_open(quantity=MISSING), "missing_field", "missing field 'quantity'"),
    ("quantity-json-number", contract_open(quantity=Decimal("61.8")), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got number 61.8"),
    ("quantity-json-integer", contract_open(quantity=61), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got number 61"),
    ("quantity-word", contract_open(quantity="lots"), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got \"lots\""),
    ("quantity-exponent", contract_open(quantity="6.18e1"), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got \"6.18e1\""),
    ("quantity-comma", contract_open(quantity="61,8"), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got \"61,8\""),
    ("quantity-padded", contract_open(quantity=" 61.8"), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got \" 61.8\""),
    ("quantity-nan", contract_open(quantity="NaN"), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got \"NaN\""),
    ("quantity-infinity", contract_open(quantity="Infinity"), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got \"Infinity\""),
    ("quantity-bare-point", contract_open(quantity=".5"), "invalid_field",
     "'quantity' must be a decimal string such as \"61.8\", got \".5\""),
    ("quantity-too-long", contract_open(quantity="1" * 41), "invalid_field",
     f"'quantity' must be a decimal string such as \"61.8\", got \"{'1' * 41}\""),
    ("quantity-zero", contract_open(quantity="0"), "non_positive_quantity", "'quantity' must be > 0, got \"0\""),
    ("quantity-zero-decimals", contract_open(quantity="0.000"), "non_positive_quantity",
     "'quantity' must be > 0, got \"0.000\""),
    ("quantity-negative", contract_open(quantity="-61.8"), "non_positive_quantity",
     "'quantity' must be > 0, got \"-61.8\""),
    ("pct-zero", contract_open(stop_loss_pct="0"), "stop_loss_out_of_range",
     "'stop_loss_pct' must be > 0 and < 100, got \"0\""),
    ("pct-hundred", contract_open(stop_loss_pct="100"), "stop_loss_out_of_range",
     "'stop_loss_pct' must be > 0 and < 100, got \"100\""),
    ("pct-negative", contract_open(stop_loss_pct="-2.5"), "stop_loss_out_of_range",
     "'stop_loss_pct' must be > 0 and < 100, got \"-2.5\""),
    ("pct-json-number", contract_open(stop_loss_pct=Decimal("2.5")), "invalid_field",
     "'stop_loss_pct' must be a decimal string such as \"61.8\", got number 2.5"),
    ("pct-word", contract_open(stop_loss_pct="tight"), "invalid_field",
     "'stop_loss_pct' must be a decimal string such as \"61.8\", got \"tight\""),
    ("symbol-unknown", contract_open(symbol="DOGEUSDX"), "unknown_symbol", 'unknown symbol "DOGEUSDX" on binance'),
    ("symbol-lower-case", contract_open(symbol="aptusdt"), "unknown_symbol", 'unknown symbol "aptusdt" on binance'),
    ("close-unknown-symbol", contract_close(symbol="DOGEUSDX"), "unknown_symbol",
     'unknown symbol "DOGEUSDX" on binance'),
    ("close-ts-missing", contract_close(ts=MISSING), "missing_field", "missing field 'ts'"),
]


@pytest.mark.parametrize(("item", "code", "reason"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_validate_signal_breaking_a_rule_raises_invalid_signal_with_code_and_exact_reason(item, code, reason):
    # Act
    with pytest.raises(InvalidSignal) as refused:
        validate_signal(item, is_known)

    # Assert
    assert (refused.value.code, refused.value.reason, str(refused.value)) == (code, reason, reason)


def test_validate_signal_refusal_after_the_id_carries_the_signal_id():
    # Act
    with pytest.raises(InvalidSignal) as refused:
        validate_signal(contract_open(quantity="0"), is_known)

    # Assert
    assert refused.value.signal_id == "sig-0001"


def test_validate_signal_refusal_of_the_id_itself_carries_no_signal_id():
    # Act
    with pytest.raises(InvalidSignal) as refused:
        validate_signal(contract_open(id=""), is_known)

    # Assert
    assert refused.value.signal_id is None


def test_validate_signal_exchanges_can_be_configured():
    # Act
    with pytest.raises(InvalidSignal) as refused:
        validate_signal(contract_open(), is_known, exchanges={"bybit"})

    # Assert
    assert refused.value.reason == 'unknown exchange "binance" (configured: bybit)'


# --------------------------------------------------------------------------- frames


def test_parse_frame_object_gives_one_item():
    # Act
    items = parse_frame('{"id": "sig-0001", "action": "open"}')

    # Assert
    assert items == [{"id": "sig-0001", "action": "open"}]


def test_parse_frame_array_gives_its_items_and_each_is_judged_alone():
    # Arrange: a valid open, a non-object, an invalid open, a valid close
    frame = ('[{"id": "a", "action": "open", "symbol": "APTUSDT", "exchange": "binance", "side": "BUY",'
             ' "quantity": "61.8", "ts": 1761173440983}, 42,'
             ' {"id": "b", "action": "open", "symbol": "BTCUSDT", "exchange": "binance", "side": "BUY",'
             ' "quantity": "0", "ts": 1761173440983},'
             ' {"id": "c", "action": "close", "symbol": "APTUSDT", "exchange": "binance", "ts": 1761173500000}]')

    # Act
    outcomes: list[Signal | str] = []
    for item in parse_frame(frame):
        try:
            outcomes.append(validate_signal(item, is_known))
        except InvalidSignal as refusal:
            outcomes.append(refusal.code)

    # Assert
    assert [o if isinstance(o, str) else o.signal_id for o in outcomes] == ["a", "not_an_object",
                                                                           "non_positive_quantity", "c"]


def test_parse_frame_empty_array_holds_no_signal():
    # Act / Assert
    assert parse_frame("[]") == []


@pytest.mark.parametrize(("frame", "code", "reason_start"), [
    ('{"id": "sig-0001", "action": "open"', "invalid_json", "frame is not valid JSON: "),
    ("open APTUSDT BUY 61.8", "invalid_json", "frame is not valid JSON: "),
    ("", "invalid_json", "frame is not valid JSON: "),
    ('{"quantity": NaN}', "invalid_json", "frame is not valid JSON: NaN is not valid JSON"),
    ('{"quantity": Infinity}', "invalid_json", "frame is not valid JSON: Infinity is not valid JSON"),
    ("42", "invalid_frame", "frame must hold a signal object or an array of them, got number 42"),
    ('"open"', "invalid_frame", 'frame must hold a signal object or an array of them, got "open"'),
    ("null", "invalid_frame", "frame must hold a signal object or an array of them, got null"),
    (b'{"id": "sig-0001"}', "invalid_frame", "binary frame: the feed sends JSON text frames"),
])
def test_parse_frame_not_a_signal_frame_raises_invalid_frame(frame, code, reason_start):
    # Act
    with pytest.raises(InvalidFrame) as refused:
        parse_frame(frame)

    # Assert
    assert refused.value.code == code and refused.value.reason.startswith(reason_start)


def test_parse_frame_json_numbers_become_decimals_never_floats():
    # Act
    (item,) = parse_frame('{"quantity": 0.1, "stop_loss_pct": 1e400, "ts": 1761173440983}')

    # Assert: exact decimals, even beyond a float's range; integers stay integers
    assert item["quantity"] == Decimal("0.1") and type(item["quantity"]) is Decimal
    assert item["stop_loss_pct"] == Decimal("1E+400")
    assert item["ts"] == 1761173440983 and type(item["ts"]) is int


def test_parse_frame_quantity_sent_as_json_number_is_refused_showing_the_number_as_sent():
    # Arrange: 0.30000000000000004 is what a producer's float 0.1 + 0.2 prints
    (item,) = parse_frame('{"id": "sig-9", "action": "open", "symbol": "APTUSDT", "exchange": "binance",'
                          ' "side": "BUY", "quantity": 0.30000000000000004, "ts": 1761173440983}')

    # Act
    with pytest.raises(InvalidSignal) as refused:
        validate_signal(item, is_known)

    # Assert
    assert refused.value.reason == "'quantity' must be a decimal string such as \"61.8\", got number 0.30000000000000004"


# --------------------------------------------------------------------------- the input


def test_to_input_event_keys_by_symbol_at_exchange_timed_at_receipt_keeping_the_signals_own_ts():
    # Arrange
    signal = validate_signal(contract_open(), is_known)

    # Act
    event = to_input_event(signal, received_at_ms=1795600000000)

    # Assert
    assert event == InputEvent(event_id="signal:sig-0001", key="APTUSDT@binance", ts=1795600000000, payload=signal)
    assert event.payload.ts == 1761173440983


def test_to_input_event_decimals_survive_the_wire_format_digit_for_digit():
    # Arrange
    quantity = "12345678901234567890.123456789012345678"
    event = to_input_event(validate_signal(contract_open(quantity=quantity, stop_loss_pct="0.0001"), is_known),
                           received_at_ms=1795600000000)

    # Act
    decoded = serde.decode_input(serde.encode_input(event))

    # Assert
    assert decoded == event
    assert str(decoded.payload.quantity) == quantity and str(decoded.payload.stop_loss_pct) == "0.0001"

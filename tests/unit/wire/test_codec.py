"""Wire format: schemas, Avro single-object encoding, cross-library agreement, Faust codecs."""

from __future__ import annotations

import io
import json
import struct
import uuid
from decimal import Decimal
from typing import Any

import avro.io
import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from faust.exceptions import ValueDecodeError
from faust.serializers import codecs as faust_codecs
from faust.serializers.registry import Registry as FaustRegistry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.wire import codec
from streams.wire import faust_codecs as wire_faust_codecs
from streams.wire.codec import (
    HEADER_LENGTH,
    MARKER,
    CodecError,
    CorruptPayload,
    DecodeError,
    InvalidRecord,
    NotSingleObjectEncoded,
    SchemaDefinitionError,
    SchemaMismatch,
    SchemaRegistry,
    UnknownRecordType,
    UnknownSchemaFingerprint,
    decode,
    default_registry,
    encode,
)

NS = "positionpipeline.v1"
TOP_LEVEL = ("PositionInput", "PositionCommand", "PositionUpdate", "KeyState", "DeadLetter", "OrderAttempt")

# --------------------------------------------------------------------------- samples

ORDER = {"client_order_id": "ppe1-abcdefghijklmnop", "attempt": 1, "side": "BUY", "quantity": "61.8"}
SIGNAL = {
    "signal_id": "sig-0001", "action": "open", "symbol": "APTUSDT", "exchange": "binance",
    "side": "BUY", "quantity": "61.8", "stop_loss_pct": "2.5", "ts": 1761173440983,
}
CLOSE_SIGNAL = {
    "signal_id": "sig-0002", "action": "close", "symbol": "APTUSDT", "exchange": "binance",
    "side": None, "quantity": None, "stop_loss_pct": None, "ts": 1761173500000,
}
SNAPSHOT = {
    "exchange": "binance", "symbol": "BTCUSDT", "fetched_at": 1761173441000, "side": "SELL",
    "quantity": "0.001", "entry_price": "108123.40", "mark_price": "108000.00000000",
    "unrealized_pnl": "0.12340000",
}
FLAT_SNAPSHOT = {
    "exchange": "binance", "symbol": "BTCUSDT", "fetched_at": 1761173441000, "side": None,
    "quantity": "0", "entry_price": None, "mark_price": None, "unrealized_pnl": None,
}
REPORT = {
    "position_id": "APTUSDT@binance/1234", "client_order_id": "ppe1-abcdefghijklmnop",
    "role": "entry", "outcome": "filled", "ts": 1761173441500, "exchange_order_id": "8389765",
    "filled_quantity": "61.8", "average_price": "3.2561", "stop_price": None,
    "error_code": None, "error_message": None,
}
REJECTED_REPORT = {
    "position_id": "APTUSDT@binance/1234", "client_order_id": "pps1-abcdefghijklmnop",
    "role": "stop_loss", "outcome": "rejected", "ts": 1761173441600, "exchange_order_id": None,
    "filled_quantity": None, "average_price": None, "stop_price": "3.1909",
    "error_code": -2021, "error_message": "Order would immediately trigger.",
}
DEADLINE = {"position_id": "APTUSDT@binance/1234", "status": "pending_sl", "due_at": 1761173471000, "ts": 1761173471003}
POSITION = {
    "id": "APTUSDT@binance/1234", "symbol": "APTUSDT", "exchange": "binance", "side": "BUY",
    "quantity": "61.8", "requested_quantity": "61.8", "entry_price": "3.2561",
    "stop_loss_pct": "2.5", "stop_loss_price": "3.1747", "status": "active", "source": "signal",
    "signal_id": "sig-0001", "opened_at": 1761173440983, "closed_at": None,
    "updated_at": 1761173442000, "deadline_at": None, "close_requested": False,
    "entry_order": ORDER,
    "stop_order": {"client_order_id": "pps1-qrstuvwxyz234567", "attempt": 2, "side": None, "quantity": None},
    "close_order": None, "seen_reports": ["ppe1-abcdefghijklmnop:filled"], "version": 1236,
    "orders_to_cancel": [{"client_order_id": "pps1-zzzzzzzzzzzzzzzz", "attempt": 1, "side": "SELL",
                          "quantity": "30.9"}],
    "closed_at_exchange": False,
}
ADOPTED = {
    **POSITION, "id": "BTCUSDT@binance/7", "symbol": "BTCUSDT", "side": "SELL", "quantity": "0.001",
    "requested_quantity": None, "entry_price": "108123.40", "stop_loss_pct": "2",
    "stop_loss_price": None, "status": "pending_sl", "source": "exchange", "signal_id": None,
    "deadline_at": 1761173471000, "entry_order": None, "stop_order": ORDER, "seen_reports": [],
}
AUDIT = {
    "key": "APTUSDT@binance", "offset": 1237, "event_id": "ev-9", "position_id": None,
    "input_kind": "signal", "decision": "refused", "reason": "position APTUSDT@binance/1234 already active",
    "ts": 1761173443000, "status_after": "active", "client_order_id": None, "order_role": None, "order_outcome": None,
    "refusal_code": "already_open",
}
COMMAND_HEAD = {
    "command_id": "APTUSDT@binance/1234/PlaceEntry/ppe1-abcdefghijklmnop", "key": "APTUSDT@binance",
    "position_id": "APTUSDT@binance/1234", "symbol": "APTUSDT", "exchange": "binance",
}


POLICY = {"default_stop_loss_pct": "2.5", "entry_timeout_ms": 30000, "stop_loss_timeout_ms": 30000,
          "close_timeout_ms": 30000, "signal_id_retention_ms": 604800000}


def _input(branch: str, payload: dict, ts: int = 1761173440983, policy: dict | None = None) -> dict:
    return {"event_id": f"ev-{branch}", "key": "APTUSDT@binance", "ts": ts, "payload": (branch, payload),
            "policy": policy}


def _command(branch: str, payload: dict) -> dict:
    return {**COMMAND_HEAD, "payload": (branch, payload)}


#: (record name, datum, union branch or None): every record, every union branch.
SAMPLES: list[tuple[str, dict, str | None]] = [
    ("PositionInput", _input("Signal", SIGNAL), "Signal"),
    ("PositionInput", _input("Signal", SIGNAL, policy=POLICY), "Signal"),
    ("PositionInput", _input("Signal", CLOSE_SIGNAL), "Signal"),
    ("PositionInput", _input("ExchangeSnapshot", SNAPSHOT), "ExchangeSnapshot"),
    ("PositionInput", _input("ExchangeSnapshot", FLAT_SNAPSHOT), "ExchangeSnapshot"),
    ("PositionInput", _input("ExecutionReport", REPORT), "ExecutionReport"),
    ("PositionInput", _input("ExecutionReport", REJECTED_REPORT), "ExecutionReport"),
    ("PositionInput", _input("Deadline", DEADLINE), "Deadline"),
    *(
        ("PositionCommand", _command(branch, payload), branch)
        for branch, payload in [
            ("PlaceEntry", {"client_order_id": "ppe1-a", "side": "BUY", "quantity": "61.8"}),
            ("PlaceStopLoss", {"client_order_id": "pps1-a", "side": "SELL", "quantity": "61.8", "stop_price": "3.17469750"}),
            ("ClosePosition", {"client_order_id": "ppc1-a", "side": "SELL", "quantity": "61.8"}),
            ("CancelOrder", {"client_order_id": "pps1-a", "role": "stop_loss"}),
            ("QueryOrder", {"client_order_id": "ppe1-a", "role": "entry"}),
        ]
    ),
    ("PositionUpdate", {"key": "APTUSDT@binance", "offset": 1236, "payload": ("PositionState", POSITION)}, "PositionState"),
    ("PositionUpdate", {"key": "BTCUSDT@binance", "offset": 7, "payload": ("PositionState", ADOPTED)}, "PositionState"),
    ("PositionUpdate", {"key": "APTUSDT@binance", "offset": 1237, "payload": ("AuditRecord", AUDIT)}, "AuditRecord"),
    (
        "KeyState",
        {
            "key": "APTUSDT@binance", "last_offset": 1237, "recent_signal_ids": [],
            "position": POSITION, "last_exchange_ts": 1761173442000,
            "seen_signals": [{"signal_id": "sig-0001", "first_seen_at": 1761173440983},
                             {"signal_id": "sig-0002", "first_seen_at": 1761173441983}],
            "latest_snapshot": {"fetched_at": 1761173442000, "received_at": 1761173442040, "side": "BUY",
                                "quantity": "61.8", "entry_price": "3.2561", "mark_price": "3.30000000",
                                "unrealized_pnl": "-2.71998000"},
        },
        None,
    ),
    (
        "KeyState",
        {"key": "ETHUSDT@binance", "last_offset": 0, "recent_signal_ids": [], "position": None, "last_exchange_ts": 0,
         "seen_signals": [], "latest_snapshot": None},
        None,
    ),
    (
        "OrderAttempt",
        {"client_order_id": "ppe1-abcdefghijklmnop", "position_id": "APTUSDT@binance/1234", "kind": "send",
         "at": 1761173440990, "executor": "host/123/ab12"},
        None,
    ),
    (
        "OrderAttempt",
        {"client_order_id": "ppe1-abcdefghijklmnop", "position_id": "APTUSDT@binance/1234", "kind": "fence",
         "at": 1761173470990, "executor": "host/124/cd34"},
        None,
    ),
    (
        "DeadLetter",
        {
            "source_topic": "position-inputs", "source_partition": 3, "source_offset": 99,
            "key": b"APTUSDT@binance", "value": b"\xc3\x01garbage", "error_type": "CorruptPayload",
            "reason": "body does not decode", "ts": 1761173444000,
        },
        None,
    ),
    (
        "DeadLetter",
        {
            "source_topic": "ws://feed", "source_partition": -1, "source_offset": -1, "key": None, "value": None,
            "error_type": "JSONDecodeError", "reason": "not JSON", "ts": 1761173444000,
        },
        None,
    ),
]
SAMPLE_IDS = [f"{name}-{branch or 'record'}-{i}" for i, (name, _, branch) in enumerate(SAMPLES)]

#: Branches the Apache writer cannot pick from a plain dict: another branch with the same
#: (or a subset of the) fields comes later in the union and wins (see the test below).
APACHE_AMBIGUOUS = {"PlaceEntry", "PlaceStopLoss", "CancelOrder"}


def _untagged(datum: dict) -> dict:
    """The datum as the Apache package reads and writes it: union payload as a plain dict."""
    return {k: (v[1] if isinstance(v, tuple) else v) for k, v in datum.items()}


def _apache(record_name: str) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(default_registry().schema(record_name)))


def _apache_read(record_name: str, data: bytes, writer: avro.schema.Schema | None = None) -> Any:
    reader = _apache(record_name)
    datum_reader = avro.io.DatumReader(writer or reader, reader)
    return datum_reader.read(avro.io.BinaryDecoder(io.BytesIO(data[HEADER_LENGTH:])))


def _apache_write(record_name: str, datum: dict) -> bytes:
    schema = _apache(record_name)
    buffer = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buffer))
    return MARKER + schema.fingerprint("CRC-64-AVRO") + buffer.getvalue()


# --------------------------------------------------------------------------- strategies

LONGS = st.integers(-(2**63), 2**63 - 1)
INTS = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(max_size=40)
# Exchange-style decimals: any finite value at any scale, written as str(Decimal).
DECIMALS = st.decimals(allow_nan=False, allow_infinity=False).map(str) | st.builds(
    lambda digits, scale: str(Decimal(digits).scaleb(-scale)), st.integers(0, 10**12), st.integers(0, 12)
)
SIDES = st.sampled_from(["BUY", "SELL"])
STATUSES = st.sampled_from(["pending_entry", "entry_placed", "pending_sl", "active", "closing", "closed", "rolled_back"])
ROLES = st.sampled_from(["entry", "stop_loss", "close"])


def _opt(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


SIGNALS = st.fixed_dictionaries({
    "signal_id": TEXT, "action": st.sampled_from(["open", "close"]), "symbol": TEXT, "exchange": TEXT,
    "side": _opt(SIDES), "quantity": _opt(DECIMALS), "stop_loss_pct": _opt(DECIMALS), "ts": LONGS,
})
SNAPSHOTS = st.fixed_dictionaries({
    "exchange": TEXT, "symbol": TEXT, "fetched_at": LONGS, "side": _opt(SIDES),
    "quantity": DECIMALS, "entry_price": _opt(DECIMALS), "mark_price": _opt(DECIMALS),
    "unrealized_pnl": _opt(DECIMALS),
})
REPORTS = st.fixed_dictionaries({
    "position_id": TEXT, "client_order_id": TEXT, "role": ROLES,
    "outcome": st.sampled_from(["accepted", "filled", "rejected", "canceled", "not_found", "unknown"]),
    "ts": LONGS, "exchange_order_id": _opt(TEXT), "filled_quantity": _opt(DECIMALS),
    "average_price": _opt(DECIMALS), "stop_price": _opt(DECIMALS), "error_code": _opt(LONGS),
    "error_message": _opt(TEXT),
})
DEADLINES = st.fixed_dictionaries({"position_id": TEXT, "status": STATUSES, "due_at": LONGS, "ts": LONGS})
POLICIES = st.fixed_dictionaries({
    "default_stop_loss_pct": DECIMALS, "entry_timeout_ms": LONGS, "stop_loss_timeout_ms": LONGS,
    "close_timeout_ms": LONGS, "signal_id_retention_ms": LONGS,
})
INPUTS = st.fixed_dictionaries({
    "event_id": TEXT, "key": TEXT, "ts": LONGS, "policy": _opt(POLICIES),
    "payload": st.one_of(
        st.tuples(st.just("Signal"), SIGNALS),
        st.tuples(st.just("ExchangeSnapshot"), SNAPSHOTS),
        st.tuples(st.just("ExecutionReport"), REPORTS),
        st.tuples(st.just("Deadline"), DEADLINES),
    ),
})
_ORDER_FIELDS = {"client_order_id": TEXT, "side": SIDES, "quantity": DECIMALS}
COMMANDS = st.fixed_dictionaries({
    "command_id": TEXT, "key": TEXT, "position_id": TEXT, "symbol": TEXT, "exchange": TEXT,
    "payload": st.one_of(
        st.tuples(st.just("PlaceEntry"), st.fixed_dictionaries(_ORDER_FIELDS)),
        st.tuples(st.just("PlaceStopLoss"), st.fixed_dictionaries({**_ORDER_FIELDS, "stop_price": DECIMALS})),
        st.tuples(st.just("ClosePosition"), st.fixed_dictionaries(_ORDER_FIELDS)),
        st.tuples(st.just("CancelOrder"), st.fixed_dictionaries({"client_order_id": TEXT, "role": ROLES})),
        st.tuples(st.just("QueryOrder"), st.fixed_dictionaries({"client_order_id": TEXT, "role": ROLES})),
    ),
})
ORDER_REFS = st.fixed_dictionaries({"client_order_id": TEXT, "attempt": INTS, "side": _opt(SIDES),
                                    "quantity": _opt(DECIMALS)})
POSITIONS = st.fixed_dictionaries({
    "id": TEXT, "symbol": TEXT, "exchange": TEXT, "side": SIDES, "quantity": DECIMALS,
    "requested_quantity": _opt(DECIMALS), "entry_price": _opt(DECIMALS), "stop_loss_pct": DECIMALS,
    "stop_loss_price": _opt(DECIMALS), "status": STATUSES, "source": st.sampled_from(["signal", "exchange"]),
    "signal_id": _opt(TEXT), "opened_at": LONGS, "closed_at": _opt(LONGS), "updated_at": LONGS,
    "deadline_at": _opt(LONGS), "close_requested": st.booleans(), "entry_order": _opt(ORDER_REFS),
    "stop_order": _opt(ORDER_REFS), "close_order": _opt(ORDER_REFS),
    "seen_reports": st.lists(TEXT, max_size=5), "version": LONGS,
    "orders_to_cancel": st.lists(ORDER_REFS, max_size=3), "closed_at_exchange": st.booleans(),
})
AUDITS = st.fixed_dictionaries({
    "key": TEXT, "offset": LONGS, "event_id": TEXT, "position_id": _opt(TEXT), "input_kind": TEXT,
    "decision": TEXT, "reason": TEXT, "ts": LONGS,
    "status_after": _opt(st.sampled_from(["pending_entry", "active", "closed"])), "client_order_id": _opt(TEXT),
    "order_role": _opt(st.sampled_from(["entry", "stop_loss", "close"])), "order_outcome": _opt(TEXT),
    "refusal_code": _opt(TEXT),
})
UPDATES = st.fixed_dictionaries({
    "key": TEXT, "offset": LONGS,
    "payload": st.tuples(st.just("PositionState"), POSITIONS) | st.tuples(st.just("AuditRecord"), AUDITS),
})
KEY_STATES = st.fixed_dictionaries({
    "key": TEXT, "last_offset": LONGS, "recent_signal_ids": st.lists(TEXT, max_size=8),
    "position": _opt(POSITIONS), "last_exchange_ts": LONGS,
    "seen_signals": st.lists(st.fixed_dictionaries({"signal_id": TEXT, "first_seen_at": LONGS}), max_size=8),
    "latest_snapshot": _opt(st.fixed_dictionaries({
        "fetched_at": LONGS, "received_at": LONGS, "side": _opt(SIDES), "quantity": DECIMALS,
        "entry_price": _opt(DECIMALS), "mark_price": _opt(DECIMALS), "unrealized_pnl": _opt(DECIMALS)})),
})
DEAD_LETTERS = st.fixed_dictionaries({
    "source_topic": TEXT, "source_partition": INTS, "source_offset": LONGS, "key": _opt(st.binary(max_size=64)),
    "value": _opt(st.binary(max_size=256)), "error_type": TEXT, "reason": TEXT, "ts": LONGS,
})
ATTEMPTS = st.fixed_dictionaries({
    "client_order_id": TEXT, "position_id": TEXT, "kind": st.sampled_from(["send", "fence"]), "at": LONGS,
    "executor": TEXT,
})
STRATEGIES = {
    "OrderAttempt": ATTEMPTS,
    "PositionInput": INPUTS,
    "PositionCommand": COMMANDS,
    "PositionUpdate": UPDATES,
    "KeyState": KEY_STATES,
    "DeadLetter": DEAD_LETTERS,
}
ANY_RECORD = st.sampled_from(sorted(STRATEGIES)).flatmap(lambda name: st.tuples(st.just(name), STRATEGIES[name]))

# --------------------------------------------------------------------------- schemas


def _walk_named(node: Any):
    """Yield every named type definition in a standalone schema."""
    if isinstance(node, list):
        for branch in node:
            yield from _walk_named(branch)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            yield node
        for field in node.get("fields", ()):
            yield from _walk_named(field["type"])
        for key in ("items", "values"):
            if key in node:
                yield from _walk_named(node[key])


def test_registry_schemas_package_loads_every_top_level_record():
    names = default_registry().names()
    assert {f"{NS}.{name}" for name in TOP_LEVEL} <= set(names)
    assert all(name.startswith(f"{NS}.") for name in names)


def test_schemas_every_record_and_field_has_doc():
    registry = default_registry()
    missing = []
    for name in registry.names():
        for named in _walk_named(registry.schema(name)):
            if not named.get("doc", "").strip():
                missing.append(named["name"])
            missing += [f"{named['name']}.{f['name']}" for f in named.get("fields", ()) if not f.get("doc", "").strip()]
    assert missing == []


@pytest.mark.parametrize("record_name", TOP_LEVEL[:4])
def test_schemas_prices_and_quantities_are_documented_decimal_strings(record_name):
    schema = default_registry().schema(record_name)
    assert "0.001 for BTC" in schema["doc"] and "decimal" in schema["doc"]
    money = [
        field
        for named in _walk_named(schema)
        for field in named.get("fields", ())
        if field["name"] in {"quantity", "requested_quantity", "filled_quantity"}
        or field["name"].endswith(("_price", "_pct"))
    ]
    assert money
    for field in money:
        assert field["type"] in ("string", ["null", "string"]), field["name"]
        assert "Decimal string" in field["doc"], field["name"]


def test_schemas_shared_types_defined_once_expanded_per_record():
    registry = default_registry()
    update = json.dumps(registry.schema("PositionUpdate"))
    key_state = json.dumps(registry.schema("KeyState"))
    # PositionState is inlined once per standalone schema, then referred to by name.
    for text in (update, key_state):
        assert text.count(f'"name": "{NS}.PositionState"') == 1
        assert text.count(f'"name": "{NS}.OrderRef"') == 1
    assert registry.schema("KeyState")["fields"][3]["type"][1]["name"] == f"{NS}.PositionState"


def test_registry_short_and_full_names_same_schema():
    registry = default_registry()
    assert registry.current("KeyState") is registry.current(f"{NS}.KeyState")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("record_name", "datum", "branch"), SAMPLES, ids=SAMPLE_IDS)
def test_codec_every_record_and_branch_round_trips_unchanged(record_name, datum, branch):
    data = encode(record_name, datum)
    assert data[:2] == MARKER
    assert data[2:HEADER_LENGTH] == default_registry().fingerprint(record_name)
    decoded = decode(record_name, data)
    assert decoded == datum
    if branch is not None:
        assert decoded["payload"][0] == branch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_RECORD)
def test_codec_generated_records_round_trip_unchanged(named_datum):
    record_name, datum = named_datum
    assert decode(record_name, encode(record_name, datum)) == datum


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_RECORD)
def test_naming_the_record_branches_of_unions_changes_no_byte(named_datum):
    # The codec names the record branch of ["null", Record] unions for fastavro (a lookup
    # instead of validating the dict against each branch): the bytes must be fastavro's own.
    from fastavro import schemaless_writer

    record_name, datum = named_datum
    schema = default_registry().current(record_name)
    unnamed = dict(datum)
    if schema.tagged_unions:
        unnamed = codec._tag(schema, datum)
    buffer = io.BytesIO()
    schemaless_writer(buffer, schema.parsed, unnamed)
    assert encode(record_name, datum)[HEADER_LENGTH:] == buffer.getvalue()


def test_a_nested_optional_record_that_does_not_fit_is_still_an_invalid_record():
    datum = {"key": "K@x", "last_offset": 1, "position": {"id": "K@x/1", "quantity": 61.8}, "last_exchange_ts": 0}
    with pytest.raises(InvalidRecord, match="KeyState"):
        encode("KeyState", datum)


@given(DECIMALS)
def test_codec_decimal_string_keeps_exact_value_and_scale(text):
    datum = _input("ExchangeSnapshot", {**SNAPSHOT, "quantity": text})
    quantity = decode("PositionInput", encode("PositionInput", datum))["payload"][1]["quantity"]
    assert quantity == text
    assert Decimal(quantity).as_tuple() == Decimal(text).as_tuple()


def test_encode_tuple_arrays_decode_as_lists():
    datum = {"key": "K@x", "last_offset": 1, "recent_signal_ids": ("a", "b"), "position": None, "last_exchange_ts": 0,
             "seen_signals": ()}
    assert decode("KeyState", encode("KeyState", datum))["recent_signal_ids"] == ["a", "b"]


def test_encode_omitted_fields_with_defaults_decode_with_defaults():
    datum = _input("Signal", {k: v for k, v in CLOSE_SIGNAL.items() if v is not None})
    assert decode("PositionInput", encode("PositionInput", datum))["payload"] == ("Signal", CLOSE_SIGNAL)


def test_encode_full_branch_name_decodes_with_short_name():
    datum = _input(f"{NS}.Deadline", DEADLINE)
    assert decode("PositionInput", encode("PositionInput", datum))["payload"] == ("Deadline", DEADLINE)


def test_encode_str_enum_members_decode_as_plain_strings():
    import enum

    class Side(str, enum.Enum):
        BUY = "BUY"
        SELL = "SELL"

    datum = _command("PlaceEntry", {"client_order_id": "x", "side": Side.SELL, "quantity": "1"})
    assert decode("PositionCommand", encode("PositionCommand", datum))["payload"][1]["side"] == "SELL"


# --------------------------------------------------------------------------- Apache avro agreement


@pytest.mark.parametrize(("record_name", "datum", "branch"), SAMPLES, ids=SAMPLE_IDS)
def test_fastavro_bytes_apache_reader_reads_same_values(record_name, datum, branch):
    assert _apache_read(record_name, encode(record_name, datum)) == _untagged(datum)


@pytest.mark.parametrize(
    ("record_name", "datum", "branch"),
    [s for s in SAMPLES if s[2] not in APACHE_AMBIGUOUS],
    ids=[i for i, s in zip(SAMPLE_IDS, SAMPLES) if s[2] not in APACHE_AMBIGUOUS],
)
def test_apache_writer_bytes_our_decoder_reads_same_values(record_name, datum, branch):
    data = _apache_write(record_name, _untagged(datum))
    assert data == encode(record_name, datum)
    assert decode(record_name, data) == datum


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["PositionInput", "KeyState", "DeadLetter"]).flatmap(lambda n: st.tuples(st.just(n), STRATEGIES[n])))
def test_apache_and_fastavro_generated_records_same_bytes(named_datum):
    record_name, datum = named_datum
    ours = encode(record_name, datum)
    assert _apache_write(record_name, _untagged(datum)) == ours
    assert _apache_read(record_name, ours) == _untagged(datum)


def test_apache_writer_identically_shaped_branches_picks_last_branch():
    # Why the codec insists on (branch, dict): a plain dict does not say which of two
    # same-shaped records it is, and the Apache writer takes the last branch that fits.
    place_entry = _command("PlaceEntry", {"client_order_id": "ppe1-a", "side": "BUY", "quantity": "1"})
    data = _apache_write("PositionCommand", _untagged(place_entry))
    assert decode("PositionCommand", data)["payload"][0] == "ClosePosition"


# --------------------------------------------------------------------------- fingerprints

_EMPTY64 = 0xC15D213AA4D7A795


def _spec_crc64(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification lists it (Schema Fingerprints)."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize(
    ("canonical_form", "java_long"),
    [  # Apache Avro share/test/data/schema-tests.txt (the Java implementation's signed longs)
        ('"null"', 7195948357588979594),
        ('"boolean"', -6970731678124411036),
        ('"int"', 8247732601305521295),
        ('"long"', -3434872931120570953),
        ('"string"', -8142146995180207161),
        ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
        ('{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}', 7843277075252814651),
    ],
)
def test_crc64_avro_fingerprint_spec_vectors_match(canonical_form, java_long):
    expected = struct.pack("<q", java_long)
    assert struct.pack("<Q", _spec_crc64(canonical_form.encode())) == expected
    assert codec.crc64_avro_fingerprint(canonical_form) == expected


@pytest.mark.parametrize("record_name", sorted(default_registry().names()))
def test_fingerprint_every_schema_equals_apache_and_spec(record_name):
    registry = default_registry()
    ours = registry.current(record_name)
    apache = _apache(record_name)
    assert ours.canonical_form == apache.canonical_form
    assert ours.fingerprint == apache.fingerprint("CRC-64-AVRO")
    assert ours.fingerprint == struct.pack("<Q", _spec_crc64(apache.canonical_form.encode()))


def test_fingerprint_docs_and_defaults_do_not_change_it():
    schema = default_registry().schema("DeadLetter")
    schema["doc"] = "another doc"
    for field in schema["fields"]:
        field.pop("doc")
    assert avro.schema.parse(json.dumps(schema)).fingerprint() == default_registry().fingerprint("DeadLetter")


# --------------------------------------------------------------------------- evolution

V0_SIGNAL = {k: v for k, v in SIGNAL.items() if k != "stop_loss_pct"}
V0_REPORT = {k: v for k, v in REJECTED_REPORT.items() if k != "stop_price"}


def _retired(record_name: str) -> codec.WriterSchema:
    retired = [w for w in default_registry().writer_schemas(record_name) if not w.current]
    assert retired, f"no retired version of {record_name} in schemas/history"
    return retired[0]


def test_registry_history_retired_version_indexed_by_fingerprint():
    retired = _retired("PositionInput")
    assert retired.origin == "schemas/history/position_input.v0.avsc"
    assert default_registry().writer_schema(retired.fingerprint) is retired
    assert retired.fingerprint != default_registry().fingerprint("PositionInput")


@pytest.mark.parametrize(
    ("branch", "old_payload", "filled"),
    [("Signal", V0_SIGNAL, {"stop_loss_pct": None}), ("ExecutionReport", V0_REPORT, {"stop_price": None})],
)
def test_decode_v0_writer_current_reader_fills_defaults(branch, old_payload, filled):
    retired = _retired("PositionInput")
    written = {k: v for k, v in _input(branch, old_payload).items() if k != "policy"}  # v0 had no policy
    data = default_registry().encode_with_writer(retired.fingerprint, written)
    assert data[2:HEADER_LENGTH] == retired.fingerprint
    decoded = decode("PositionInput", data)
    assert decoded == _input(branch, {**old_payload, **filled})
    # The Apache package resolves the same bytes to the same values.
    old_writer = avro.schema.parse(json.dumps(dict(retired.schema)))
    assert _apache_read("PositionInput", data, writer=old_writer) == _untagged(decoded)


def test_decode_an_input_written_before_policies_were_recorded_reads_policy_none():
    (v1,) = [w for w in default_registry().writer_schemas("PositionInput") if w.origin.endswith("position_input.v1.avsc")]
    written = {k: v for k, v in _input("Signal", SIGNAL).items() if k != "policy"}

    decoded = decode("PositionInput", default_registry().encode_with_writer(v1.fingerprint, written))

    assert decoded == _input("Signal", SIGNAL, policy=None)


V0_POSITION = {k: v for k, v in POSITION.items() if k not in ("orders_to_cancel", "closed_at_exchange")}
V0_POSITION = {**V0_POSITION, "stop_order": {"client_order_id": "pps1-qrstuvwxyz234567", "attempt": 2},
               "entry_order": {"client_order_id": "ppe1-abcdefghijklmnop", "attempt": 1}}


def test_decode_v0_key_state_current_reader_keeps_the_old_signal_ids_and_fills_the_new_fields():
    retired = _retired("KeyState")
    old = {"key": "APTUSDT@binance", "last_offset": 1237, "recent_signal_ids": ["sig-0001", "sig-0002"],
           "position": {**V0_POSITION, "entry_order": {"client_order_id": "ppe1-abcdefghijklmnop", "attempt": 1}},
           "last_exchange_ts": 1761173442000}
    data = default_registry().encode_with_writer(retired.fingerprint, old)
    decoded = decode("KeyState", data)
    assert decoded["recent_signal_ids"] == ["sig-0001", "sig-0002"] and decoded["seen_signals"] == []
    assert decoded["position"]["orders_to_cancel"] == [] and decoded["position"]["closed_at_exchange"] is False
    assert decoded["position"]["stop_order"] == {"client_order_id": "pps1-qrstuvwxyz234567", "attempt": 2,
                                                 "side": None, "quantity": None}


def test_decode_v0_position_update_current_reader_fills_the_new_fields():
    retired = _retired("PositionUpdate")
    old = {"key": "APTUSDT@binance", "offset": 1236, "payload": ("PositionState", V0_POSITION)}
    decoded = decode("PositionUpdate", default_registry().encode_with_writer(retired.fingerprint, old))
    assert decoded["payload"][1]["orders_to_cancel"] == [] and decoded["payload"][1]["closed_at_exchange"] is False


def test_decode_v2_snapshot_current_reader_reads_no_mark_price_nor_pnl():
    (v2,) = [w for w in default_registry().writer_schemas("PositionInput") if w.origin.endswith("position_input.v2.avsc")]
    written = _input("ExchangeSnapshot", {k: v for k, v in SNAPSHOT.items() if k not in ("mark_price", "unrealized_pnl")})

    decoded = decode("PositionInput", default_registry().encode_with_writer(v2.fingerprint, written))

    assert decoded == _input("ExchangeSnapshot", {**SNAPSHOT, "mark_price": None, "unrealized_pnl": None})


def test_decode_v1_key_state_current_reader_has_no_latest_snapshot():
    (v1,) = [w for w in default_registry().writer_schemas("KeyState") if w.origin.endswith("key_state.v1.avsc")]
    old = {"key": "APTUSDT@binance", "last_offset": 1237, "recent_signal_ids": [], "position": POSITION,
           "last_exchange_ts": 1761173442000, "seen_signals": []}

    decoded = decode("KeyState", default_registry().encode_with_writer(v1.fingerprint, old))

    assert decoded == {**old, "latest_snapshot": None}


def test_decode_v0_writer_has_no_deadline_branch():
    retired = _retired("PositionInput")
    with pytest.raises(InvalidRecord, match="Deadline"):
        default_registry().encode_with_writer(retired.fingerprint, _input("Deadline", DEADLINE))


@pytest.mark.parametrize("record_name", TOP_LEVEL)
def test_history_every_retired_writer_compatible_with_current_reader(record_name):
    reader = _apache(record_name)
    for writer in default_registry().writer_schemas(record_name)[1:]:
        result = ReaderWriterCompatibilityChecker().get_compatibility(
            reader, avro.schema.parse(json.dumps(dict(writer.schema)))
        )
        assert result.compatibility is SchemaCompatibilityType.compatible, (writer.origin, result.messages)


# --------------------------------------------------------------------------- errors


def _valid() -> bytes:
    return encode("PositionInput", SAMPLES[0][1])


@given(st.binary(max_size=64).filter(lambda b: not b.startswith(MARKER)))
def test_decode_garbage_bytes_raises_not_single_object_encoded(data):
    with pytest.raises(NotSingleObjectEncoded):
        decode("PositionInput", data)


@pytest.mark.parametrize("prefix", [b"", b"\xc3", b"\xc3\x02", b"\x00\x00", b"\x01\xc3", b"{\"id\""])
def test_decode_wrong_or_missing_marker_raises_not_single_object_encoded(prefix):
    with pytest.raises(NotSingleObjectEncoded, match="PositionInput"):
        decode("PositionInput", prefix + _valid()[2:] if prefix else b"")


def test_decode_header_shorter_than_ten_bytes_raises_not_single_object_encoded():
    with pytest.raises(NotSingleObjectEncoded, match="5 bytes"):
        decode("PositionInput", _valid()[:5])


def test_decode_unknown_fingerprint_raises_unknown_schema_fingerprint_with_hex():
    data = MARKER + bytes.fromhex("0123456789abcdef") + _valid()[HEADER_LENGTH:]
    with pytest.raises(UnknownSchemaFingerprint, match="0123456789abcdef") as info:
        decode("PositionInput", data)
    assert info.value.fingerprint == "0123456789abcdef"


def test_decode_truncated_body_raises_corrupt_payload_from_fastavro_error():
    data = _valid()
    for end in range(HEADER_LENGTH, len(data)):
        with pytest.raises(CorruptPayload, match="PositionInput") as info:
            decode("PositionInput", data[:end])
        assert info.value.__cause__ is not None


def test_decode_trailing_bytes_raises_corrupt_payload():
    with pytest.raises(CorruptPayload, match="1 trailing bytes"):
        decode("PositionInput", _valid() + b"\x00")


@pytest.mark.parametrize(
    "body",
    [
        b"\x02\xff\xfe",  # string of 1 byte that is not UTF-8
        b"\x00\x00\x02\x08",  # event_id "", key "", ts 1, then union index 4 of 4 branches
    ],
    ids=["bad-utf8", "union-index-out-of-range"],
)
def test_decode_invalid_body_raises_corrupt_payload(body):
    with pytest.raises(CorruptPayload):
        decode("PositionInput", MARKER + default_registry().fingerprint("PositionInput") + body)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(TOP_LEVEL), st.binary(max_size=200))
def test_decode_random_body_after_known_header_decodes_or_raises_decode_error(record_name, body):
    data = MARKER + default_registry().fingerprint(record_name) + body
    try:
        decoded = decode(record_name, data)
    except DecodeError as error:
        assert str(error)  # a typed error that says what is wrong, never a bare one
    else:
        # Whatever decodes is a valid record: it encodes again, and decodes to the same value.
        assert decode(record_name, encode(record_name, decoded)) == decoded


def test_decode_other_record_bytes_raises_schema_mismatch():
    with pytest.raises(SchemaMismatch, match="expected positionpipeline.v1.KeyState"):
        decode("KeyState", _valid())


@pytest.mark.parametrize(
    ("datum", "match"),
    [
        ({**SAMPLES[0][1], "ts": "yesterday"}, "ts|int"),
        ({**SAMPLES[0][1], "tss": 1}, "tss"),  # misspelt field is not silently dropped
        ({k: v for k, v in SAMPLES[0][1].items() if k != "event_id"}, "event_id|string"),
        (_input("Signal", {**SIGNAL, "side": "HOLD"}), "HOLD"),
        (_input("Signal", {**SIGNAL, "quantity": Decimal("61.8")}), "quantity|string"),
        ({**SAMPLES[0][1], "payload": SIGNAL}, "pair"),
        (_input("Order", SIGNAL), "unknown branch 'Order'"),
        (_input("Signal", SNAPSHOT), "PositionInput"),
        (["not", "a", "mapping"], "mapping"),
    ],
    ids=["wrong-type", "unknown-field", "missing-field", "bad-enum", "decimal-object", "untagged-union",
         "unknown-branch", "wrong-branch-fields", "not-a-mapping"],
)
def test_encode_datum_not_matching_schema_raises_invalid_record(datum, match):
    with pytest.raises(InvalidRecord, match=match):
        encode("PositionInput", datum)


def test_encode_unknown_record_name_raises_unknown_record_type():
    with pytest.raises(UnknownRecordType, match="Nope"):
        encode("Nope", {})
    with pytest.raises(UnknownRecordType):
        decode("Nope", _valid())


def test_errors_every_codec_error_derives_from_one_root():
    for error in (SchemaDefinitionError, UnknownRecordType, InvalidRecord, NotSingleObjectEncoded,
                  UnknownSchemaFingerprint, SchemaMismatch, CorruptPayload):
        assert issubclass(error, CodecError)
    for error in (NotSingleObjectEncoded, UnknownSchemaFingerprint, SchemaMismatch, CorruptPayload):
        assert issubclass(error, DecodeError)


# --------------------------------------------------------------------------- schema loading


def _package(tmp_path, monkeypatch, files: dict[str, str]) -> str:
    package = f"fake_schemas_{uuid.uuid4().hex}"  # a fresh module each time: imports are cached
    root = tmp_path / package
    (root / "history").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


_REC = '{{"type": "record", "name": "{name}", "namespace": "t", "fields": [{{"name": "f", "type": {ftype}}}]}}'


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"a.avsc": _REC.format(name="A", ftype='"Missing"')}, "unknown type"),
        ({"a.avsc": _REC.format(name="A", ftype='"long"'), "b.avsc": _REC.format(name="A", ftype='"int"')}, "more than once"),
        ({"a.avsc": _REC.format(name="A", ftype='"long"'), "history/b.v0.avsc": _REC.format(name="B", ftype='"int"')}, "no current schema"),
        ({"a.avsc": "{not json"}, "not valid JSON"),
        ({"a.avsc": '["null", "string"]'}, "named type"),
    ],
    ids=["unknown-reference", "defined-twice", "history-without-reader", "bad-json", "not-named"],
)
def test_registry_inconsistent_schema_files_raise_schema_definition_error(tmp_path, monkeypatch, files, match):
    with pytest.raises(SchemaDefinitionError, match=match):
        SchemaRegistry(_package(tmp_path, monkeypatch, files))


def test_registry_reference_across_files_resolves_and_is_inlined(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch, {
        "a.avsc": _REC.format(name="A", ftype='"B"'),
        "b.avsc": '{"type": "enum", "name": "B", "namespace": "t", "symbols": ["X"]}',
    })
    registry = SchemaRegistry(package)
    assert registry.schema("A")["fields"][0]["type"] == {"type": "enum", "name": "t.B", "symbols": ["X"]}
    assert registry.decode("A", registry.encode("A", {"f": "X"})) == {"f": "X"}


# --------------------------------------------------------------------------- Faust


def test_register_faust_codecs_called_twice_keeps_one_codec_per_name():
    first = wire_faust_codecs.register_faust_codecs()
    second = wire_faust_codecs.register_faust_codecs()
    assert set(first) == {"avro-position-input", "avro-position-command", "avro-position-update",
                          "avro-key-state", "avro-dead-letter"}
    assert all(first[name] is second[name] is faust_codecs.get_codec(name) for name in first)


# The order-attempt ledger is read and written by the executors' own aiokafka clients, not by Faust.
FAUST_SAMPLES = [(sample, sample_id) for sample, sample_id in zip(SAMPLES, SAMPLE_IDS) if sample[0] != "OrderAttempt"]


@pytest.mark.parametrize(("record_name", "datum", "branch"), [s for s, _ in FAUST_SAMPLES],
                         ids=[i for _, i in FAUST_SAMPLES])
def test_faust_codecs_dumps_loads_round_trips(record_name, datum, branch):
    wire_faust_codecs.register_faust_codecs()
    name = next(n for n, cls in wire_faust_codecs.FAUST_CODECS.items() if cls.record_name == record_name)
    data = faust_codecs.dumps(name, datum)
    assert data == encode(record_name, datum)
    assert faust_codecs.loads(name, data) == datum


def test_faust_codec_chained_with_binary_round_trips():
    wire_faust_codecs.register_faust_codecs()
    record_name, datum, _ = SAMPLES[0]
    data = faust_codecs.dumps("avro-position-input|binary", datum)
    assert faust_codecs.loads("avro-position-input|binary", data) == datum


def test_faust_registry_corrupt_value_raises_value_decode_error_caused_by_codec_error():
    wire_faust_codecs.register_faust_codecs()
    registry = FaustRegistry(key_serializer="raw", value_serializer="avro-position-input")
    assert registry.loads_value(None, _valid()) == SAMPLES[0][1]
    with pytest.raises(ValueDecodeError) as info:
        registry.loads_value(None, b"not avro")
    assert isinstance(info.value.__cause__, NotSingleObjectEncoded)


@settings(max_examples=300, deadline=None)
@given(KEY_STATES, st.sampled_from([0, 1, 2]))
def test_a_key_states_last_offset_is_read_without_decoding_it_from_every_writer(datum, writer_index):
    from streams.wire import serde

    writers = default_registry().writer_schemas("KeyState")
    writer = writers[min(writer_index, len(writers) - 1)]
    field_names = {field["name"] for field in writer.schema["fields"]}
    if not writer.current:
        datum = {**datum, "position": None}  # a retired writer's position lacks later fields
    data = default_registry().encode_with_writer(writer.fingerprint, {k: v for k, v in datum.items() if k in field_names})
    assert serde.key_state_last_offset(data) == datum["last_offset"] == decode("KeyState", data)["last_offset"]


def test_bytes_that_are_no_key_state_fail_as_the_whole_decode_does():
    from streams.wire import serde

    with pytest.raises(codec.CodecError):
        serde.key_state_last_offset(b"\xc3\x01" + default_registry().fingerprint("KeyState") + b"\x07")
    with pytest.raises(codec.CodecError):
        serde.key_state_last_offset(encode("DeadLetter", {
            "source_topic": "t", "source_partition": 0, "source_offset": 1, "key": None, "value": None,
            "error_type": "E", "reason": "r", "ts": 0}))

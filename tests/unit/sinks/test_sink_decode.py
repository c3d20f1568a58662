"""The sink's compiled reader: the same rows as the generic serde path, and the same errors.

``sinks.decode`` reads ``position-updates`` bytes straight into table rows; anything it does
not accept goes through ``serde.decode_update`` -> ``position_row`` / ``event_row``. These
tests hold the two paths to each other: valid records (every writer schema the registry
knows, optional fields set and unset, orders, large offsets, non-ASCII text) give equal rows
from the compiled reader itself; invalid or damaged ones fail with the generic path's error.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks.decode import EVENT, POSITION, UpdateDecoder, generic_row
from streams.domain import (
    AuditDecision,
    AuditRecord,
    InputKind,
    OrderRef,
    OrderRole,
    Position,
    PositionSource,
    RefusalCode,
    ReportOutcome,
    Side,
    Status,
)
from streams.wire import codec, serde

KEY = "APTUSDT@binance"
TS = 1_761_173_440_123
DECODER = UpdateDecoder()


def position(**changes) -> Position:
    values = dict(
        id=f"{KEY}/3", symbol="APTUSDT", exchange="binance", side=Side.BUY, quantity=Decimal("61.80"),
        requested_quantity=Decimal("61.8"), entry_price=None, stop_loss_pct=Decimal("2.5"), stop_loss_price=None,
        status=Status.PENDING_ENTRY, source=PositionSource.SIGNAL, signal_id="sig-1", opened_at=TS, closed_at=None,
        updated_at=TS + 9, deadline_at=TS + 30_000, close_requested=False, entry_order=None, stop_order=None,
        close_order=None, seen_reports=(), version=3,
    )
    values.update(changes)
    return Position(**values)


def audit(**changes) -> AuditRecord:
    values = dict(key=KEY, offset=7, event_id="signal:sig-7", position_id=f"{KEY}/3", input_kind=InputKind.SIGNAL,
                  decision=AuditDecision.APPLIED, reason="free -> pending_entry on open", ts=TS + 7)
    values.update(changes)
    return AuditRecord(**values)


ORDER = OrderRef(client_order_id="ppe1-abc", attempt=2, side=Side.SELL, quantity=Decimal("61.8"))

POSITIONS = [
    position(),
    position(entry_price=Decimal("10.0001"), stop_loss_price=Decimal("9.75"), status=Status.ACTIVE,
             entry_order=ORDER, stop_order=OrderRef("ppe1-stop", 0), close_order=None,
             seen_reports=("ppe1-abc:filled", "ppe1-stop:accepted"), orders_to_cancel=(ORDER, ORDER),
             closed_at_exchange=True, version=2**40, updated_at=2**45, deadline_at=None),
    position(id="1000PEPEUSDT@bybit/0", symbol="1000PEPEUSDT", exchange="bybit", side=Side.SELL,
             quantity=Decimal("1E-8"), requested_quantity=None, stop_loss_pct=Decimal("99.999999"),
             status=Status.CLOSED, source=PositionSource.EXCHANGE, signal_id=None, closed_at=TS + 10**6,
             close_requested=True, version=0, opened_at=0),
]
AUDITS = [
    audit(),
    audit(offset=2**40, position_id=None, input_kind=InputKind.REPORT, decision=AuditDecision.REFUSED,
          reason="déjà ouvert — \u2603 " * 20, status_after=Status.ACTIVE, client_order_id="ppe1-abc",
          order_role=OrderRole.STOP_LOSS, order_outcome=ReportOutcome.NOT_FOUND,
          refusal_code=RefusalCode.ALREADY_OPEN),
    audit(key="1000PEPEUSDT@bybit", input_kind=InputKind.DEADLINE, decision=AuditDecision.DUPLICATE, ts=0),
]


def encoded() -> list[bytes]:
    return ([serde.encode_position_update(value.id.rpartition("/")[0], value.version, value) for value in POSITIONS]
            + [serde.encode_audit_update(value) for value in AUDITS])


def compiled_row(data: bytes) -> tuple[str, tuple]:
    read = DECODER.compiled(data[2:codec.HEADER_LENGTH])
    assert read is not None
    return read(data)


@pytest.mark.parametrize("data", encoded())
def test_compiled_reader_gives_the_rows_of_the_generic_path(data):
    # Act
    fast = compiled_row(data)

    # Assert
    assert fast == generic_row(data)
    assert [type(value) for value in fast[1]] == [type(value) for value in generic_row(data)[1]]


def test_every_known_writer_schema_of_position_update_compiles():
    # Arrange
    registry = codec.default_registry()

    # Act
    compiled = {schema.origin: DECODER.compiled(schema.fingerprint)
                for schema in registry.writer_schemas(serde.UPDATE_RECORD)}

    # Assert
    assert len(compiled) >= 3
    assert all(read is not None for read in compiled.values()), compiled


def _retired_records() -> list[tuple[str, bytes]]:
    registry = codec.default_registry()
    found = []
    for schema in registry.writer_schemas(serde.UPDATE_RECORD)[1:]:
        fields = {field["name"] for field in _branch(schema.schema, "PositionState")["fields"]}
        order_fields = {"client_order_id", "attempt"}
        for value in POSITIONS:
            record = serde.to_record(value)
            record = {name: item for name, item in record.items() if name in fields}
            for role in ("entry_order", "stop_order", "close_order"):
                if record.get(role) is not None and "orders_to_cancel" not in fields:
                    record[role] = {name: record[role][name] for name in order_fields}
            datum = {"key": KEY, "offset": value.version, "payload": ("PositionState", record)}
            found.append((schema.origin, registry.encode_with_writer(schema.fingerprint, datum)))
        audit_fields = {field["name"] for field in _branch(schema.schema, "AuditRecord")["fields"]}
        for value in AUDITS:
            record = {name: item for name, item in serde.to_record(value).items() if name in audit_fields}
            datum = {"key": value.key, "offset": value.offset, "payload": ("AuditRecord", record)}
            found.append((schema.origin, registry.encode_with_writer(schema.fingerprint, datum)))
    return found


def _branch(schema: dict, name: str) -> dict:
    payload = next(field for field in schema["fields"] if field["name"] == "payload")
    return next(branch for branch in payload["type"] if isinstance(branch, dict) and branch["name"].endswith(name))


@pytest.mark.parametrize(("origin", "data"), _retired_records())
def test_records_of_retired_writer_schemas_give_the_rows_of_the_generic_path(origin, data):
    # Act
    fast = compiled_row(data)

    # Assert
    assert fast == generic_row(data), origin


def _update_bytes(branch: str, record: dict) -> bytes:
    return codec.encode(serde.UPDATE_RECORD, {"key": KEY, "offset": 3, "payload": (branch, record)})


INVALID = [
    ("quantity NaN", _update_bytes("PositionState", {**serde.to_record(position()), "quantity": "NaN"})),
    ("quantity not a number", _update_bytes("PositionState", {**serde.to_record(position()), "quantity": "6l.8"})),
    ("entry price infinite", _update_bytes("PositionState", {**serde.to_record(position()), "entry_price": "Inf"})),
    ("order quantity NaN", _update_bytes("PositionState", {
        **serde.to_record(position()), "entry_order": {**serde.to_record(ORDER), "quantity": "sNaN"}})),
    ("unknown input kind", _update_bytes("AuditRecord", {**serde.to_record(audit()), "input_kind": "telepathy"})),
    ("unknown decision", _update_bytes("AuditRecord", {**serde.to_record(audit()), "decision": "maybe"})),
    ("unknown outcome", _update_bytes("AuditRecord", {**serde.to_record(audit()), "order_outcome": "lost"})),
    ("unknown refusal code", _update_bytes("AuditRecord", {**serde.to_record(audit()), "refusal_code": "nope"})),
    ("key without exchange", _update_bytes("AuditRecord", {**serde.to_record(audit()), "key": "APTUSDT"})),
]


def _outcome(function, data: bytes):
    try:
        return "row", function(data)
    except Exception as error:  # noqa: BLE001 - the error's type is what is compared
        return "error", type(error)


@pytest.mark.parametrize(("case", "data"), INVALID, ids=[case for case, _ in INVALID])
def test_an_invalid_record_fails_with_the_generic_paths_error(case, data):
    # Act
    outcome = _outcome(DECODER.decode, data)

    # Assert
    assert outcome[0] == "error", case
    assert outcome == _outcome(generic_row, data)


@pytest.mark.parametrize("damage", ["truncated", "trailing byte", "not single-object", "unknown fingerprint"])
def test_damaged_bytes_fail_with_the_generic_paths_error(damage):
    # Arrange
    data = encoded()[1]
    damaged = {"truncated": data[:-3], "trailing byte": data + b"\x00", "not single-object": b"\x00" + data[1:],
               "unknown fingerprint": data[:2] + b"\xff" * 8 + data[10:]}[damage]

    # Act
    outcome = _outcome(DECODER.decode, damaged)

    # Assert
    assert outcome[0] == "error"
    assert outcome == _outcome(generic_row, damaged)
    assert issubclass(outcome[1], codec.DecodeError)


def mutate(data: bytes, draw) -> bytes:
    """One byte of the body replaced, or the body cut or extended (``draw``: hypothesis's ``st.data()``)."""
    body_at = st.integers(min_value=codec.HEADER_LENGTH, max_value=len(data) - 1)
    mutation = draw.draw(st.sampled_from(["replace", "cut", "extend"]))
    if mutation == "replace":
        at = draw.draw(body_at)
        mutated = data[:at] + bytes([draw.draw(st.integers(0, 255))]) + data[at + 1:]
    elif mutation == "cut":
        mutated = data[:draw.draw(body_at)]
    else:
        mutated = data + draw.draw(st.binary(min_size=1, max_size=8))
    return mutated


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(encoded()), st.data())
def test_any_mutated_record_gives_the_generic_paths_row_or_error(data, draw):
    # Arrange: one byte of the body replaced, or the body cut or extended.
    mutated = mutate(data, draw)

    # Act
    outcome = _outcome(DECODER.decode, mutated)

    # Assert
    assert outcome == _outcome(generic_row, mutated)


def test_decode_returns_the_kind_of_row():
    # Act
    kinds = [DECODER.decode(data)[0] for data in encoded()]

    # Assert
    assert kinds == [POSITION] * len(POSITIONS) + [EVENT] * len(AUDITS)


def test_a_position_changed_only_in_a_field_the_table_lacks_still_decodes_the_same():
    # Arrange: seen_reports is not a column, yet its bytes must be read (and are checked).
    data = serde.encode_position_update(KEY, 3, dataclasses.replace(position(), seen_reports=("x",) * 300))

    # Act / Assert
    assert compiled_row(data) == generic_row(data)

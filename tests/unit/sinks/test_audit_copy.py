"""Audit records straight to binary COPY rows: the rows of the row path, or nothing.

``sinks.audit_copy`` turns an audit record's Avro bytes into its ``position_events`` row in
PostgreSQL's binary COPY format. These tests read each COPY row back by the format's rules
(``read_copy_row``) and hold it to the row path (``serde`` -> ``event_row``): for valid
records the same row, for anything the row path refuses no row (the caller then meets the
row path's error), for mutated bytes either the row path's row or nothing.
"""

from __future__ import annotations

import copy
import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks.audit_copy import AUDIT_FIELDS, COPY_HEADER, COPY_TRAILER, AuditTranscoder, _audit_layout, copy_stream
from sinks.decode import EVENT, generic_row
from sinks.rows import EVENT_COLUMNS
from tests.unit.sinks.test_sink_decode import POSITIONS, mutate
from streams.domain import (
    AuditDecision,
    AuditRecord,
    InputKind,
    OrderRole,
    RefusalCode,
    ReportOutcome,
    Status,
)
from streams.wire import codec, serde

TRANSCODER = AuditTranscoder()
TS = 1_761_173_440_123
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_BIGINT_COLUMNS = {"input_offset"}
_TIME_COLUMNS = {"time"}


def read_copy_row(row: bytes) -> tuple:
    """One binary COPY row back into Python values (text, bigint, timestamptz), by the format's rules."""
    (count,) = struct.unpack_from(">h", row, 0)
    assert count == len(EVENT_COLUMNS)
    position = 2
    values = []
    for column in EVENT_COLUMNS:
        (length,) = struct.unpack_from(">i", row, position)
        position += 4
        if length == -1:
            values.append(None)
            continue
        field = row[position:position + length]
        position += length
        if column in _BIGINT_COLUMNS:
            values.append(struct.unpack(">q", field)[0])
        elif column in _TIME_COLUMNS:
            values.append(_PG_EPOCH + timedelta(microseconds=struct.unpack(">q", field)[0]))
        else:
            values.append(field.decode())
    assert position == len(row)
    return tuple(values)


def audit(**changes) -> AuditRecord:
    values = dict(key="APTUSDT@binance", offset=7, event_id="signal:sig-7", position_id="APTUSDT@binance/3",
                  input_kind=InputKind.SIGNAL, decision=AuditDecision.APPLIED, reason="free -> pending_entry",
                  ts=TS)
    values.update(changes)
    return AuditRecord(**values)


AUDITS = [
    audit(),
    audit(offset=2**40, position_id=None, input_kind=InputKind.REPORT, decision=AuditDecision.REFUSED,
          reason="déjà ouvert — \u2603 " * 20, status_after=Status.ACTIVE, client_order_id="ppe1-abc",
          order_role=OrderRole.STOP_LOSS, order_outcome=ReportOutcome.NOT_FOUND,
          refusal_code=RefusalCode.ALREADY_OPEN),
    audit(key="1000PEPEUSDT@bybit", input_kind=InputKind.DEADLINE, decision=AuditDecision.DUPLICATE, ts=0),
    audit(key="A@B@okx", ts=-1, offset=0, reason="", event_id="e" * 200, status_after=Status.ROLLED_BACK,
          order_role=OrderRole.CLOSE),
]


@pytest.mark.parametrize("value", AUDITS)
def test_an_audit_record_becomes_the_row_of_the_row_path(value):
    # Arrange
    data = serde.encode_audit_update(value)

    # Act
    natural_key, row = TRANSCODER.transcode(data)

    # Assert
    assert natural_key == (value.key, value.offset)
    assert read_copy_row(row) == generic_row(data)[1]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    key=st.tuples(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=8).filter(lambda s: "@" not in s)),
    offset=st.integers(0, 2**62), text=st.text(max_size=40), ts=st.integers(-2**40, 2**44),
    optional=st.booleans(), kind=st.sampled_from(list(InputKind)), decision=st.sampled_from(list(AuditDecision)),
    status=st.sampled_from(list(Status)), role=st.sampled_from(list(OrderRole)),
    outcome=st.sampled_from(list(ReportOutcome)), refusal=st.sampled_from(list(RefusalCode)),
)
def test_any_audit_record_becomes_the_row_of_the_row_path(key, offset, text, ts, optional, kind, decision, status,
                                                           role, outcome, refusal):
    # Arrange
    value = audit(key="@".join(key), offset=offset, event_id=text or "e", reason=text, ts=ts, input_kind=kind,
                  decision=decision, position_id=text if optional else None,
                  status_after=status if optional else None, client_order_id=text if optional else None,
                  order_role=role if optional else None, order_outcome=outcome if optional else None,
                  refusal_code=refusal if optional else None)
    data = serde.encode_audit_update(value)

    # Act
    natural_key, row = TRANSCODER.transcode(data)

    # Assert
    assert natural_key == (value.key, value.offset)
    assert read_copy_row(row) == generic_row(data)[1]


def test_a_position_update_is_left_to_the_row_path():
    # Arrange
    data = serde.encode_position_update("APTUSDT@binance", 3, POSITIONS[1])

    # Act / Assert
    assert TRANSCODER.transcode(data) is None


def _update_bytes(record: dict) -> bytes:
    return codec.encode(serde.UPDATE_RECORD, {"key": "APTUSDT@binance", "offset": 3,
                                              "payload": ("AuditRecord", record)})


REFUSED_BY_THE_ROW_PATH = [
    ("unknown input kind", _update_bytes({**serde.to_record(audit()), "input_kind": "telepathy"})),
    ("unknown decision", _update_bytes({**serde.to_record(audit()), "decision": "maybe"})),
    ("unknown outcome", _update_bytes({**serde.to_record(audit()), "order_outcome": "lost"})),
    ("unknown refusal code", _update_bytes({**serde.to_record(audit()), "refusal_code": "nope"})),
    ("key without exchange", _update_bytes({**serde.to_record(audit()), "key": "APTUSDT"})),
    ("key without symbol", _update_bytes({**serde.to_record(audit()), "key": "@binance"})),
    ("time past year 9999", _update_bytes({**serde.to_record(audit()), "ts": 253_402_300_800_000})),
    ("truncated", serde.encode_audit_update(audit())[:-2]),
    ("trailing byte", serde.encode_audit_update(audit()) + b"\x00"),
    ("invalid UTF-8", serde.encode_audit_update(audit(reason="abc")).replace(b"abc", b"a\xffc")),
]


@pytest.mark.parametrize(("case", "data"), REFUSED_BY_THE_ROW_PATH, ids=[case for case, _ in REFUSED_BY_THE_ROW_PATH])
def test_what_the_row_path_refuses_gets_no_row(case, data):
    # Act
    transcoded = TRANSCODER.transcode(data)

    # Assert: no row here; the row path raises for it (the sink dead-letters the record).
    assert transcoded is None, case
    with pytest.raises(Exception):  # noqa: B017 - the row path's own error types are test_sink_decode's subject
        generic_row(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from([serde.encode_audit_update(value) for value in AUDITS]), st.data())
def test_any_mutated_record_gets_the_row_paths_row_or_none(data, draw):
    # Arrange: one byte of the body replaced, or the body cut or extended.
    mutated = mutate(data, draw)

    # Act
    transcoded = TRANSCODER.transcode(mutated)

    # Assert
    if transcoded is not None:
        kind, row = generic_row(mutated)
        assert kind == EVENT
        assert read_copy_row(transcoded[1]) == row


@pytest.mark.parametrize("value", AUDITS[:4])
def test_every_low_bit_set_in_the_body_gets_the_row_paths_row_or_none(value):
    # Arrange: each even byte below 0x80 of the body made odd, one at a time. Where the byte is
    # a one-byte zig-zag length, the length becomes negative: the row path refuses the record.
    data = serde.encode_audit_update(value)
    mutations = [data[:index] + bytes([data[index] | 1]) + data[index + 1:]
                 for index in range(codec.HEADER_LENGTH, len(data)) if data[index] < 0x80 and not data[index] & 1]

    # Act / Assert: a row only where the row path reads the same row.
    assert mutations
    for mutated in mutations:
        transcoded = TRANSCODER.transcode(mutated)
        if transcoded is not None:
            assert read_copy_row(transcoded[1]) == generic_row(mutated)[1]


def test_only_the_current_writer_schema_is_served():
    # Arrange
    registry = codec.default_registry()
    current, *retired = registry.writer_schemas(serde.UPDATE_RECORD)

    # Act / Assert
    assert TRANSCODER.serves(current.fingerprint)
    assert retired and not any(TRANSCODER.serves(schema.fingerprint) for schema in retired)


def _changed_schema(change) -> codec.WriterSchema:
    schema = copy.deepcopy(dict(codec.default_registry().current(serde.UPDATE_RECORD).schema))
    payload = next(field for field in schema["fields"] if field["name"] == "payload")
    audit_branch = next(branch for branch in payload["type"]
                        if isinstance(branch, dict) and branch["name"].endswith("AuditRecord"))
    change(audit_branch["fields"])
    return codec.build_writer_schema(schema, "test", current=False)


@pytest.mark.parametrize("change", [
    lambda fields: fields.append({"name": "extra", "type": "string", "default": ""}),
    lambda fields: fields.pop(),
    lambda fields: fields.__setitem__(7, {"name": "ts", "type": "int"}),
    lambda fields: fields.__setitem__(2, {"name": "event_id", "type": ["null", "string"], "default": None}),
], ids=["a field added", "a field removed", "a type changed", "a string made optional"])
def test_a_writer_schema_of_another_layout_is_not_served(change):
    # Act / Assert
    assert _audit_layout(_changed_schema(change)) is None
    assert _audit_layout(codec.default_registry().current(serde.UPDATE_RECORD)) is not None
    assert [name for name, _type in AUDIT_FIELDS] == [
        field["name"] for field in next(
            branch for branch in next(field for field in codec.default_registry().current(
                serde.UPDATE_RECORD).schema["fields"] if field["name"] == "payload")["type"]
            if isinstance(branch, dict) and branch["name"].endswith("AuditRecord"))["fields"]]


def test_a_copy_stream_is_the_signature_the_rows_and_the_end_marker():
    # Arrange
    rows = b"".join(TRANSCODER.transcode(serde.encode_audit_update(value))[1] for value in AUDITS)

    # Act
    stream = copy_stream(rows)

    # Assert
    assert stream.startswith(b"PGCOPY\n\xff\r\n\x00") and stream[:len(COPY_HEADER)] == COPY_HEADER
    assert struct.unpack_from(">ii", stream, 11) == (0, 0)
    assert stream.endswith(COPY_TRAILER) and COPY_TRAILER == b"\xff\xff"
    assert stream[len(COPY_HEADER):-2] == rows

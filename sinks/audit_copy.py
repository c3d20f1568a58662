"""Audit records from their Avro bytes straight into PostgreSQL binary COPY rows (pure, no I/O).

Three of five update records are audit records, and each becomes one row of
``monitoring.position_events``. Read into a row tuple (``sinks.decode``) and encoded again
by asyncpg for the COPY, every column is converted twice: bytes -> str -> bytes, epoch ms
-> datetime -> microseconds. Avro and PostgreSQL's binary COPY both carry a string as a
length and its UTF-8 bytes, so here the bytes go through unchanged: an audit record
becomes its COPY row (``EVENT_COLUMNS`` order) without a str, datetime or tuple.

The format (PostgreSQL documentation, "COPY", section "Binary Format"): the signature
``PGCOPY\\n\\377\\r\\n\\0``, a 32-bit flags field and a 32-bit header-extension length; per
row a 16-bit field count, then per field a 32-bit length (-1: NULL) and its bytes; a 16-bit
-1 at the end. ``text`` is its bytes, ``bigint`` 8 bytes big-endian, ``timestamptz``
8 bytes of microseconds since 2000-01-01 00:00 UTC.

It is written for one layout: the AuditRecord branch of ``PositionUpdate`` as the current
schema has it. ``AuditTranscoder`` compares each known writer schema with
``AUDIT_FIELDS`` and serves only the fingerprints that match; a record of any other writer
(a retired schema, a changed one) is read by the row path as before. It checks what the
row path checks (every string valid UTF-8, every enum-valued string a member of its domain
enum, the key ``SYMBOL@exchange``, the time one a Python datetime holds, the body read
exactly to its end) and gives up (None) on anything else: the caller then reads that
record by the row path, which decides with its usual errors.
``tests/unit/sinks/test_audit_copy.py`` holds both paths to the same rows.
"""

from __future__ import annotations

import struct
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sinks.decode import collect_named
from sinks.rows import EVENT_COLUMNS
from streams.domain import AuditDecision, InputKind, OrderRole, RefusalCode, ReportOutcome, Status
from streams.wire import codec, serde

__all__ = ["AUDIT_FIELDS", "AuditTranscoder", "COPY_HEADER", "COPY_TRAILER", "copy_stream"]

#: Start of a binary COPY stream: the signature, no flags, no header extension.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
#: End of a binary COPY stream: a field count of -1.
COPY_TRAILER = struct.pack(">h", -1)

#: The AuditRecord fields this transcoder reads, in writer order: (name, Avro type), a
#: union as a tuple of its branches, an enum as ``("enum", its domain enum)``.
AUDIT_FIELDS: tuple[tuple[str, Any], ...] = (
    ("key", "string"),
    ("offset", "long"),
    ("event_id", "string"),
    ("position_id", ("null", "string")),
    ("input_kind", "string"),
    ("decision", "string"),
    ("reason", "string"),
    ("ts", "long"),
    ("status_after", ("null", ("enum", Status))),
    ("client_order_id", ("null", "string")),
    ("order_role", ("null", ("enum", OrderRole))),
    ("order_outcome", ("null", "string")),
    ("refusal_code", ("null", "string")),
)

_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z in epoch ms
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# The times ``sinks.rows.epoch_ms_to_datetime`` can hold: the row path refuses the others.
_MIN_MS = _epoch_ms(datetime.min.replace(tzinfo=UTC))
_MAX_MS = _epoch_ms(datetime.max.replace(tzinfo=UTC))

_FIELD_COUNT = struct.pack(">h", len(EVENT_COLUMNS))
_LENGTH = struct.Struct(">i").pack
_BIGINT = struct.Struct(">iq").pack  # the field's length (8), then the value
_NULL = _LENGTH(-1)


def _text(value: bytes) -> bytes:
    return _LENGTH(len(value)) + value


def copy_stream(rows: bytes) -> bytes:
    """A whole binary COPY stream around rows made by ``AuditTranscoder`` (concatenated)."""
    return b"".join((COPY_HEADER, rows, COPY_TRAILER))


def _signature(schema: Any, named: dict[str, Any]) -> Any:
    """A writer field type in ``AUDIT_FIELDS``' notation (enums by their symbols)."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return tuple(_signature(branch, named) for branch in schema)
    if isinstance(schema, dict):
        if schema.get("type") == "enum":
            named.setdefault(schema["name"], schema)
            return ("enum", tuple(schema["symbols"]))
        if schema.get("type") in ("string", "long"):
            return schema["type"]
        return ("unsupported", schema.get("type"))
    return schema


def _collect_named(schema: Any, named: dict[str, Any]) -> None:
    """``sinks.decode.collect_named``, each named type also under its short name."""
    collect_named(schema, named)
    named.update({name.rpartition(".")[2]: value for name, value in list(named.items())})


def _audit_layout(writer: codec.WriterSchema) -> tuple[int, dict[str, tuple[str, ...]]] | None:
    """(the AuditRecord branch's union index, each enum field's writer symbols) when the
    writer schema has exactly ``AUDIT_FIELDS``; None otherwise."""
    schema = dict(writer.schema)
    named: dict[str, Any] = {}
    _collect_named(schema, named)
    fields = [field["name"] for field in schema.get("fields", ())]
    if fields != ["key", "offset", "payload"]:
        return None
    wrapper = {field["name"]: field["type"] for field in schema["fields"]}
    if _signature(wrapper["key"], named) != "string" or _signature(wrapper["offset"], named) != "long":
        return None
    branches = wrapper["payload"]
    if not isinstance(branches, list):
        return None
    resolved = [named.get(branch, branch) if isinstance(branch, str) else branch for branch in branches]
    audit_index = next((index for index, branch in enumerate(resolved)
                        if isinstance(branch, dict) and branch.get("name", "").rpartition(".")[2] == "AuditRecord"),
                       None)
    if audit_index is None:
        return None
    audit_fields = resolved[audit_index]["fields"]
    if [field["name"] for field in audit_fields] != [name for name, _type in AUDIT_FIELDS]:
        return None
    enum_symbols: dict[str, tuple[str, ...]] = {}
    for field, (name, expected) in zip(audit_fields, AUDIT_FIELDS, strict=True):
        actual = _signature(field["type"], named)
        if isinstance(expected, tuple) and isinstance(expected[1], tuple):  # ("null", ("enum", DomainEnum))
            domain = {member.value for member in expected[1][1]}
            if not (isinstance(actual, tuple) and len(actual) == 2 and actual[0] == "null"
                    and isinstance(actual[1], tuple) and actual[1][0] == "enum" and set(actual[1][1]) <= domain):
                return None
            enum_symbols[name] = actual[1][1]
        elif actual != expected:
            return None
    return audit_index, enum_symbols


def _members(enum: Any) -> frozenset[bytes]:
    return frozenset(member.value.encode() for member in enum)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """``serde.zigzag_varint``, refused past 10 bytes (more than a long holds), as the compiled reader refuses.

    The generated reader calls it for a varint of two bytes or more only (a time takes six):
    one loop that stops at the limit, no second call.
    """
    result = 0
    shift = 0
    while shift < 70:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    raise ValueError("varint too long")


# How each field type of ``AUDIT_FIELDS`` is read, as lines of the generated reader (``{name}``
# its local, ``{indent}`` the indentation). Each reads what the closure-per-field reader of
# before read and refuses what it refused (a negative length, a string past the end, a union
# branch other than null or the value, a negative enum index), inline: with ``_varint``'s one
# loop, 4.7 -> 3.5 us a record averaged over the sink benchmark's 150,000 records (three in
# five of them audit records; 2026-12-04, same rows).
_READ_LONG = """\
{indent}byte = buf[pos]
{indent}if byte < 0x80:
{indent}    {name} = (byte >> 1) ^ -(byte & 1)
{indent}    pos += 1
{indent}else:
{indent}    {name}, pos = varint(buf, pos)
"""
_READ_STRING = """\
{indent}size = buf[pos]
{indent}if size < 0x80:
{indent}    if size & 1:
{indent}        raise ValueError("negative length")
{indent}    size >>= 1
{indent}    pos += 1
{indent}else:
{indent}    size, pos = varint(buf, pos)
{indent}    if size < 0:
{indent}        raise ValueError("negative length")
{indent}end = pos + size
{indent}if end > len(buf):
{indent}    raise ValueError("string past the end")
{indent}{name} = buf[pos:end]
{indent}pos = end
"""
_READ_OPTIONAL = """\
{indent}branch = buf[pos]
{indent}if branch == 0:
{indent}    {name} = {none}
{indent}    pos += 1
{indent}elif branch == 2:  # zig-zag 1: the value's branch
{indent}    pos += 1
{value}{indent}else:
{indent}    raise ValueError("union branch")
"""


def _read_field(name: str, avro_type: Any, indent: str) -> str:
    """The generated lines reading one field of ``AUDIT_FIELDS`` into the local ``name``."""
    if avro_type == "string":
        return _READ_STRING.format(name=name, indent=indent)
    if avro_type == "long":
        return _READ_LONG.format(name=name, indent=indent)
    value_type = avro_type[1]
    if value_type == "string":  # ("null", "string"): None or the bytes
        return _READ_OPTIONAL.format(name=name, indent=indent, none="None",
                                     value=_READ_STRING.format(name=name, indent=indent + "    "))
    # ("null", ("enum", ...)): NULL or the symbol's COPY field, from the table ``{name}_fields``
    value = (_READ_LONG.format(name="index", indent=indent + "    ")
             + f"{indent}    if index < 0:\n{indent}        raise ValueError('enum index')\n"
             + f"{indent}    {name} = {name}_fields[index]\n")
    return _READ_OPTIONAL.format(name=name, indent=indent, none="null", value=value)


_TRANSCODE_BODY = """\
    if pos != len(buf):
        return None
    if input_kind not in input_kinds or decision not in decisions \\
            or (order_outcome is not None and order_outcome not in outcomes) \\
            or (refusal_code is not None and refusal_code not in refusal_codes) \\
            or not min_ms <= ts <= max_ms:
        return None
    utf8(wrapper_key)
    utf8(key)
    utf8(event_id)
    utf8(reason)
    at = key.rfind(b"@")
    if at <= 0 or at == len(key) - 1:
        return None  # not SYMBOL@exchange
    symbol, exchange = key[:at], key[at + 1:]
    if position_id is None:
        position_field = null
    else:
        utf8(position_id)
        position_field = length(len(position_id)) + position_id
    if client_order_id is None:
        client_order_field = null
    else:
        utf8(client_order_id)
        client_order_field = length(len(client_order_id)) + client_order_id
    row = b"".join((
        field_count,
        length(len(key)), key,
        bigint(8, offset),
        length(len(symbol)), symbol,
        length(len(exchange)), exchange,
        position_field,
        length(len(input_kind)), input_kind,
        length(len(decision)), decision,
        length(len(reason)), reason,
        length(len(event_id)), event_id,
        bigint(8, (ts - pg_epoch_ms) * 1000),
        status_after,
        client_order_field,
        order_role,
        null if order_outcome is None else length(len(order_outcome)) + order_outcome,
        null if refusal_code is None else length(len(refusal_code)) + refusal_code,
    ))
    return (key.decode(), offset), row
"""


def _utf8(value: bytes) -> None:
    if not value.isascii():
        value.decode()  # UnicodeDecodeError: the row path refuses the record too


def _transcoder(audit_branch: int, status_symbols: tuple[str, ...],
                role_symbols: tuple[str, ...]) -> Callable[[bytes], tuple[tuple[str, int], bytes] | None]:
    """The function reading one record of this layout (see ``AuditTranscoder.transcode``).

    Generated from ``AUDIT_FIELDS`` (our own schema description, nothing of a record goes into
    the source): the wrapper's key, offset and union branch, then each audit field inline.
    """
    lines = [f"pos = {codec.HEADER_LENGTH}\n",
             _read_field("wrapper_key", "string", ""), _read_field("wrapper_offset", "long", ""),
             _read_field("payload_branch", "long", ""),
             "if payload_branch != audit_branch:\n    return None\n"]
    lines += [_read_field(name, avro_type, "") for name, avro_type in AUDIT_FIELDS]
    body = textwrap.indent("".join(lines) + textwrap.dedent(_TRANSCODE_BODY), " " * 8)
    # Anything unusual (a short record, a bad varint, an enum index past its symbols): None,
    # and the row path decides, with its errors.
    source = f"def transcode(buf):\n    try:\n{body}    except (IndexError, ValueError, struct.error):\n        return None\n"
    namespace: dict[str, Any] = {
        "audit_branch": audit_branch, "varint": _varint, "utf8": _utf8,
        "status_after_fields": tuple(_text(symbol.encode()) for symbol in status_symbols),
        "order_role_fields": tuple(_text(symbol.encode()) for symbol in role_symbols),
        "input_kinds": _members(InputKind), "decisions": _members(AuditDecision),
        "outcomes": _members(ReportOutcome), "refusal_codes": _members(RefusalCode),
        "length": _LENGTH, "bigint": _BIGINT, "null": _NULL, "field_count": _FIELD_COUNT,
        "min_ms": _MIN_MS, "max_ms": _MAX_MS, "pg_epoch_ms": _PG_EPOCH_MS, "struct": struct,
    }
    exec(compile(source, "<audit transcoder>", "exec"), namespace)  # noqa: S102 - our own source, see above
    return namespace["transcode"]


class AuditTranscoder:
    """``transcode(bytes)``: an audit update record as (its natural key, its binary COPY row), or None.

    None for a position update, a record of a writer schema without ``AUDIT_FIELDS``, and
    anything it does not accept: the row path reads those.
    """

    def __init__(self, registry: codec.SchemaRegistry | None = None) -> None:
        registry = registry or codec.default_registry()
        self._by_fingerprint: dict[bytes, Callable[[bytes], tuple[tuple[str, int], bytes] | None]] = {}
        for writer in registry.writer_schemas(serde.UPDATE_RECORD):
            layout = _audit_layout(writer)
            if layout is not None:
                audit_branch, enum_symbols = layout
                self._by_fingerprint[writer.fingerprint] = _transcoder(
                    audit_branch, enum_symbols["status_after"], enum_symbols["order_role"])

    def serves(self, fingerprint: bytes) -> bool:
        """Whether records of this writer fingerprint are read here."""
        return fingerprint in self._by_fingerprint

    def transcode(self, data: bytes) -> tuple[tuple[str, int], bytes] | None:
        """(``(key, input_offset)``, the row's binary COPY bytes) of an audit record, or None."""
        if len(data) <= codec.HEADER_LENGTH or data[:2] != codec.MARKER:
            return None
        read = self._by_fingerprint.get(data[2:codec.HEADER_LENGTH])
        return None if read is None else read(data)

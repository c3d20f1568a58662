"""Avro records of plain fields, encoded by hand: the audit record of every applied input, and commands.

Every applied input writes one audit record to ``position-updates``. Through the codec it
took 14 us (fastavro's writer behind the datum's checks, a buffer, the union's resolution;
2026-12-02), the second largest encode of the worker. Its fields are all strings, longs,
enums and ``["null", ...]`` unions of those, and Avro's binary encoding of those is short:
a long is zig-zag then 7 bits a byte, lowest first; a string its UTF-8 length then its
bytes; an enum its symbol's index; a union the branch's index then the branch; a record its
fields one after another, in declared order. ``FlatRecordEncoder`` compiles that from the
current schema; the tests hold it byte for byte to the codec. A command (every open and
every close sends at least one) took 13 us through the codec, as much again as deciding it
(py-spy of a worker at 1,000 opens/s, 2026-12-04); ``CommandRecords`` writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streams.domain import AuditRecord
from streams.domain.commands import Command
from streams.wire import codec
from streams.wire.errors import InvalidRecord
from streams.wire.serde import COMMAND_HEADER_FIELDS, COMMAND_RECORD, UPDATE_RECORD, to_record


def avro_long(value: int) -> bytes:
    """A long (or int) as Avro's binary encoding writes it: zig-zag, then 7 bits a byte, lowest first."""
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while encoded > 0x7F:
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7
    out.append(encoded)
    return bytes(out)


#: The encodings of 0 to 8,191 (a string's length, an enum's index, most offsets), computed once.
_SMALL_LONGS = [avro_long(number) for number in range(8192)]


def avro_array(items: list[bytes]) -> bytes:
    """An array of already encoded items as fastavro writes it: one block of them all, then the
    empty block that ends an array (the Avro specification: blocks, each "a long count value,
    followed by that many array items", the last of count zero); ``b"\x00"`` alone when empty."""
    if not items:
        return b"\x00"
    return _long(len(items)) + b"".join(items) + b"\x00"


def avro_string(value: str) -> bytes:
    """A string as Avro's binary encoding writes it: its UTF-8 length as a long, then the bytes."""
    data = value.encode("utf-8")
    return avro_long(len(data)) + data


def named_types(schema: Any, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every record, enum and fixed defined in ``schema``, by its unqualified name."""
    found = {} if into is None else into
    if isinstance(schema, list):
        for member in schema:
            named_types(member, found)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            found.setdefault(schema["name"].rsplit(".", 1)[-1], schema)
        for field in schema.get("fields", ()):
            named_types(field["type"], found)
        for nested in ("items", "values"):
            if nested in schema:
                named_types(schema[nested], found)
    return found


def union_branch(union: list, branch: str) -> int:
    """The index of ``branch`` (a type name, unqualified) in ``union``."""
    names = [(member if isinstance(member, str) else member.get("name", member.get("type"))).rsplit(".", 1)[-1]
             for member in union]
    return names.index(branch)


class FlatRecordEncoder:
    """A record's body (no header) from its ``to_record`` mapping, for records of strings,
    longs, ints, booleans, enums, records and arrays of those, and ``["null", one of those]``
    unions only.

    Raises ``codec.SchemaDefinitionError`` at construction for any other field type, and
    ``InvalidRecord`` when a value does not fit its field.
    """

    def __init__(self, record: Mapping[str, Any], named: Mapping[str, Any]) -> None:
        self.name = record["name"]
        self._encode = value_encoder(record, named, self.name)

    def encode(self, datum: Mapping[str, Any]) -> bytes:
        """The record's body: each field's encoding in declared order."""
        try:
            return self._encode(datum)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidRecord(f"{self.name} does not accept the datum: {type(error).__name__}: {error}"[:500]) \
                from error


def value_encoder(schema: Any, named: Mapping[str, Any], where: str) -> Callable[[Any], bytes]:
    """``encode(value)``: the Avro encoding of a value of ``schema`` (given as ``to_record`` gives
    it), for the types ``FlatRecordEncoder`` takes; ``codec.SchemaDefinitionError`` for others.
    Raises ``TypeError``, ``ValueError`` or ``KeyError`` for a value that does not fit."""
    if isinstance(schema, str) and schema.rsplit(".", 1)[-1] in named:
        schema = named[schema.rsplit(".", 1)[-1]]
    kind = schema if isinstance(schema, str) else schema.get("type") if isinstance(schema, dict) else "union"
    if kind == "string":
        return _string
    if kind in ("long", "int"):
        return _long
    if kind == "boolean":
        return _boolean
    if kind == "enum":
        indexes = {symbol: avro_long(index) for index, symbol in enumerate(schema["symbols"])}

        def enum_symbol(value: str) -> bytes:
            encoded = indexes.get(value)
            if encoded is None:
                raise ValueError(f"{value!r} is not a symbol of {schema['name']}")
            return encoded
        return enum_symbol
    if kind == "record":
        fields = [(field["name"], value_encoder(field["type"], named, f"{where}.{field['name']}"))
                  for field in schema["fields"]]

        def record(value: Mapping[str, Any]) -> bytes:
            return b"".join([encode(value[name]) for name, encode in fields])
        return record
    if kind == "array":
        item = value_encoder(schema["items"], named, f"{where}[]")

        def array(values: list | tuple) -> bytes:
            if not isinstance(values, (list, tuple)):
                raise TypeError(f"expected a list, got {type(values).__name__}")
            return avro_array([item(value) for value in values])
        return array
    if kind == "union" and len(schema) == 2 and "null" in schema:
        null_index = schema.index("null")
        other_index = 1 - null_index
        inner = value_encoder(schema[other_index], named, where)
        null, other = avro_long(null_index), avro_long(other_index)

        def optional(value: Any) -> bytes:
            return null if value is None else other + inner(value)
        return optional
    raise codec.SchemaDefinitionError(f"{where}: {schema!r} is not a flat field type")


# Like fastavro's writer, a field takes any str (a StrEnum member too) and any int (a bool too).
def _string(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    data = value.encode("utf-8")
    size = len(data)
    return (_SMALL_LONGS[size] if size < 8192 else avro_long(size)) + data


def _long(value: int) -> bytes:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if 0 <= value < 8192:
        return _SMALL_LONGS[value]
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{value} does not fit a long")
    return avro_long(value)


def _boolean(value: bool) -> bytes:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return b"\x01" if value else b"\x00"


class AuditUpdates:
    """An ``AuditRecord`` as its ``position-updates`` record value, byte for byte
    ``serde.encode_audit_update`` (the header, the key, the offset, the union branch, the record)."""

    def __init__(self) -> None:
        writer = codec.default_registry().current(UPDATE_RECORD)
        named = named_types(dict(writer.schema))
        (payload,) = [field["type"] for field in writer.schema["fields"] if field["name"] == "payload"]
        if [field["name"] for field in writer.schema["fields"]] != ["key", "offset", "payload"]:
            raise codec.SchemaDefinitionError(f"{writer.name}: not the key, offset, payload record it was")
        self._header = codec.MARKER + writer.fingerprint
        self._branch = avro_long(union_branch(payload, "AuditRecord"))
        self._record = FlatRecordEncoder(named["AuditRecord"], named)

    def encode(self, audit: AuditRecord) -> bytes:
        """The update record value of ``audit``."""
        return b"".join((self._header, _string(audit.key), _long(audit.offset), self._branch,
                         self._record.encode(to_record(audit))))


class CommandRecords:
    """A ``Command`` as its ``position-commands`` record value, byte for byte
    ``serde.encode_command`` (the header, the fields every command has, the union branch of
    its type, its own fields)."""

    def __init__(self) -> None:
        writer = codec.default_registry().current(COMMAND_RECORD)
        named = named_types(dict(writer.schema))
        fields = writer.schema["fields"]
        if [field["name"] for field in fields] != [*COMMAND_HEADER_FIELDS, "payload"]:
            raise codec.SchemaDefinitionError(f"{writer.name}: not the header fields and payload it was")
        self._header = codec.MARKER + writer.fingerprint
        self._common = [(field["name"], value_encoder(field["type"], named, f"{writer.name}.{field['name']}"))
                        for field in fields[:-1]]
        payload = fields[-1]["type"]
        self._branches = {
            name: (avro_long(union_branch(payload, name)), FlatRecordEncoder(named[name], named))
            for name in ((member if isinstance(member, str) else member["name"]).rsplit(".", 1)[-1]
                         for member in payload)}

    def encode(self, command: Command) -> bytes:
        """The command record value of ``command``; ``InvalidRecord`` when it does not fit."""
        record = to_record(command)
        try:
            branch, body = self._branches[type(command).__name__]
            common = [encode(record.pop(name)) for name, encode in self._common]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidRecord(f"{COMMAND_RECORD} does not accept the command: {type(error).__name__}: {error}"[:500]) \
                from error
        return b"".join((self._header, *common, branch, body.encode(record)))


__all__ = ["AuditUpdates", "CommandRecords", "FlatRecordEncoder", "avro_array", "avro_long", "avro_string", "named_types", "union_branch",
           "value_encoder"]

"""Domain values <-> Avro records <-> bytes, for every topic and the table.

The domain (``streams.domain``) knows nothing of Avro; the codec (``streams.wire.codec``) knows
nothing of the domain. This module maps one to the other by the dataclasses' own type hints,
so a field added to both a dataclass and its schema needs no code here:

- ``Decimal`` <-> decimal string (the exact exchange value, see the schemas' docs);
- ``StrEnum`` <-> its string value (Avro enum symbols are the same strings);
- ``tuple[...]`` <-> list; nested dataclasses <-> nested records;
- a union of several dataclasses (an input's or a command's payload) <-> the codec's
  ``(branch_name, fields)`` pair.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from decimal import Decimal, InvalidOperation
from enum import Enum
from collections.abc import Callable
from typing import Any

from streams.wire import codec
from streams.domain import (
    AuditRecord,
    Command,
    InputEvent,
    KeyState,
    Position,
    SeenSignal,
)
from streams.domain import commands as domain_commands
from streams.domain import model as domain_model

__all__ = [
    "INPUT_RECORD",
    "COMMAND_HEADER_FIELDS",
    "COMMAND_RECORD",
    "UPDATE_RECORD",
    "KEY_STATE_RECORD",
    "key_state_last_offset",
    "zigzag_varint",
    "DEAD_LETTER_RECORD",
    "SerdeError",
    "encode_input",
    "decode_input",
    "encode_command",
    "decode_command",
    "encode_position_update",
    "encode_audit_update",
    "decode_update",
    "key_state_to_record",
    "key_state_from_record",
    "encode_dead_letter",
    "decode_dead_letter",
    "DeadLetter",
]

INPUT_RECORD = "PositionInput"
COMMAND_RECORD = "PositionCommand"
UPDATE_RECORD = "PositionUpdate"
KEY_STATE_RECORD = "KeyState"
DEAD_LETTER_RECORD = "DeadLetter"

# Avro branch names that differ from the dataclass names.
_BRANCH_OF_CLASS = {Position: "PositionState"}
_CLASS_OF_BRANCH = {"PositionState": Position}
#: The fields every command record has, before its type's payload (schemas/position_command.avsc).
COMMAND_HEADER_FIELDS = ("command_id", "key", "position_id", "symbol", "exchange")


class SerdeError(codec.DecodeError):
    """Bytes decoded as Avro but do not make a valid domain value (e.g. a float-like decimal)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be decoded or applied, with where it came from and why."""

    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    error_type: str
    reason: str
    ts: int

    @classmethod
    def of(cls, source_topic: str, source_partition: int, source_offset: int, key: bytes | None,
           value: bytes | None, error: BaseException | str, ts: int, reason: str | None = None) -> DeadLetter:
        """The dead letter of a record: ``error`` gives the type (a refusal code may stand for it) and the reason."""
        error_type = error if isinstance(error, str) else type(error).__name__
        return cls(source_topic, source_partition, source_offset, key, value, error_type,
                   reason if reason is not None else (str(error) or error_type), ts)


# --------------------------------------------------------------------------- generic mapping


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    module = __import__(cls.__module__, fromlist=["_"])
    return typing.get_type_hints(cls, vars(module))


def _branch_name(cls: type) -> str:
    return _BRANCH_OF_CLASS.get(cls, cls.__name__)


def to_record(value: Any) -> Any:
    """A domain value as the plain data the Avro codec writes."""
    writer = _WRITERS.get(type(value))
    if writer is None:
        writer = _WRITERS[type(value)] = _writer_for(type(value))
    return writer(value)


#: Per runtime class, the function writing its values: the mapping is worked out once per
#: class (dataclass fields, enums, decimals), not by reflection on every value; the hot
#: path (a state written for every input) spends its time on the data, not on the types.
_WRITERS: dict[type, Callable[[Any], Any]] = {}
_PLAIN = (str, int, float, bool, bytes, type(None))


def _identity(value: Any) -> Any:
    return value


def _writer_for(cls: type) -> Callable[[Any], Any]:
    if dataclasses.is_dataclass(cls):
        hints = _hints(cls)
        fields = [(field.name, _is_plain(hints.get(field.name))) for field in dataclasses.fields(cls)]

        def write_dataclass(value: Any) -> dict[str, Any]:
            return {name: getattr(value, name) if plain else to_record(getattr(value, name)) for name, plain in fields}
        return write_dataclass
    if issubclass(cls, Enum):
        return _enum_value
    if issubclass(cls, Decimal):
        return str
    if issubclass(cls, tuple):
        return _write_items
    return _identity


def _enum_value(value: Enum) -> Any:
    return value.value


def _write_items(value: tuple) -> list[Any]:
    return [to_record(item) for item in value]


def _is_plain(annotation: Any) -> bool:
    """True when every value of ``annotation`` is written as it is (strings, numbers, None, bytes)."""
    if annotation is None:
        return False
    members = _union_members(annotation)
    return all(isinstance(member, type) and member in _PLAIN for member in members)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def from_record(annotation: Any, data: Any) -> Any:
    """Plain Avro data as the domain value of type ``annotation``."""
    return _reader(annotation)(data)


@functools.cache
def _reader(annotation: Any) -> Callable[[Any], Any]:
    """The function reading plain data as a value of ``annotation``, worked out once per annotation."""
    members = _union_members(annotation)
    if len(members) > 1:
        optional = type(None) in members
        record_members = [m for m in members if dataclasses.is_dataclass(m)]
        if len(record_members) > 1:
            return _union_reader(record_members, optional)
        others = [m for m in members if m is not type(None)]
        if len(others) != 1:
            return _refuse(f"no single type in {annotation!r}")
        inner = _reader(others[0])
        if not optional:
            return inner
        return lambda data: None if data is None else inner(data)
    if dataclasses.is_dataclass(annotation):
        return _builder(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return annotation
    if annotation is Decimal:
        return _read_decimal
    if typing.get_origin(annotation) is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        read_item = _reader(item_type)
        return lambda data: tuple(read_item(item) for item in data)
    return _identity


def _refuse(reason: str) -> Callable[[Any], Any]:
    def refuse(data: Any) -> Any:
        raise SerdeError(f"{data!r}: {reason}")
    return refuse


def _read_decimal(data: Any) -> Decimal:
    try:
        return Decimal(data)
    except (InvalidOperation, TypeError) as error:
        raise SerdeError(f"{data!r} is not a decimal string") from error


def _union_reader(record_members: list[type], optional: bool) -> Callable[[Any], Any]:
    by_branch: dict[str, type] = {member.__name__: member for member in record_members}
    by_branch.update({branch: cls for branch, cls in _CLASS_OF_BRANCH.items() if cls in record_members})

    def read_union(data: Any) -> Any:
        if data is None and optional:
            return None
        if not (isinstance(data, tuple) and len(data) == 2):
            raise SerdeError(f"expected a (branch, fields) pair of {[m.__name__ for m in record_members]}")
        branch, fields = data
        cls = by_branch.get(branch)
        if cls is None:
            raise SerdeError(f"union branch {branch!r} is none of {[m.__name__ for m in record_members]}")
        return _builder(cls)(fields)
    return read_union


@functools.cache
def _builder(cls: type) -> Callable[[dict[str, Any]], Any]:
    """The function building a ``cls`` from its record, each field read by its declared type."""
    hints = _hints(cls)
    readers = [(field.name, None if _is_plain(hints[field.name]) else _reader(hints[field.name]))
               for field in dataclasses.fields(cls)]

    def build(data: dict[str, Any]) -> Any:
        try:
            return cls(**{name: data[name] if read is None else read(data[name]) for name, read in readers})
        except (KeyError, ValueError, TypeError, domain_model.InvalidValueError) as error:
            raise SerdeError(f"record does not make a valid {cls.__name__}: {error}") from error
    return build


def _build(cls: type, data: dict[str, Any]) -> Any:
    return _builder(cls)(data)


def _decode(record_name: str, data: bytes) -> dict[str, Any]:
    return codec.decode(record_name, data)


# --------------------------------------------------------------------------- topics


def encode_input(event: InputEvent) -> bytes:
    """An input event as the bytes of a ``position-inputs`` record value."""
    record = to_record(event)
    record["payload"] = (_branch_name(type(event.payload)), to_record(event.payload))
    return codec.encode(INPUT_RECORD, record)


def decode_input(data: bytes) -> InputEvent:
    """The input event in a ``position-inputs`` record value; raises ``codec.DecodeError``."""
    return from_record(InputEvent, _decode(INPUT_RECORD, data))


def encode_command(command: Command) -> bytes:
    """A command as the bytes of a ``position-commands`` record value."""
    fields = to_record(command)
    header = {name: fields.pop(name) for name in COMMAND_HEADER_FIELDS}
    return codec.encode(COMMAND_RECORD, {**header, "payload": (type(command).__name__, fields)})


def decode_command(data: bytes) -> Command:
    """The command in a ``position-commands`` record value."""
    record = _decode(COMMAND_RECORD, data)
    branch, fields = record.pop("payload")
    cls = getattr(domain_commands, branch, None)
    if cls is None:
        raise SerdeError(f"unknown command {branch!r}")
    return _build(cls, {**record, **fields})


def encode_position_update(key: str, offset: int, position: Position) -> bytes:
    """The full new state of a position, for ``position-updates``."""
    return codec.encode(UPDATE_RECORD, {"key": key, "offset": offset,
                                        "payload": ("PositionState", to_record(position))})


def encode_audit_update(audit: AuditRecord) -> bytes:
    """An audit record, for ``position-updates``."""
    return codec.encode(UPDATE_RECORD, {"key": audit.key, "offset": audit.offset,
                                        "payload": ("AuditRecord", to_record(audit))})


def decode_update(data: bytes) -> Position | AuditRecord:
    """The position state or audit record in a ``position-updates`` record value."""
    record = _decode(UPDATE_RECORD, data)
    return from_record(Position | AuditRecord, record["payload"])


def key_state_to_record(state: KeyState) -> dict[str, Any]:
    """A key's state as the table value (the ``avro-key-state`` codec writes it)."""
    return to_record(state)


def key_state_from_record(record: dict[str, Any]) -> KeyState:
    """The table value back as a ``KeyState``.

    A state written before ``seen_signals`` existed carries its signal ids in the retired
    ``recent_signal_ids`` without a first-seen time: they are taken as first seen at the
    state's newest known time, so an upgrade never forgets an id early.
    """
    state = from_record(KeyState, {**record, "seen_signals": record.get("seen_signals") or []})
    legacy = [signal_id for signal_id in record.get("recent_signal_ids") or () if not state.has_seen_signal(signal_id)]
    if not legacy:
        return state
    newest = max(state.last_exchange_ts, state.position.updated_at if state.position is not None else 0)
    migrated = tuple(SeenSignal(signal_id=signal_id, first_seen_at=newest) for signal_id in legacy)
    return dataclasses.replace(state, seen_signals=(*migrated, *state.seen_signals))


def key_state_last_offset(data: bytes) -> int:
    """``last_offset`` of a table value (``KeyState`` bytes), read without decoding the rest.

    A worker scans every key of its partitions after an assignment to learn what the table
    has applied; decoding 100,000 whole states for one number held the first decision back
    by seconds. Every writer schema of ``KeyState`` begins with ``key`` (string) and
    ``last_offset`` (long): the header, one string and one zig-zag varint. Bytes of any other
    writer, or that do not read so, are decoded whole (and raise as ``decode`` does).
    """
    if data[:2] == codec.MARKER and bytes(data[2:codec.HEADER_LENGTH]) in _offset_first_writers():
        try:
            length, position = zigzag_varint(data, codec.HEADER_LENGTH)
            last_offset, _ = zigzag_varint(data, position + length)
        except IndexError:
            pass  # truncated: the whole decode names the damage
        else:
            if length >= 0:
                return last_offset
    return codec.decode(KEY_STATE_RECORD, data)["last_offset"]


@functools.cache
def _offset_first_writers() -> frozenset[bytes]:
    """Fingerprints of the ``KeyState`` writer schemas whose first fields are ``key`` and ``last_offset``."""
    leading = ({"name": "key", "type": "string"}, {"name": "last_offset", "type": "long"})
    return frozenset(
        writer.fingerprint for writer in codec.default_registry().writer_schemas(KEY_STATE_RECORD)
        if [{"name": field["name"], "type": field["type"]} for field in writer.schema["fields"][:2]] == list(leading))


def zigzag_varint(data: bytes, position: int) -> tuple[int, int]:
    """Avro's zig-zag varint (an int, a long, a length) at ``position``: ``(value, position after it)``."""
    shift = 0
    result = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """A dead letter as the bytes of a ``position-dead-letters`` record value."""
    return codec.encode(DEAD_LETTER_RECORD, to_record(letter))


def decode_dead_letter(data: bytes) -> DeadLetter:
    """The dead letter in a ``position-dead-letters`` record value."""
    return from_record(DeadLetter, _decode(DEAD_LETTER_RECORD, data))

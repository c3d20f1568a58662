"""A key's state as table value bytes, encoding again only the fields that changed.

The Avro specification encodes a record as "the encoding of the values of its fields in the
order that they are declared". So the ``KeyState`` bytes are the single-object header
followed by each top-level field's bytes, and a field's bytes can be encoded alone: as the
only field of a record, whose body is exactly that field's encoding.

``decide`` builds a key's new state with ``dataclasses.replace``: a field it left alone is
the same (immutable) object as in the key's last state. ``KeyStateEncoder`` keeps, per key,
each field's value object and bytes, and encodes only the fields whose object changed.
Profiled, encoding whole states was a sixth of the worker's time (a state keeps its seen
signal ids and its position, with its seen reports, and is written once per input); a
lifecycle of 45,000 states took 68-80 us per state whole and 18-20 us this way.

A changed position is written twice, in the key's state and as a ``PositionState`` update on
``position-updates``, and its Avro body is the same bytes in both: a union writes the
branch's index and then the branch's own encoding. ``PositionBytes`` encodes each position
object once for both (32 us the update alone by the codec, 2026-12-02).

A field is encoded by hand (``flat_records.value_encoder``: every ``KeyState`` field is
strings, longs, booleans, enums, records and arrays of those, and nullable unions of them),
byte for byte what fastavro's writer gives, which remains for any other type; see
``_flat_encoder``.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any

from fastavro import schemaless_writer

from streams.domain import KeyState, Position
from streams.wire import codec
from streams.wire.errors import InvalidRecord
from streams.wire.flat_records import avro_array, avro_long, avro_string, named_types, union_branch, value_encoder
from streams.wire.schemas import collect_definitions, expand
from streams.wire.serde import KEY_STATE_RECORD, UPDATE_RECORD, to_record

#: Keys whose last state is kept, at most (then all are dropped: it only saves work).
KEPT_KEYS = 100_000


def field_encoders(record_name: str) -> tuple[bytes, list[tuple[str, Callable[[Any], bytes]]]]:
    """The single-object header of ``record_name``'s current schema and, per top-level field in
    schema order, ``(field name, encode(value))`` giving that field's bytes alone (the value as
    ``codec.encode`` takes it inside the record)."""
    writer, fields = _fields_alone(record_name)
    encoders = []
    for name, alone in fields:
        try:
            encode = _flat_encoder(alone)
        except codec.SchemaDefinitionError:  # a type the hand encoder does not take: fastavro's writer
            encode = _encoder(codec.build_writer_schema(alone, writer.origin, current=False), name)
        encoders.append((name, encode))
    return codec.MARKER + writer.fingerprint, encoders


def array_item_encoders(record_name: str) -> dict[str, Callable[[Any], bytes]]:
    """Per top-level field of ``record_name`` that is an array of a type the hand encoder takes:
    ``encode(item)``, the bytes of one of its items (the item as ``to_record`` gives it).

    The field's bytes are ``flat_records.avro_array`` of its items' bytes.
    """
    found: dict[str, Callable[[Any], bytes]] = {}
    for name, alone in _fields_alone(record_name)[1]:
        (field,) = alone["fields"]
        if isinstance(field["type"], dict) and field["type"].get("type") == "array":
            try:
                found[name] = _checked(value_encoder(field["type"]["items"], named_types(alone),
                                                     f"{alone['name']}.{name}[]"), alone["name"])
            except codec.SchemaDefinitionError:
                continue  # its items are encoded with the whole field (fastavro's writer)
    return found


def _fields_alone(record_name: str) -> tuple[codec.WriterSchema, list[tuple[str, dict]]]:
    """``record_name``'s current writer and, per top-level field in schema order, a one-field
    record of it, its named types defined inline (a field's bytes are that record's body)."""
    writer = codec.default_registry().current(record_name)
    if writer.tagged_unions:
        raise codec.SchemaDefinitionError(f"{writer.name}: a field of several record branches is encoded whole only")
    definitions: dict[str, tuple[Any, str]] = {}
    collect_definitions(writer.schema, "", definitions, writer.origin)
    return writer, [(field["name"], expand({"type": "record", "name": f"{writer.name}__{field['name']}",
                                            "fields": [field]}, "", definitions, set(), writer.origin))
                    for field in writer.schema["fields"]]


def _flat_encoder(alone: dict) -> Callable[[Any], bytes]:
    """The field of a one-field record by ``flat_records.value_encoder``: the bytes fastavro's
    writer gives (its schema, its datum checks, a buffer per field) in well under half the
    time: a lifecycle's 5,400 states took 14 us a state instead of 37 (2026-12-03)."""
    (field,) = alone["fields"]
    return _checked(value_encoder(field["type"], named_types(alone), f"{alone['name']}.{field['name']}"),
                    alone["name"])


def _checked(encode: Callable[[Any], bytes], record_name: str) -> Callable[[Any], bytes]:
    """``encode`` raising ``InvalidRecord`` (naming ``record_name``) for a value that does not fit."""
    def encode_field(value: Any) -> bytes:
        try:
            return encode(value)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidRecord(f"{record_name} does not accept the value: {type(e).__name__}: {e}"[:500]) from e
    return encode_field


def _encoder(alone: codec.WriterSchema, field: str) -> Callable[[Any], bytes]:
    def encode_field(value: Any) -> bytes:
        datum = {field: value}
        if alone.name_union_records is not None:
            datum = alone.name_union_records(datum)
        buffer = io.BytesIO()
        try:
            schemaless_writer(buffer, alone.parsed, datum, strict_allow_default=True)
        except Exception as e:  # fastavro raises TypeError, ValueError, OverflowError, ...
            raise InvalidRecord(f"{alone.name} does not accept the value: {type(e).__name__}: {e}"[:500]) from e
        return buffer.getvalue()
    return encode_field


def field_branch(record_name: str, field: str, branch: str) -> int:
    """The index of ``branch`` (a type name, unqualified) in the union of ``record_name``'s field ``field``."""
    writer = codec.default_registry().current(record_name)
    (union,) = [declared["type"] for declared in writer.schema["fields"] if declared["name"] == field]
    return union_branch(union, branch)


class PositionBytes:
    """A position's Avro body, encoded once per position object for the key's state and its update.

    ``field`` is the ``position`` field of the key's ``KeyState`` bytes and ``update`` the
    ``position-updates`` record value, byte for byte what the codec writes for each.
    """

    def __init__(self, kept_keys: int = KEPT_KEYS) -> None:
        self._encode_field = dict(field_encoders(KEY_STATE_RECORD)[1])["position"]
        self._absent = avro_long(field_branch(KEY_STATE_RECORD, "position", "null"))
        self._present = avro_long(field_branch(KEY_STATE_RECORD, "position", "PositionState"))
        self._update_header = codec.MARKER + codec.default_registry().current(UPDATE_RECORD).fingerprint
        self._update_branch = avro_long(field_branch(UPDATE_RECORD, "payload", "PositionState"))
        self._kept_keys = kept_keys
        self._last: dict[str, tuple[Position, bytes]] = {}

    def body(self, key: str, position: Position) -> bytes:
        """``position``'s own encoding (no union branch); encoded again only for another object than the key's last."""
        last = self._last.get(key)
        if last is not None and last[0] is position:
            return last[1]
        body = self._encode_field(to_record(position))[len(self._present):]
        if last is None and len(self._last) >= self._kept_keys:
            self._last.clear()
        self._last[key] = (position, body)
        return body

    def field(self, key: str, position: Position | None) -> bytes:
        """``position`` as the ``position`` field of ``key``'s state: its union branch, then its body."""
        return self._absent if position is None else self._present + self.body(key, position)

    def update(self, key: str, offset: int, position: Position) -> bytes:
        """The update record value: ``serde.encode_position_update(key, offset, position)``, byte for byte."""
        return b"".join((self._update_header, avro_string(key), avro_long(offset), self._update_branch,
                         self.body(key, position)))


class KeyStateEncoder:
    """``KeyState`` -> table value bytes, byte for byte ``codec.encode(KEY_STATE_RECORD,
    key_state_to_record(state))``, re-encoding only the fields changed since the key's last state.

    With ``positions``, the ``position`` field comes from it: a position the key's update
    was written with is not encoded again.
    """

    def __init__(self, kept_keys: int = KEPT_KEYS, positions: PositionBytes | None = None) -> None:
        self._header, encoders = field_encoders(KEY_STATE_RECORD)
        attributes = {field.name for field in dataclasses.fields(KeyState)}
        items = array_item_encoders(KEY_STATE_RECORD)
        #: Per schema field: (KeyState attribute, encode(key, value)), or (None, its constant bytes)
        #: for a field the state no longer has (the retired ``recent_signal_ids``, written empty).
        self._fields: list[tuple[str | None, Any]] = [
            (None, encode([])) if name not in attributes
            else (name, positions.field) if name == "position" and positions is not None
            else (name, ArrayItems(items[name], _by_record(encode), kept_keys)) if name in items
            else (name, _by_record(encode))
            for name, encode in encoders]
        self._kept_keys = kept_keys
        self._last: dict[str, list[tuple[Any, bytes]]] = {}

    def encode(self, state: KeyState) -> bytes:
        """The table value of ``state``."""
        previous = self._last.get(state.key)
        parts: list[tuple[Any, bytes]] = []
        for index, (name, encode) in enumerate(self._fields):
            if name is None:
                parts.append((None, encode))
                continue
            value = getattr(state, name)
            if previous is not None and previous[index][0] is value:
                parts.append(previous[index])
            else:
                parts.append((value, encode(state.key, value)))
        if previous is None and len(self._last) >= self._kept_keys:
            self._last.clear()
        self._last[state.key] = parts
        return self._header + b"".join(encoded for _value, encoded in parts)


class ArrayItems:
    """An array field of a key's state, each item encoded once while the key's arrays keep it.

    ``decide`` makes a key's new ``seen_signals`` from its last one: the same (immutable)
    item objects, those past the retention dropped from the front, the new signal's added at
    the end. Encoded whole, every state of a busy key re-encoded all of them (46 items after
    23 lives of the e2e benchmark's keys: 33 us a state of which most was that field,
    2026-12-04). Here an item object the key's last array held keeps its bytes; the bytes
    are the whole field's (``array_item_encoders``). The last array is kept as a tuple, so
    its items stay alive and an item's ``id`` names no other object meanwhile.
    """

    def __init__(self, encode_item: Callable[[Any], bytes], encode_whole: Callable[[str, Any], bytes],
                 kept_keys: int = KEPT_KEYS) -> None:
        self._encode_item = encode_item
        self._encode_whole = encode_whole
        self._kept_keys = kept_keys
        self._last: dict[str, tuple[tuple, list[bytes]]] = {}

    def __call__(self, key: str, values: Any) -> bytes:
        """The field's bytes for ``key``'s array ``values``."""
        if not isinstance(values, (list, tuple)):
            return self._encode_whole(key, values)  # raises the field's typed error
        if not values:
            return avro_array([])
        last = self._last.get(key)
        known = {id(item): data for item, data in zip(*last)} if last is not None else {}
        encoded = []
        for item in values:
            data = known.get(id(item))
            encoded.append(self._encode_item(to_record(item)) if data is None else data)
        if last is None and len(self._last) >= self._kept_keys:
            self._last.clear()
        self._last[key] = (tuple(values), encoded)
        return avro_array(encoded)


def _by_record(encode: Callable[[Any], bytes]) -> Callable[[str, Any], bytes]:
    def encode_value(_key: str, value: Any) -> bytes:
        return encode(to_record(value))
    return encode_value


__all__ = ["ArrayItems", "KeyStateEncoder", "PositionBytes", "array_item_encoders", "field_branch", "field_encoders"]

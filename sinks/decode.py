"""Update record bytes -> table rows in one pass, compiled once per writer schema (pure, no I/O).

The sink needs rows, not domain objects. The generic path (``serde.decode_update``: fastavro
into dicts, dicts into ``Position`` / ``AuditRecord``, those into rows) costs several times
the database write. Here each known writer schema of ``PositionUpdate`` is compiled once
into a Python function that reads the Avro body straight into the row tuple of
``sinks.rows`` (``position_row`` / ``event_row`` order): no dict, no dataclass, no enum
object; decimals become ``Decimal`` (money stays exact), epoch-ms times aware datetimes.

It checks what building the domain values checks (every decimal of the record finite,
nested ones included; every string-valued enum a member) and the body read exactly to its
end. It never decides on its own that a record is bad: ``UpdateDecoder.decode`` runs the
generic path on anything the compiled reader does not accept (or any writer schema it could
not compile), so a bad record fails with the very error it always did (``CorruptPayload``,
``SerdeError``, ...) and a good one the compiled reader refused still lands.
``tests/unit/sinks/test_sink_decode.py`` holds the two paths to the same rows and errors.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from enum import Enum
from typing import Any

from sinks.rows import epoch_ms_to_datetime, event_row, position_row, split_key
from streams.domain import AuditRecord, OrderRef, Position
from streams.wire import codec, serde

__all__ = ["POSITION", "EVENT", "UpdateDecoder", "collect_named", "generic_row"]

#: Kinds of row ``UpdateDecoder.decode`` returns.
POSITION = "position"
EVENT = "event"

# Avro record name -> the dataclass its fields follow (the checks come from its type hints).
_DATACLASS_OF_RECORD = {"PositionState": Position, "AuditRecord": AuditRecord, "OrderRef": OrderRef}


class _Unsupported(Exception):
    """A writer schema the compiler does not handle; the generic path reads its records."""


class _Refused(Exception):
    """The compiled reader does not accept this body; the generic path decides."""


#: Decimals and times already converted (both immutable): a position's versions repeat its
#: quantities and opening time, an audit record's time is often its position's update time.
#: Emptied when it grows past ``_CACHE_LIMIT`` entries.
_DECIMALS: dict[str, Decimal] = {}
_TIMES: dict[int, Any] = {}
_CACHE_LIMIT = 50_000


def _dec(text: str) -> Decimal:
    value = _DECIMALS.get(text)
    if value is None:
        value = Decimal(text)
        if not value.is_finite():
            raise _Refused(text)
        if len(_DECIMALS) >= _CACHE_LIMIT:
            _DECIMALS.clear()
        _DECIMALS[text] = value
    return value


def _ts(ms: int) -> Any:
    value = _TIMES.get(ms)
    if value is None:
        value = epoch_ms_to_datetime(ms)
        if len(_TIMES) >= _CACHE_LIMIT:
            _TIMES.clear()
        _TIMES[ms] = value
    return value


def _ots(ms: int | None) -> Any:
    return None if ms is None else _ts(ms)


# ---------------------------------------------------------------------------- compiler


class _Compiler:
    """Emits the source of one reader function for one writer schema."""

    def __init__(self, writer: dict, reader: dict) -> None:
        self.lines: list[str] = []
        self.counter = 0
        self.constants: dict[str, Any] = {}
        self.writer_named: dict[str, Any] = {}
        self.reader_named: dict[str, Any] = {}
        collect_named(reader, self.reader_named)

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def constant(self, value: Any) -> str:
        name = self.name("K")
        self.constants[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def long(self, indent: int, target: str) -> None:
        """A zig-zag varint, inline (no call): times and versions take 3 to 6 bytes."""
        self.emit(indent, "b = buf[pos]")
        self.emit(indent, "pos += 1")
        self.emit(indent, "if b < 0x80:")
        self.emit(indent + 1, f"{target} = (b >> 1) ^ -(b & 1)")
        self.emit(indent, "else:")
        self.emit(indent + 1, "u = b & 0x7F")
        self.emit(indent + 1, "shift = 7")
        self.emit(indent + 1, "while True:")
        self.emit(indent + 2, "b = buf[pos]")
        self.emit(indent + 2, "pos += 1")
        self.emit(indent + 2, "u |= (b & 0x7F) << shift")
        self.emit(indent + 2, "if b < 0x80:")
        self.emit(indent + 3, "break")
        self.emit(indent + 2, "shift += 7")
        self.emit(indent + 2, "if shift > 63:")
        self.emit(indent + 3, "raise _Refused('varint too long')")
        self.emit(indent + 1, f"{target} = (u >> 1) ^ -(u & 1)")

    def resolve(self, schema: Any, named: dict) -> Any:
        if isinstance(schema, str) and schema in named:
            return named[schema]
        if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
            named.setdefault(schema["name"], schema)
        return schema

    def value(self, indent: int, target: str, writer: Any, reader: Any, hint: Any, keep: bool = True) -> None:
        """Reads one value of ``writer`` into ``target``, checked against the reader's ``hint``.

        ``keep`` False: a value no column uses, read and checked but not built (an array's
        items are not gathered into a list, a record's fields not into a tuple).
        """
        writer = self.resolve(writer, self.writer_named)
        reader = self.resolve(reader, self.reader_named)
        if isinstance(writer, list):
            self.union(indent, target, writer, reader, hint, keep)
            return
        kind = writer if isinstance(writer, str) else writer["type"]
        reader_kind = reader if isinstance(reader, str) else (reader["type"] if isinstance(reader, dict) else None)
        if isinstance(writer, dict) and kind in ("string", "long", "int", "boolean"):
            kind = writer["type"]  # {"type": "string"} spelled as an object
        if kind != reader_kind and not (isinstance(reader, dict) and reader.get("type") == kind):
            raise _Unsupported(f"{kind} read as {reader_kind}")
        if kind == "string":
            self.long(indent, "n")
            self.emit(indent, "if n < 0:")
            self.emit(indent + 1, "raise _Refused('negative length')")
            self.emit(indent, "end = pos + n")
            self.emit(indent, f"{target} = buf[pos:end].decode()")
            self.emit(indent, "pos = end")
            self.check(indent, target, hint)
        elif kind in ("long", "int"):
            self.long(indent, target)
        elif kind == "boolean":
            self.emit(indent, "b = buf[pos]")
            self.emit(indent, "if b > 1:")
            self.emit(indent + 1, "raise _Refused('boolean')")
            self.emit(indent, f"{target} = b == 1")
            self.emit(indent, "pos += 1")
        elif kind == "enum":
            if reader.get("name") != writer.get("name") or not set(writer["symbols"]) <= set(reader["symbols"]):
                raise _Unsupported(f"enum {writer.get('name')} does not resolve without its default")
            symbols = self.constant(tuple(writer["symbols"]))
            index = self.name("i")
            self.long(indent, index)
            self.emit(indent, f"if {index} < 0:")
            self.emit(indent + 1, "raise _Refused('enum index')")
            self.emit(indent, f"{target} = {symbols}[{index}]")
            self.check(indent, target, hint)
        elif kind == "array":
            self.array(indent, target, writer, reader, hint, keep)
        elif kind == "record":
            self.record(indent, target if keep else None, writer, reader)
        else:
            raise _Unsupported(f"type {kind}")

    def check(self, indent: int, target: str, hint: Any) -> None:
        """The domain's check of a scalar: a finite decimal, or a member of a string enum."""
        members = [m for m in _union_members(hint) if m is not type(None)]
        if len(members) != 1:
            return
        (member,) = members
        if member is Decimal:
            self.emit(indent, f"{target} = _dec({target})")
        elif isinstance(member, type) and issubclass(member, Enum):
            allowed = self.constant(frozenset(item.value for item in member))
            self.emit(indent, f"if {target} not in {allowed}:")
            self.emit(indent + 1, "raise _Refused('enum value')")

    def union(self, indent: int, target: str, writer: list, reader: Any, hint: Any, keep: bool) -> None:
        if not isinstance(reader, list) or len(writer) != 2 or writer[0] != "null" or reader[0] != "null" \
                or len(reader) != 2:
            raise _Unsupported("only [null, T] unions below the top level")
        index = self.name("i")
        self.long(indent, index)
        self.emit(indent, f"if {index} == 0:")
        self.emit(indent + 1, f"{target} = None")
        self.emit(indent, f"elif {index} == 1:")
        self.value(indent + 1, target, writer[1], reader[1], hint, keep)
        self.emit(indent, "else:")
        self.emit(indent + 1, "raise _Refused('union index')")

    def array(self, indent: int, target: str, writer: dict, reader: Any, hint: Any, keep: bool) -> None:
        if not (isinstance(reader, dict) and reader.get("type") == "array"):
            raise _Unsupported("array read as another type")
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        count, item = self.name("n"), self.name("v")
        if keep:
            self.emit(indent, f"{target} = []")
        self.emit(indent, "while True:")
        self.long(indent + 1, count)
        self.emit(indent + 1, f"if {count} == 0:")
        self.emit(indent + 2, "break")
        self.emit(indent + 1, f"if {count} < 0:")
        self.emit(indent + 2, f"{count} = -{count}")
        self.long(indent + 2, self.name("size"))
        self.emit(indent + 1, f"for _ in range({count}):")
        self.value(indent + 2, item, writer["items"], reader["items"], item_hint, keep)
        if keep:
            self.emit(indent + 2, f"{target}.append({item})")

    def record(self, indent: int, target: str | None, writer: dict, reader: dict,
               needed: frozenset[str] = frozenset()) -> dict[str, str]:
        """Reads a record's fields into locals; returns reader field -> local (or constant default).

        ``target`` None: the fields stay in locals (those in ``needed`` built, the others only
        read and checked); else the record is built as a tuple into ``target``.
        """
        if not isinstance(reader, dict) or reader.get("type") != "record" or \
                reader["name"].rpartition(".")[2] != writer["name"].rpartition(".")[2]:
            raise _Unsupported(f"record {writer.get('name')} read as {reader!r:.60}")
        cls = _DATACLASS_OF_RECORD.get(reader["name"].rpartition(".")[2])
        if cls is None:
            raise _Unsupported(f"no dataclass for record {reader['name']}")
        hints = typing.get_type_hints(cls)
        reader_fields = {field["name"]: field for field in reader["fields"]}
        locals_: dict[str, str] = {}
        for field in writer["fields"]:
            local = self.name(f"f_{field['name']}_")
            reader_field = reader_fields.get(field["name"])
            if reader_field is None:  # read, then dropped: the reader has no such field
                self.value(indent, local, field["type"], field["type"], Any, keep=False)
                continue
            if field["name"] not in hints:
                raise _Unsupported(f"{cls.__name__} has no field {field['name']}")
            keep = target is not None or field["name"] in needed
            self.value(indent, local, field["type"], reader_field["type"], hints[field["name"]], keep)
            locals_[field["name"]] = local
        for name, field in reader_fields.items():
            if name not in locals_:
                if "default" not in field:
                    raise _Unsupported(f"reader field {name} has no default")
                default = field["default"]
                if isinstance(default, (str, dict)) or (isinstance(default, list) and default):
                    raise _Unsupported(f"reader field {name}: default {default!r} is not a plain constant")
                locals_[name] = self.constant(() if isinstance(default, list) else default)
        if target is not None:
            self.emit(indent, f"{target} = ({', '.join(locals_.values())},)")
        return locals_


def collect_named(schema: Any, into: dict) -> None:
    """Every named type (record, enum, fixed) defined in ``schema``, by its name, into ``into``."""
    if isinstance(schema, list):
        for branch in schema:
            collect_named(branch, into)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            into.setdefault(schema["name"], schema)
        for field in schema.get("fields", ()):
            collect_named(field["type"], into)
        if schema.get("type") == "array":
            collect_named(schema["items"], into)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


# Row recipes: each column of ``sinks.rows`` from the record's fields (``{name}`` is the
# field's local), in POSITION_COLUMNS / EVENT_COLUMNS order.
_POSITION_ROW = (
    "{id}", "{symbol}", "{exchange}", "{side}", "{quantity}", "{requested_quantity}", "{entry_price}",
    "{stop_loss_pct}", "{stop_loss_price}", "{status}", "{source}", "{signal_id}",
    "(_TIMES.get({opened_at}) or _ts({opened_at}))", "_ots({closed_at})",
    "(_TIMES.get({updated_at}) or _ts({updated_at}))", "_ots({deadline_at})", "{close_requested}", "{version}",
)
_EVENT_ROW = (
    "{key}", "{offset}", "sym", "exch", "{position_id}", "{input_kind}", "{decision}", "{reason}", "{event_id}",
    "(_TIMES.get({ts}) or _ts({ts}))", "{status_after}", "{client_order_id}", "{order_role}", "{order_outcome}",
    "{refusal_code}",
)


def _compile(writer: codec.WriterSchema, reader: codec.WriterSchema) -> Callable[[bytes], tuple[str, tuple]]:
    """The reader function of one writer schema (raises ``_Unsupported``)."""
    compiler = _Compiler(dict(writer.schema), dict(reader.schema))
    collect_named(dict(writer.schema), compiler.writer_named)
    writer_fields = [field["name"] for field in writer.schema["fields"]]
    reader_fields = [field["name"] for field in reader.schema["fields"]]
    if writer_fields != ["key", "offset", "payload"] or reader_fields != writer_fields:
        raise _Unsupported(f"PositionUpdate fields {writer_fields}")
    emit = compiler.emit
    emit(0, "def read(buf):")
    emit(1, f"pos = {codec.HEADER_LENGTH}")
    compiler.value(1, "key", "string", "string", str)
    compiler.long(1, "offset")
    writer_branches = [compiler.resolve(b, compiler.writer_named) for b in _field(writer.schema, "payload")["type"]]
    reader_branches = {compiler.resolve(b, compiler.reader_named)["name"].rpartition(".")[2]: b
                       for b in _field(reader.schema, "payload")["type"]}
    compiler.long(1, "branch")
    for index, branch in enumerate(writer_branches):
        short = branch["name"].rpartition(".")[2]
        if short not in reader_branches:
            raise _Unsupported(f"payload branch {short}")
        emit(1, f"{'if' if index == 0 else 'elif'} branch == {index}:")
        recipe = {"PositionState": _POSITION_ROW, "AuditRecord": _EVENT_ROW}.get(short, ())
        needed = frozenset(re.findall(r"\{(\w+)\}", " ".join(recipe)))
        locals_ = compiler.record(2, None, branch, compiler.resolve(reader_branches[short], compiler.reader_named),
                                  needed)
        emit(2, "if pos != len(buf):")
        emit(3, "raise _Refused('length')")
        if short == "PositionState":
            emit(2, f"return POSITION, ({', '.join(c.format(**locals_) for c in _POSITION_ROW)},)")
        elif short == "AuditRecord":
            emit(2, f"sym, exch = split_key({locals_['key']})")
            emit(2, f"return EVENT, ({', '.join(c.format(**locals_) for c in _EVENT_ROW)},)")
        else:
            raise _Unsupported(f"payload branch {short}")
    emit(1, "raise _Refused('payload branch')")
    namespace: dict[str, Any] = {
        "_dec": _dec, "_Refused": _Refused,
        "_ts": _ts, "_ots": _ots, "_TIMES": _TIMES,
        "split_key": split_key, "POSITION": POSITION, "EVENT": EVENT, **compiler.constants,
    }
    # Our own generated source, from our own schema files: nothing of a record goes into it.
    code = compile("\n".join(compiler.lines), f"<sink reader {writer.fingerprint.hex()}>", "exec")
    exec(code, namespace)  # noqa: S102
    return namespace["read"]


def _field(schema: Any, name: str) -> dict:
    return next(field for field in schema["fields"] if field["name"] == name)


def _position_branch(writer: codec.WriterSchema) -> int | None:
    """The union index of ``PositionState`` in this writer's payload when the record opens
    with ``key`` and ``offset`` and the state with its ``id`` string; None otherwise."""
    named: dict[str, Any] = {}
    collect_named(dict(writer.schema), named)
    fields = writer.schema["fields"]
    if [field["name"] for field in fields[:2]] != ["key", "offset"] \
            or [field["type"] for field in fields[:2]] != ["string", "long"]:
        return None
    for index, branch in enumerate(_field(writer.schema, "payload")["type"]):
        branch = named.get(branch, branch) if isinstance(branch, str) else branch
        if isinstance(branch, dict) and branch.get("name", "").rpartition(".")[2] == "PositionState":
            first = branch["fields"][0]
            return index if (first["name"], first["type"]) == ("id", "string") else None
    return None


class UpdateDecoder:
    """``decode(bytes) -> (POSITION | EVENT, row)``, a compiled reader per writer schema, cached;
    ``position_identity`` reads only a position update's head."""

    def __init__(self, registry: codec.SchemaRegistry | None = None) -> None:
        self._registry = registry or codec.default_registry()
        self._reader = self._registry.current(serde.UPDATE_RECORD)
        self._compiled: dict[bytes, Callable[[bytes], tuple[str, tuple]] | None] = {}
        self._position_branches: dict[bytes, int | None] = {}

    def position_identity(self, data: bytes) -> tuple[bytes, int] | None:
        """``(the position id's UTF-8 bytes, the update's offset)`` of a position update, read
        from the record's head only; None for anything else (an audit record, a writer schema
        the compiled reader does not serve, a head that does not parse).

        The offset is the version the record claims: the input that produced the update is the
        one that last changed the position (``PositionState.version``), which ``decode`` reads.
        """
        if type(data) is not bytes or len(data) <= codec.HEADER_LENGTH or data[:2] != codec.MARKER:
            return None
        fingerprint = data[2:codec.HEADER_LENGTH]
        try:
            position_branch = self._position_branches[fingerprint]
        except KeyError:
            position_branch = None
            if self.compiled(fingerprint) is not None:
                position_branch = _position_branch(self._registry.writer_schema(fingerprint))
            self._position_branches[fingerprint] = position_branch
        if position_branch is None:
            return None
        varint = serde.zigzag_varint
        pos = codec.HEADER_LENGTH
        try:
            byte = data[pos]  # most keys, branches and ids are shorter than 64: one byte each
            key_length, pos = ((byte >> 1) ^ -(byte & 1), pos + 1) if byte < 0x80 else varint(data, pos)
            offset, pos = varint(data, pos + key_length)
            byte = data[pos]
            branch, pos = ((byte >> 1) ^ -(byte & 1), pos + 1) if byte < 0x80 else varint(data, pos)
            if branch != position_branch:
                return None
            byte = data[pos]
            id_length, pos = ((byte >> 1) ^ -(byte & 1), pos + 1) if byte < 0x80 else varint(data, pos)
        except IndexError:
            return None
        end = pos + id_length
        if key_length < 0 or id_length < 0 or end > len(data):
            return None
        return data[pos:end], offset

    def compiled(self, fingerprint: bytes) -> Callable[[bytes], tuple[str, tuple]] | None:
        """The compiled reader of this writer fingerprint; None when only the generic path reads it."""
        try:
            return self._compiled[fingerprint]
        except KeyError:
            pass
        try:
            writer = self._registry.writer_schema(fingerprint)
        except codec.UnknownSchemaFingerprint:
            return None  # not cached: only the registry's fingerprints take room here
        function = None
        if writer.name == self._reader.name:
            try:
                function = _compile(writer, self._reader)
            except _Unsupported:
                function = None
        self._compiled[fingerprint] = function
        return function

    def decode(self, data: bytes) -> tuple[str, tuple]:
        """The row of one ``position-updates`` value; raises what ``serde.decode_update`` raises."""
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) > codec.HEADER_LENGTH and data[:2] == codec.MARKER:
            read = self.compiled(data[2:codec.HEADER_LENGTH])
            if read is not None:
                try:
                    return read(data)
                except Exception:  # noqa: BLE001 - anything unusual: the generic path decides, with its errors
                    pass
        return generic_row(data)


def generic_row(data: bytes) -> tuple[str, tuple]:
    """The reference path: ``serde.decode_update`` then ``position_row`` / ``event_row``."""
    update = serde.decode_update(data)
    if isinstance(update, Position):
        return POSITION, position_row(update)
    return EVENT, event_row(update)

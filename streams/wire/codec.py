"""Avro wire format of the pipeline: single-object encoding, schema registry, Faust codecs.

Every value the pipeline writes to Kafka (inputs, commands, updates, table changelog,
dead letters) is an Avro *single-object encoding*: the two marker bytes ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical
Form, then the Avro binary body. The fingerprint lets a reader pick the exact writer
schema (the current one, or a retired one from ``schemas/history``) and resolve it to
the current reader schema, so producers and consumers can be upgraded one at a time.

Data shape on the Python side: plain dicts, as fastavro reads and writes them, with two
conventions:

- A field whose type is a union of several records (the ``payload`` of
  ``PositionInput``, ``PositionCommand`` and ``PositionUpdate``) holds a
  ``(branch_name, fields_dict)`` pair, ``branch_name`` being the record's short name
  (``"Signal"``; the full name ``"positionpipeline.v1.Signal"`` is accepted on encode).
  Some branches have identical fields (``PlaceEntry`` / ``ClosePosition``), so the branch
  is never guessed from the dict's shape.
- Prices and quantities are decimal strings, times epoch-ms ints (see the schemas' docs).

Arrays decode as lists; tuples are accepted on encode.
"""

from __future__ import annotations

import copy
import functools
import io
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Mapping

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from streams.wire import errors
from streams.wire.errors import *  # noqa: F403 - the codec's errors are part of its interface
from streams.wire.errors import (
    CorruptPayload,
    InvalidRecord,
    NotSingleObjectEncoded,
    SchemaDefinitionError,
    SchemaMismatch,
    UnknownRecordType,
    UnknownSchemaFingerprint,
)
from streams.wire.schemas import (
    HEADER_LENGTH,
    MARKER,
    NAMESPACE,
    avsc_files,
    collect_definitions,
    expand,
    read_avsc,
    crc64_avro_fingerprint,
)

__all__ = [
    "MARKER",
    "HEADER_LENGTH",
    "NAMESPACE",
    *errors.__all__,
    "WriterSchema",
    "build_writer_schema",
    "SchemaRegistry",
    "default_registry",
    "encode",
    "decode",
    "crc64_avro_fingerprint",
]

# --------------------------------------------------------------------------- registry


@dataclass(frozen=True, eq=False)
class WriterSchema:
    """One known writer schema: a current schema or a retired one."""

    #: Full name of the top-level type, e.g. ``positionpipeline.v1.PositionInput``.
    name: str
    #: 8-byte CRC-64-AVRO fingerprint, wire (little-endian) order.
    fingerprint: bytes
    #: Parsing Canonical Form the fingerprint is computed from.
    canonical_form: str
    #: Standalone schema JSON (named types inlined at first use).
    schema: Mapping[str, Any]
    #: Where it was loaded from, for messages (``schemas/position_input.avsc``).
    origin: str
    #: True for the current (reader) schema of ``name``, False for a retired one.
    current: bool
    # fastavro's parsed form, the hot-path object.
    parsed: Any
    # Top-level fields that are unions of several records:
    # field -> (accepted branch name -> full name, full name -> short name).
    tagged_unions: Mapping[str, tuple[Mapping[str, str], Mapping[str, str]]]
    # Names the record branch of every union in the datum (None: the schema has no such union).
    name_union_records: Callable[[Any], Any] | None = None


def _tagged_unions(schema: Mapping[str, Any], origin: str) -> dict[str, tuple[dict, dict]]:
    """Find the fields that need a ``(branch, dict)`` pair; refuse such unions deeper down.

    Only top-level fields are rewritten between short and full branch names, which keeps
    the hot path to one dict copy; a multi-record union nested deeper would come back with
    full names, so it is refused here rather than surprise a caller later.
    """

    kinds: dict[str, tuple[Any, str]] = {}
    collect_definitions(schema, "", kinds, origin)
    records = {name for name, (node, _) in kinds.items() if node["type"] in ("record", "error")}

    def record_branches(union: list[Any]) -> list[str]:
        # Expanded schemas use full names everywhere, so a string branch is a full name.
        names = [b.get("name") if isinstance(b, dict) else b for b in union]
        return [n for n in names if isinstance(n, str) and n in records]

    def nested(node: Any, top_level: bool) -> None:
        if isinstance(node, list):
            if not top_level and len(record_branches(node)) > 1:
                raise SchemaDefinitionError(
                    f"{origin}: a union of several records is only supported as a top-level field"
                )
            for branch in node:
                nested(branch, False)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error"):
                for field in node["fields"]:
                    nested(field["type"], False)
            elif kind == "array":
                nested(node["items"], False)
            elif kind == "map":
                nested(node["values"], False)

    unions: dict[str, tuple[dict, dict]] = {}
    for field in schema.get("fields", ()):
        ftype = field["type"]
        if isinstance(ftype, list):
            branches = record_branches(ftype)
            if len(branches) > 1:
                to_full = {full: full for full in branches}
                to_full.update({full.rpartition(".")[2]: full for full in branches})
                to_short = {full: full.rpartition(".")[2] for full in branches}
                unions[field["name"]] = (to_full, to_short)
            nested(ftype, True)
        else:
            nested(ftype, False)
    return unions


def build_writer_schema(schema: dict[str, Any], origin: str, current: bool) -> WriterSchema:
    """A standalone (expanded) schema as a ``WriterSchema``: parsed, fingerprinted, its unions named."""
    try:
        # A fresh named_schemas per schema: a retired version defines the same names
        # as the current one, and a shared dict would let one overwrite the other.
        parsed = parse_schema(copy.deepcopy(schema), named_schemas={})
        canonical_form = to_parsing_canonical_form(parsed)
    except Exception as e:  # fastavro raises several unrelated types for bad schemas
        raise SchemaDefinitionError(f"{origin}: fastavro cannot parse it: {e}") from e
    return WriterSchema(
        name=schema["name"],
        fingerprint=crc64_avro_fingerprint(canonical_form),
        canonical_form=canonical_form,
        schema=schema,
        origin=origin,
        current=current,
        parsed=parsed,
        tagged_unions=_tagged_unions(schema, origin),
        name_union_records=_union_record_namer(parsed),
    )


def _union_record_namer(parsed: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """A function giving every record inside a union of ``parsed`` as fastavro's ``(full name, dict)``.

    Given a plain dict for a ``["null", Record]`` field, fastavro finds the branch by
    validating the whole dict against each candidate, recursively: more than half the time
    of encoding a ``KeyState`` went there. Named, the branch is a lookup. The bytes are the
    same; a datum that does not fit still fails in fastavro, as before. None when no union
    of ``parsed`` holds a record.
    """
    records: dict[str, Mapping[str, Any]] = {}

    def collect(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                collect(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error"):
                records.setdefault(node["name"], node)
                for field in node["fields"]:
                    collect(field["type"])
            elif kind == "array":
                collect(node["items"])
            elif kind == "map":
                collect(node["values"])

    collect(parsed)
    compiled: dict[str, Callable[[Any], Any] | None] = {}

    def for_record(name: str) -> Callable[[Any], Any] | None:
        if name not in compiled:
            compiled[name] = None  # a recursive reference names nothing deeper: fastavro validates it
            compiled[name] = for_record_fields(records[name])
        return compiled[name]

    def for_record_fields(node: Mapping[str, Any]) -> Callable[[Any], Any] | None:
        namers = [(field["name"], namer) for field in node["fields"]
                  if (namer := for_node(field["type"])) is not None]
        if not namers:
            return None

        def name_fields(datum: Any) -> Any:
            if not isinstance(datum, Mapping):
                return datum  # fastavro reports the mismatch
            named = dict(datum)
            for field, namer in namers:
                if field in named:
                    named[field] = namer(named[field])
            return named
        return name_fields

    def for_node(node: Any) -> Callable[[Any], Any] | None:
        if isinstance(node, str):
            return for_record(node) if node in records else None
        if isinstance(node, list):
            return for_union(node)
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error"):
                return for_record(node["name"])
            if kind == "array":
                return _each(for_node(node["items"]))
            if kind == "map":
                return _each_value(for_node(node["values"]))
        return None

    def for_union(branches: list[Any]) -> Callable[[Any], Any] | None:
        names = [branch if isinstance(branch, str) else branch.get("name") if isinstance(branch, dict) else None
                 for branch in branches]
        record_names = [name for name in names if name in records]
        if not record_names:
            return None
        inner = {name: for_record(name) for name in record_names}
        only = record_names[0] if len(record_names) == 1 else None

        def name_branch(value: Any) -> Any:
            if isinstance(value, tuple) and len(value) == 2 and value[0] in inner:
                namer = inner[value[0]]  # named already (a top-level tagged union)
                return value if namer is None else (value[0], namer(value[1]))
            if only is not None and isinstance(value, Mapping):
                namer = inner[only]
                return only, value if namer is None else namer(value)
            return value
        return name_branch

    return for_record(parsed["name"]) if parsed.get("type") in ("record", "error") else None


def _each(namer: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    if namer is None:
        return None
    return lambda items: [namer(item) for item in items] if isinstance(items, (list, tuple)) else items


def _each_value(namer: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    if namer is None:
        return None
    return lambda values: {key: namer(value) for key, value in values.items()} if isinstance(values, Mapping) else values


class SchemaRegistry:
    """Every current schema of a package, plus its retired writer versions, by fingerprint.

    Current schemas are the ``*.avsc`` files at the top of ``package``; each file holds
    one named type and may refer by name to types defined in the other files (each type is
    defined in exactly one file). Retired writer versions are the ``*.avsc`` files in its
    ``history`` folder; each is standalone (it is a frozen copy of what a writer once
    used, so it must not change when a current file does) and must be a version of a
    current top-level name, which is its reader.
    """

    def __init__(self, package: str = "schemas", history: str = "history") -> None:
        """Load and check every schema of ``package`` (``importlib.resources`` name)."""
        root = resources.files(package)
        documents = {f"{package}/{f.name}": read_avsc(f, f"{package}/{f.name}") for f in avsc_files(root)}
        if not documents:
            raise SchemaDefinitionError(f"no .avsc file in package {package!r}")
        definitions: dict[str, tuple[Any, str]] = {}
        for origin, document in documents.items():
            collect_definitions(document, "", definitions, origin)

        self._current: dict[str, WriterSchema] = {}
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        for origin, document in documents.items():
            schema = expand(document, "", definitions, set(), origin)
            self._add(build_writer_schema(schema, origin, current=True))
        shorts = [name.rpartition(".")[2] for name in self._current]
        # A short name is only a shortcut when exactly one namespace defines it.
        self._short = {
            short: name for short, name in zip(shorts, self._current) if shorts.count(short) == 1
        }

        for file in avsc_files(root / history):
            origin = f"{package}/{history}/{file.name}"
            document = read_avsc(file, origin)
            own: dict[str, tuple[Any, str]] = {}
            collect_definitions(document, "", own, origin)
            retired = build_writer_schema(expand(document, "", own, set(), origin), origin, current=False)
            if retired.name not in self._current:
                raise SchemaDefinitionError(f"{origin}: {retired.name} has no current schema to read it")
            if retired.fingerprint not in self._by_fingerprint:
                self._add(retired)

    def _add(self, schema: WriterSchema) -> None:
        clash = self._by_fingerprint.get(schema.fingerprint)
        if clash is not None:
            raise SchemaDefinitionError(
                f"{schema.origin} and {clash.origin} have the same fingerprint {schema.fingerprint.hex()}"
            )
        if schema.current:
            self._current[schema.name] = schema
        self._by_fingerprint[schema.fingerprint] = schema

    # ----------------------------------------------------------------- lookups

    def names(self) -> tuple[str, ...]:
        """Full names of the current top-level types, sorted."""
        return tuple(sorted(self._current))

    def current(self, record_name: str) -> WriterSchema:
        """The current schema of ``record_name`` (short or full name)."""
        schema = self._current.get(record_name) or self._current.get(self._short.get(record_name, ""))
        if schema is None:
            raise UnknownRecordType(
                f"no current schema named {record_name!r}; known: {', '.join(sorted(self._short))}"
            )
        return schema

    def schema(self, record_name: str) -> dict[str, Any]:
        """A copy of the standalone JSON schema of ``record_name`` (what other Avro libraries parse)."""
        return copy.deepcopy(dict(self.current(record_name).schema))

    def fingerprint(self, record_name: str) -> bytes:
        """The 8-byte fingerprint (wire order) of ``record_name``'s current schema."""
        return self.current(record_name).fingerprint

    def writer_schemas(self, record_name: str) -> tuple[WriterSchema, ...]:
        """Every known writer schema of ``record_name``, current one first."""
        current = self.current(record_name)
        retired = [s for s in self._by_fingerprint.values() if s.name == current.name and not s.current]
        return (current, *sorted(retired, key=lambda s: s.origin))

    def writer_schema(self, fingerprint: bytes) -> WriterSchema:
        """The writer schema with this 8-byte fingerprint (wire order)."""
        schema = self._by_fingerprint.get(bytes(fingerprint))
        if schema is None:
            raise UnknownSchemaFingerprint(
                f"no known schema has fingerprint {bytes(fingerprint).hex()}", bytes(fingerprint).hex()
            )
        return schema

    # ----------------------------------------------------------------- encode / decode

    def encode(self, record_name: str, datum: Mapping[str, Any]) -> bytes:
        """Encode ``datum`` with the current schema of ``record_name`` as a single object.

        Raises :class:`UnknownRecordType` for an unknown name and :class:`InvalidRecord`
        when the datum does not match (wrong type, unknown field, missing required field,
        union payload not given as a ``(branch, dict)`` pair).
        """
        schema = self.current(record_name)
        return self._encode_with(schema, datum)

    def encode_with_writer(self, fingerprint: bytes, datum: Mapping[str, Any]) -> bytes:
        """Encode ``datum`` with a specific (e.g. retired) writer schema; for tests and tools."""
        return self._encode_with(self.writer_schema(fingerprint), datum)

    def _encode_with(self, schema: WriterSchema, datum: Mapping[str, Any]) -> bytes:
        if not isinstance(datum, Mapping):
            raise InvalidRecord(f"{schema.name}: expected a mapping, got {type(datum).__name__}")
        if schema.tagged_unions:
            datum = _tag(schema, datum)
        if schema.name_union_records is not None:
            datum = schema.name_union_records(datum)
        buffer = io.BytesIO()
        buffer.write(MARKER)
        buffer.write(schema.fingerprint)
        try:
            # strict_allow_default: an unknown (e.g. misspelt) field is an error instead of
            # being dropped silently; a missing field with a default gets the default.
            schemaless_writer(buffer, schema.parsed, datum, strict_allow_default=True)
        except Exception as e:  # fastavro raises TypeError, ValueError, OverflowError, ...
            raise InvalidRecord(
                f"{schema.name} (fingerprint {schema.fingerprint.hex()}) does not accept the datum: "
                f"{type(e).__name__}: {_shorten(str(e))}"
            ) from e
        return buffer.getvalue()

    def decode(self, record_name: str, data: bytes) -> dict[str, Any]:
        """Decode single-object bytes into a dict shaped by the current schema of ``record_name``.

        The writer schema is found by the fingerprint in the header and resolved to the
        current reader schema (fields the writer lacked get their defaults).
        """
        reader = self.current(record_name)
        if not isinstance(data, bytes):
            data = bytes(data)  # bytearray / memoryview from some clients
        if len(data) < HEADER_LENGTH or data[:2] != MARKER:
            raise NotSingleObjectEncoded(
                f"{reader.name}: {len(data)} bytes starting {data[:HEADER_LENGTH].hex() or '(empty)'} "
                f"are not Avro single-object encoded (want marker {MARKER.hex()} + 8-byte fingerprint)"
            )
        fingerprint = data[2:HEADER_LENGTH]
        writer = self._by_fingerprint.get(fingerprint)
        if writer is None:
            raise UnknownSchemaFingerprint(
                f"{reader.name}: unknown writer schema fingerprint {fingerprint.hex()} ({len(data)} bytes)",
                fingerprint.hex(),
            )
        if writer.name != reader.name:
            raise SchemaMismatch(
                f"expected {reader.name}, the bytes are a {writer.name} "
                f"(fingerprint {fingerprint.hex()}, {writer.origin})"
            )
        stream = io.BytesIO(data)
        stream.seek(HEADER_LENGTH)
        try:
            datum = schemaless_reader(
                stream,
                writer.parsed,
                None if writer is reader else reader.parsed,
                # Tuples only for the multi-record unions; ["null", Record] stays a plain dict.
                return_record_name=True,
                return_record_name_override=True,
            )
        except SchemaResolutionError as e:
            raise SchemaMismatch(
                f"{writer.origin} (fingerprint {fingerprint.hex()}) does not resolve to the current "
                f"{reader.name}: {e}"
            ) from e
        except Exception as e:  # fastavro raises EOFError, IndexError, UnicodeDecodeError, ...
            raise CorruptPayload(
                f"{reader.name}: body of {len(data) - HEADER_LENGTH} bytes does not decode with writer "
                f"schema {fingerprint.hex()} ({writer.origin}): {type(e).__name__}: {e}"
            ) from e
        consumed = stream.tell()
        if consumed != len(data):
            raise CorruptPayload(
                f"{reader.name}: {len(data) - consumed} trailing bytes after the body "
                f"(fingerprint {fingerprint.hex()}, {len(data)} bytes)"
            )
        if reader.tagged_unions:
            for field, (_, to_short) in reader.tagged_unions.items():
                branch, value = datum[field]
                datum[field] = (to_short[branch], value)
        return datum


def _shorten(text: str, limit: int = 400) -> str:
    # fastavro's messages can embed the whole (documented) schema of a union.
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _tag(schema: WriterSchema, datum: Mapping[str, Any]) -> dict[str, Any]:
    tagged = dict(datum)
    for field, (to_full, to_short) in schema.tagged_unions.items():
        value = datum.get(field)
        if not (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str)):
            raise InvalidRecord(
                f"{schema.name}.{field} must be a (branch name, dict) pair, the branch one of "
                f"{', '.join(sorted(to_short.values()))}; got {type(value).__name__}"
            )
        full = to_full.get(value[0])
        if full is None:
            raise InvalidRecord(
                f"{schema.name}.{field}: unknown branch {value[0]!r}; "
                f"expected one of {', '.join(sorted(to_short.values()))}"
            )
        tagged[field] = (full, value[1])
    return tagged


@functools.cache
def default_registry() -> SchemaRegistry:
    """The process-wide registry of the ``schemas`` package (loaded once)."""
    return SchemaRegistry()


def encode(record_name: str, datum: Mapping[str, Any]) -> bytes:
    """Encode with the default registry; see :meth:`SchemaRegistry.encode`."""
    return default_registry().encode(record_name, datum)


def decode(record_name: str, data: bytes) -> dict[str, Any]:
    """Decode with the default registry; see :meth:`SchemaRegistry.decode`."""
    return default_registry().decode(record_name, data)

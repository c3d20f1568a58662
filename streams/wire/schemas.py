"""Schema files to standalone schemas: named types resolved, tagged unions found, fingerprints computed.

``schemas/*.avsc`` define the current types (shared named types in files of their own);
``schemas/history/*.avsc`` are frozen, standalone copies of retired writer schemas. This
module reads them and builds a ``WriterSchema`` per top-level record, which
``streams.wire.codec.SchemaRegistry`` indexes by fingerprint.
"""

from __future__ import annotations

import json
from importlib.resources.abc import Traversable
from typing import Any, Mapping

from fastavro.schema import fingerprint as _fastavro_fingerprint

from streams.wire.errors import SchemaDefinitionError

__all__ = ["HEADER_LENGTH", "MARKER", "NAMESPACE", "avsc_files", "collect_definitions", "crc64_avro_fingerprint", "expand",
           "read_avsc"]


#: Single-object encoding marker (Avro spec, "Single-object encoding").
MARKER = b"\xc3\x01"
_FINGERPRINT_LENGTH = 8
#: Marker plus fingerprint: the fixed prefix of every encoded value.
HEADER_LENGTH = len(MARKER) + _FINGERPRINT_LENGTH
#: Namespace of every current schema.
NAMESPACE = "positionpipeline.v1"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})


# --------------------------------------------------------------------------- fingerprints


def crc64_avro_fingerprint(canonical_form: str) -> bytes:
    """Return the 8-byte CRC-64-AVRO fingerprint of a Parsing Canonical Form, wire order.

    The bytes are little-endian, as the single-object header carries them (and as the
    Java and Apache Python implementations return them).
    """
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


# --------------------------------------------------------------------------- schema files


def _fullname(name: str, namespace: str) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str:
    return fullname.rpartition(".")[0]


def collect_definitions(
    node: Any, namespace: str, into: dict[str, tuple[Any, str]], origin: str
) -> None:
    """Record every named type defined in ``node`` as fullname -> (json, enclosing namespace)."""
    if isinstance(node, list):
        for branch in node:
            collect_definitions(branch, namespace, into, origin)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in _NAMED_KINDS:
        fullname = _fullname(node["name"], node.get("namespace", namespace))
        if fullname in into:
            raise SchemaDefinitionError(f"{origin}: type {fullname} is defined more than once")
        into[fullname] = (node, namespace)
        if kind in ("record", "error"):
            for field in node.get("fields", ()):
                collect_definitions(field["type"], _namespace_of(fullname), into, origin)
    elif kind == "array":
        collect_definitions(node["items"], namespace, into, origin)
    elif kind == "map":
        collect_definitions(node["values"], namespace, into, origin)
    elif isinstance(kind, (dict, list)):
        collect_definitions(kind, namespace, into, origin)


def expand(
    node: Any,
    namespace: str,
    definitions: Mapping[str, tuple[Any, str]],
    defined: set[str],
    origin: str,
) -> Any:
    """Return ``node`` standalone: each named type inlined at its first use, later uses by full name.

    That is the shape the Parsing Canonical Form has, so the fingerprint covers the whole
    schema (a by-name reference alone would hash only the name), and it is what the Apache
    ``avro`` package, which knows no cross-file references, can parse.
    """
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        fullname = _fullname(node, namespace)
        if fullname in defined:
            return fullname
        if fullname not in definitions:
            raise SchemaDefinitionError(f"{origin}: unknown type {node!r} (as {fullname})")
        definition, enclosing = definitions[fullname]
        return expand(definition, enclosing, definitions, defined, origin)
    if isinstance(node, list):
        return [expand(branch, namespace, definitions, defined, origin) for branch in node]
    if not isinstance(node, dict):
        raise SchemaDefinitionError(f"{origin}: not a schema: {node!r}")
    kind = node.get("type")
    out = dict(node)
    if kind in _NAMED_KINDS:
        fullname = _fullname(node["name"], node.get("namespace", namespace))
        if fullname in defined:
            raise SchemaDefinitionError(f"{origin}: type {fullname} is defined more than once")
        defined.add(fullname)  # before the fields: a record may refer to itself
        out.pop("namespace", None)
        out["name"] = fullname
        if kind in ("record", "error"):
            inner = _namespace_of(fullname)
            out["fields"] = [
                {**field, "type": expand(field["type"], inner, definitions, defined, origin)}
                for field in node["fields"]
            ]
    elif kind == "array":
        out["items"] = expand(node["items"], namespace, definitions, defined, origin)
    elif kind == "map":
        out["values"] = expand(node["values"], namespace, definitions, defined, origin)
    elif isinstance(kind, (dict, list)):
        return expand(kind, namespace, definitions, defined, origin)
    return out


def read_avsc(file: Traversable, origin: str) -> dict[str, Any]:
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SchemaDefinitionError(f"{origin}: not valid JSON: {e}") from e
    if not (isinstance(document, dict) and document.get("type") in _NAMED_KINDS):
        raise SchemaDefinitionError(f"{origin}: the top level must be a named type")
    return document


def avsc_files(folder: Traversable) -> list[Traversable]:
    if not folder.is_dir():
        return []
    return sorted(
        (f for f in folder.iterdir() if f.is_file() and f.name.endswith(".avsc")),
        key=lambda f: f.name,
    )

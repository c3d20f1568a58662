"""The wire format's exceptions: one root (``CodecError``), a subclass per way a value or schema is wrong."""

from __future__ import annotations

from streams.domain.exceptions import PipelineError

__all__ = [
    "CodecError",
    "SchemaDefinitionError",
    "UnknownRecordType",
    "InvalidRecord",
    "DecodeError",
    "NotSingleObjectEncoded",
    "UnknownSchemaFingerprint",
    "SchemaMismatch",
    "CorruptPayload",
]


class CodecError(PipelineError):
    """Root of every error this module raises."""


class SchemaDefinitionError(CodecError):
    """The ``.avsc`` files are inconsistent (unknown or twice-defined type, bad history file)."""


class UnknownRecordType(CodecError):
    """The record name asked for has no current schema."""


class InvalidRecord(CodecError):
    """``encode`` was given a datum that does not match the record's schema."""


class DecodeError(CodecError):
    """Base of the errors for bytes that cannot be decoded (dead-letter material)."""


class NotSingleObjectEncoded(DecodeError):
    """The bytes do not start with the ``C3 01`` marker and a full 8-byte fingerprint."""


class UnknownSchemaFingerprint(DecodeError):
    """The writer schema's fingerprint is neither a current nor a retired schema."""

    def __init__(self, message: str, fingerprint: str) -> None:
        super().__init__(message)
        #: The unknown fingerprint as 16 hex digits, in wire (little-endian) byte order.
        self.fingerprint = fingerprint


class SchemaMismatch(DecodeError):
    """The writer schema is known but is another record, or does not resolve to the reader."""


class CorruptPayload(DecodeError):
    """The body does not decode with its writer schema (truncated, garbage, trailing bytes)."""

"""Faust codecs of the pipeline's records: imported by the worker only (the sink and tools never load Faust)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from faust.serializers import codecs as faust_codecs

from streams.wire.codec import default_registry
from streams.wire.serde import KEY_STATE_RECORD

__all__ = [
    "AvroRecordCodec",
    "PositionInputCodec",
    "PositionCommandCodec",
    "PositionUpdateCodec",
    "KeyStateCodec",
    "DeadLetterCodec",
    "FAUST_CODECS",
    "register_faust_codecs",
]


class AvroRecordCodec(faust_codecs.Codec):
    """Faust codec for one top-level record: dict <-> single-object encoded Avro bytes.

    Subclasses set :attr:`record_name`. The record name is a class attribute, not a
    constructor argument, because Faust's ``Codec.clone`` (used by ``a | b`` chains)
    rebuilds codecs as ``type(self)(children=..., **self.kwargs)``.
    """

    #: Short name of the record this codec encodes.
    record_name: ClassVar[str]

    def _dumps(self, obj: Any) -> bytes:
        return default_registry().encode(self.record_name, obj)

    def _loads(self, s: bytes) -> Any:
        return default_registry().decode(self.record_name, s)


class PositionInputCodec(AvroRecordCodec):
    """Codec of ``PositionInput`` (the position-inputs topic)."""

    record_name = "PositionInput"


class PositionCommandCodec(AvroRecordCodec):
    """Codec of ``PositionCommand`` (the command topic)."""

    record_name = "PositionCommand"


class PositionUpdateCodec(AvroRecordCodec):
    """Codec of ``PositionUpdate`` (the update topic the sink reads)."""

    record_name = "PositionUpdate"


class KeyStateCodec(AvroRecordCodec):
    """Codec of ``KeyState`` (the Faust table value and its changelog)."""

    record_name = KEY_STATE_RECORD


class DeadLetterCodec(AvroRecordCodec):
    """Codec of ``DeadLetter`` (the dead-letter topic)."""

    record_name = "DeadLetter"


#: Faust codec name -> codec class, as :func:`register_faust_codecs` registers them.
FAUST_CODECS: Mapping[str, type[AvroRecordCodec]] = {
    "avro-position-input": PositionInputCodec,
    "avro-position-command": PositionCommandCodec,
    "avro-position-update": PositionUpdateCodec,
    "avro-key-state": KeyStateCodec,
    "avro-dead-letter": DeadLetterCodec,
}


def register_faust_codecs() -> dict[str, AvroRecordCodec]:
    """Register every codec of :data:`FAUST_CODECS` with Faust; idempotent.

    Loads the schemas first so that a broken schema fails at start-up, not on the first
    message. Returns the registered codec instances by name.
    """
    default_registry()
    registered: dict[str, AvroRecordCodec] = {}
    for name, cls in FAUST_CODECS.items():
        existing = faust_codecs.codecs.get(name)
        if type(existing) is not cls:
            faust_codecs.register(name, cls())
        registered[name] = faust_codecs.codecs[name]  # type: ignore[assignment]
    return registered

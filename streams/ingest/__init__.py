"""The signal ingest: WebSocket feed -> validated signals on ``position-inputs`` (contract section 2).

- ``validation``: pure rules, a decoded signal object -> ``Signal`` or ``InvalidSignal``;
- ``feed``: the WebSocket client (``python -m streams.ingest``), reconnecting with backoff;
- ``demo_feed``: the built-in demo feed server, the embedded default of ``SIGNALS_WS_URL``;
- ``cli``: publish one signal by hand (``python -m streams.ingest.cli``);
- ``symbols``, ``publish``, ``backoff``: the exchange's symbol list, the Kafka producer, retries.

Every error of the package derives from ``IngestError`` (``streams.ingest.exceptions``).
"""

from streams.ingest.exceptions import (
    IngestError,
    InvalidFrame,
    InvalidSignal,
    PublishFailed,
    RefusedInput,
    SymbolsUnavailable,
)
from streams.ingest.validation import SUPPORTED_EXCHANGES, parse_frame, to_input_event, validate_signal

__all__ = [
    "IngestError",
    "InvalidFrame",
    "InvalidSignal",
    "PublishFailed",
    "RefusedInput",
    "SymbolsUnavailable",
    "SUPPORTED_EXCHANGES",
    "parse_frame",
    "to_input_event",
    "validate_signal",
]

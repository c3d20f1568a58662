"""Errors of the ``streams.ingest`` package, under one root: ``IngestError``.

A refused frame or signal is an expected outcome at this edge (the feed goes on and the
refusal goes to the dead-letter topic), so it is typed: ``code`` is a short stable
identifier (the dead letter's ``error_type``, a metric label), ``reason`` the sentence a
person reads in the log.
"""

from __future__ import annotations
from streams.domain.exceptions import PipelineError

__all__ = ["IngestError", "RefusedInput", "InvalidFrame", "InvalidSignal", "SymbolsUnavailable", "PublishFailed",
           "DemoFeedOnProduction"]


class IngestError(PipelineError):
    """Root of every error raised by ``streams.ingest``."""


class RefusedInput(IngestError):
    """Something the feed sent that cannot become an input: ``code`` names the rule, ``reason`` explains."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class InvalidFrame(RefusedInput):
    """A WebSocket frame that is not JSON text holding a signal object or an array of them."""


class InvalidSignal(RefusedInput):
    """One signal object that breaks a rule of the contract (section 2).

    ``signal_id`` is the signal's ``id`` when it had a usable one, for the log line.
    """

    def __init__(self, code: str, reason: str, signal_id: str | None = None) -> None:
        super().__init__(code, reason)
        self.signal_id = signal_id


class SymbolsUnavailable(IngestError):
    """The exchange's list of symbols could not be loaded (exchange unreachable or refusing)."""


class PublishFailed(IngestError):
    """Kafka did not acknowledge a record (broker away, timeout): nothing is known to be written."""


class DemoFeedOnProduction(IngestError):
    """The built-in demo feed and Binance's production exchange met: refused, whatever the configuration."""

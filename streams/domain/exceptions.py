"""Errors of the pure domain: programmer errors only.

Expected refusals (an open while a position is in flight, a duplicate, a stale snapshot)
are never exceptions: `decide` returns them as an unchanged state plus an audit record.
An exception from this package means the caller broke a precondition, so the edge that
called it should dead-letter the input with the message and carry on.
"""

__all__ = ["DomainError", "InvalidValueError", "KeyMismatchError", "PipelineError", "TransitionTableError"]


class PipelineError(Exception):
    """Root of every error the project raises on purpose; each package has one subclass as its own root.

    Defined here, in the innermost package, because every other package may import it and
    this one imports nothing: ``DomainError``, ``CodecError`` (wire), ``SettingsError``,
    ``TopologyError``, ``ExchangeError`` (exchange), ``IngestError``, ``WebError``,
    ``OpsError`` (replay, diff), ``InvalidInputRecord`` (worker) and ``SinkError``.
    """


class DomainError(PipelineError):
    """Root of every error raised by `streams.domain`."""


class KeyMismatchError(DomainError):
    """An input was routed to the state of another key."""


class InvalidValueError(DomainError, ValueError):
    """A domain value was built with a field that breaks its invariant (e.g. a float price)."""


class TransitionTableError(DomainError):
    """The transition table has no row for a (status, trigger) pair: a bug in the table."""

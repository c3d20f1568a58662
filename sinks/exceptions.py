"""Errors of the ``sinks`` package, under one root: ``SinkError``.

Driver errors (asyncpg, aiokafka) never leave the package bare: they are wrapped in one of
these, with the original as ``__cause__``, so a caller can tell "PostgreSQL is away, wait"
from "the data or the schema is wrong, stop".
"""

from __future__ import annotations
from streams.domain.exceptions import PipelineError


class SinkError(PipelineError):
    """Root of every error raised by the ``sinks`` package."""


class MigrationError(SinkError):
    """The migrations cannot be applied: a malformed file, an edited history, a failed statement."""


class DatabaseUnavailableError(SinkError):
    """PostgreSQL cannot be reached or dropped the connection: retry later, nothing was written.

    The batch's transaction did not commit from the sink's point of view (it may have
    committed on the server just before the connection dropped; the idempotent upserts make
    writing it again harmless).
    """


class DatabaseError(SinkError):
    """PostgreSQL refused for a reason a retry cannot fix (a constraint, a type, no such database)."""


class IntegrityViolationError(DatabaseError):
    """The batch breaks a constraint, e.g. the one-live-position-per-symbol backstop index.

    The writer answers it by writing the batch row by row and dead-lettering the refused
    rows (``PostgresWriter.write``), so it never stops the sink.
    """

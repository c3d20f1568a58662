"""The PostgreSQL sink: the only writer of ``monitoring.positions`` and ``monitoring.position_events``.

``python -m sinks`` runs it (``sinks.postgres.run_sink``); ``sinks.migrate`` owns the schema,
``sinks.rows`` the pure mapping of update records to rows.
"""

from sinks.exceptions import (
    DatabaseError,
    DatabaseUnavailableError,
    IntegrityViolationError,
    MigrationError,
    SinkError,
)

__all__ = [
    "DatabaseError",
    "DatabaseUnavailableError",
    "IntegrityViolationError",
    "MigrationError",
    "SinkError",
]

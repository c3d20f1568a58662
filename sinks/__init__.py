"""The PostgreSQL sink: the only writer of ``monitoring.positions`` and ``monitoring.position_events``.

``python -m sinks`` runs it (``sinks.postgres.run_sink``, the consumer loop; ``sinks.consumer``
its Kafka consumer); ``sinks.migrate``
owns the schema, ``sinks.rows`` the pure mapping of update records to rows (``sinks.decode``
reads them straight from the records' bytes), ``sinks.sql`` the
statements and one-transaction batch writes, ``sinks.writer`` the connections and their retries,
``sinks.stats`` the counters of the health line.
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

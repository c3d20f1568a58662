"""Versioned SQL migrations of the ``monitoring`` schema: plain files, a version table, a lock.

- The files are ``sinks/migrations/NNNN_name.sql``, numbered from 1 without gaps.
- ``monitoring.schema_migrations`` records each applied version with the file's SHA-256.
- ``migrate`` takes a session-level ``pg_advisory_lock`` first, so two sinks starting at once
  apply each migration exactly once: the second waits, then finds nothing left to do.
- Each migration runs in its own transaction together with its row in the version table:
  a failure leaves the database at the previous version, never half-migrated.
- A database whose recorded history differs from the files (an applied file was edited)
  is refused; one with versions newer than the files (a newer sink ran) is used as is,
  with a warning, because migrations only ever add.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from sinks.exceptions import DatabaseUnavailableError, MigrationError
from sinks.retry import is_transient

logger = logging.getLogger(__name__)

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "applied_versions",
    "load_migrations",
    "migrate",
]

#: Key of the advisory lock that serialises migrations (any constant works if every sink
#: agrees; this one is the first 8 bytes of sha256("monitoring.schema_migrations")).
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"monitoring.schema_migrations").digest()[:8], "big",
                                    signed=True)

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS monitoring;
CREATE TABLE IF NOT EXISTS monitoring.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    """One migration file: its version, name, SQL text and the SHA-256 of that text."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Hex SHA-256 of the SQL text, recorded when applied and compared ever after."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(package: str = "sinks.migrations") -> list[Migration]:
    """The migrations shipped in ``package``, in version order; refuses gaps and bad names."""
    migrations = []
    for entry in importlib.resources.files(package).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_lower_snake.sql")
        migrations.append(Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda migration: migration.version)
    check_sequence(migrations)
    return migrations


def check_sequence(migrations: Sequence[Migration]) -> None:
    """Refuses migrations that are not numbered 1, 2, 3, ... (a gap or a duplicate)."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migrations must be numbered 1..n without gaps or duplicates; "
                f"expected {expected:04d}, found {migration.version:04d}_{migration.name}.sql"
            )


async def applied_versions(connection: asyncpg.Connection) -> dict[int, str]:
    """Version -> checksum of every migration recorded in the database (empty when none)."""
    exists = await connection.fetchval("SELECT to_regclass('monitoring.schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await connection.fetch("SELECT version, checksum FROM monitoring.schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def migrate(connection: asyncpg.Connection, migrations: Sequence[Migration] | None = None,
                  *, target: int | None = None) -> list[int]:
    """Brings the database up to ``target`` (default: the newest migration).

    Returns the versions applied by this call (empty when the database was up to date).
    Raises ``MigrationError`` for an edited history or a failing migration and
    ``DatabaseUnavailableError`` when the connection is lost on the way.
    """
    migrations = list(load_migrations() if migrations is None else migrations)
    check_sequence(migrations)
    target = len(migrations) if target is None else target
    try:
        # Session-level lock, taken outside any transaction: it must span the bootstrap,
        # the read of the applied versions and every migration's own transaction.
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            return await _migrate_locked(connection, migrations, target)
        finally:
            if not connection.is_closed():
                await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    except MigrationError:
        raise
    except Exception as error:  # noqa: BLE001 - every driver error leaves wrapped, by kind
        if is_transient(error):
            raise DatabaseUnavailableError(f"PostgreSQL unavailable while migrating: {error}") from error
        raise MigrationError(f"migrating the monitoring schema failed: {type(error).__name__}: {error}") from error


async def _migrate_locked(connection: asyncpg.Connection, migrations: list[Migration], target: int) -> list[int]:
    await connection.execute(_BOOTSTRAP)
    applied = await applied_versions(connection)
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name}.sql differs from the one applied to "
                "this database (checksum mismatch): applied migrations must never be edited; add a new one"
            )
    newer = sorted(version for version in applied if version > len(migrations))
    if newer:
        logger.warning("database has migrations %s that this sink does not know (a newer sink ran); "
                       "continuing, since migrations only add", newer)

    done = []
    for migration in migrations:
        if migration.version > target or migration.version in applied:
            continue
        try:
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO monitoring.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum)
        except asyncpg.PostgresError as error:
            if is_transient(error):
                raise  # wrapped by migrate() as "unavailable": retried
            raise MigrationError(f"migration {migration.version:04d}_{migration.name}.sql failed: {error}") from error
        logger.info("applied migration %04d_%s", migration.version, migration.name)
        done.append(migration.version)
    return done

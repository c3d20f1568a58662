"""The sink's connection to PostgreSQL: writes a batch until it is durable, waiting out outages.

``PostgresWriter`` holds one connection, opened on demand and migrated on first connect.
Each attempt is one transaction from ``sinks.sql``; on a transient error the writer drops
the connection, waits (capped exponential backoff from ``sinks.retry``) and tries again on
a new one, so the caller never sees an outage, only a batch that took longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from sinks.exceptions import DatabaseUnavailableError, IntegrityViolationError
from sinks.migrate import Migration, migrate
from sinks.retry import backoff_delay
from streams.edge.backoff import sleep_unless_stopped
from sinks.rows import BatchRows
from sinks.sql import (
    WriteResult,
    translated_errors,
    write_batch,
    write_batch_isolating_conflicts,
)
from sinks.stats import SinkStats

# The sink's log lines keep the one logger name operators filter on, whichever module logs.
logger = logging.getLogger("sinks.postgres")

__all__ = ["PostgresWriter", "StopRequested", "wait_unless_stopped", "write_side_by_side"]

CONNECT_TIMEOUT_S = 10.0
#: A statement that takes longer is abandoned and the batch retried on a new connection
#: (a hung server must look like an outage, not block the sink forever).
COMMAND_TIMEOUT_S = 60.0
#: While waiting out an outage, the consumer is polled at least this often so the group
#: coordinator does not evict it (max.poll.interval) and the health line keeps coming.
KEEP_ALIVE_INTERVAL_S = 1.0

#: Called while a batch waits for PostgreSQL (the sink keeps its consumer alive with it).
WhileWaiting = Callable[[], Awaitable[None]]


class StopRequested(Exception):
    """Raised inside the retry loops when the sink is asked to stop while waiting."""


async def wait_unless_stopped(delay_s: float, stopping: asyncio.Event, while_waiting: WhileWaiting | None) -> None:
    """Sleeps ``delay_s``, calling ``while_waiting`` every second; raises ``StopRequested`` on a stop."""
    deadline = time.monotonic() + delay_s
    while (remaining := deadline - time.monotonic()) > 0:
        if await sleep_unless_stopped(stopping, min(remaining, KEEP_ALIVE_INTERVAL_S)):
            raise StopRequested()
        if while_waiting is not None:
            await while_waiting()


class PostgresWriter:
    """One connection to PostgreSQL, (re)opened on demand, migrated on first connect.

    ``write`` retries a batch until it is durable: on a transient error the connection is
    dropped, the writer waits (capped exponential backoff, calling ``while_waiting`` at
    least every second) and tries again on a new connection.
    """

    def __init__(self, database_url: str, *, max_backoff_s: float, stats: SinkStats | None = None,
                 application_name: str = "position-pipeline-sink",
                 migrations: Sequence[Migration] | None = None) -> None:
        self.database_url = database_url
        self.max_backoff_s = max_backoff_s
        self.stats = stats if stats is not None else SinkStats()
        self.application_name = application_name
        self._migrations = migrations
        self._connection: asyncpg.Connection | None = None
        self._migrated = False

    async def _connect(self) -> asyncpg.Connection:
        """A new connection with the schema migrated (first time)."""
        connection = None
        try:
            with translated_errors("connecting"):
                connection = await asyncpg.connect(
                    self.database_url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S,
                    server_settings={"application_name": self.application_name},
                )
                if not self._migrated:
                    applied = await migrate(connection, self._migrations)
                    if applied:
                        logger.info("migrated monitoring schema: applied %s", applied)
                    self._migrated = True
                return connection
        except BaseException:
            if connection is not None:
                connection.terminate()
            raise

    async def connection(self) -> asyncpg.Connection:
        """The open connection, or a new one (one attempt, no retry)."""
        # Closed while idle (the server ended it, a network cut): found before a write failed on it.
        lost = self._connection is not None and self._connection.is_closed()
        if self._connection is None or lost:
            self._connection = None
            self._connection = await self._connect()
            if lost:
                self.stats.reconnects += 1
                logger.info("the connection to PostgreSQL was lost while idle; connected again")
        return self._connection

    async def close(self) -> None:
        """Closes the connection, if any."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), timeout=5)
            self._connection.terminate()
            self._connection = None

    async def ready(self, stopping: asyncio.Event, while_waiting: WhileWaiting | None = None) -> None:
        """Connects and migrates, waiting out an unreachable PostgreSQL; raises on fatal errors."""
        await self._with_retries(self.connection, "connecting", stopping, while_waiting)

    async def write(self, rows: BatchRows, stopping: asyncio.Event,
                    while_waiting: WhileWaiting | None = None) -> WriteResult:
        """Writes ``rows`` in one transaction, retrying until durable (or the sink stops).

        A batch the live-position index refuses is written again row by row: every other
        row lands and the refused ones come back in ``WriteResult.refused``; the sink never
        stops (and never crash-loops) on data another position already holds.
        """

        async def attempt() -> WriteResult:
            connection = await self.connection()
            try:
                return await write_batch(connection, rows)
            except IntegrityViolationError as violation:
                logger.warning("batch refused by a constraint (%s): writing it row by row", violation)
                return await write_batch_isolating_conflicts(connection, rows)

        return await self._with_retries(attempt, f"writing {len(rows.positions)} positions and "
                                                 f"{rows.event_count} audit rows", stopping, while_waiting)

    async def _with_retries(self, operation, doing: str, stopping: asyncio.Event,
                            while_waiting: WhileWaiting | None):
        attempt = 0
        while True:
            if stopping.is_set() and attempt:
                raise StopRequested()
            try:
                result = await operation()
            except DatabaseUnavailableError as error:
                await self._drop_connection()
                if self.stats.waiting_since is None:
                    self.stats.waiting_since = time.monotonic()
                delay = backoff_delay(attempt, cap_s=self.max_backoff_s)
                attempt += 1
                self.stats.retries += 1
                logger.warning("%s failed (attempt %d): %s; retrying in %.1fs, holding the batch and the offsets",
                               doing, attempt, error, delay)
                await wait_unless_stopped(delay, stopping, while_waiting)
                continue
            if attempt:
                self.stats.reconnects += 1
                waited = time.monotonic() - (self.stats.waiting_since or time.monotonic())
                logger.info("PostgreSQL reachable again after %d failed attempts (%.1fs); %s done",
                            attempt, waited, doing)
            self.stats.waiting_since = None
            return result

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()  # no goodbye: the socket is likely dead already
            self._connection = None


async def write_side_by_side(writers: Sequence[PostgresWriter], parts: Sequence[BatchRows], stopping: asyncio.Event,
                             while_waiting: WhileWaiting | None = None) -> list[WriteResult]:
    """Writes ``parts[i]`` by ``writers[i]``, all at once, each in its own transaction; their results.

    Returns once every part is durable. When one writer raises (a fatal error, a stop while
    waiting), the others are cancelled (a transaction cut short rolls back) and its exception
    is raised: the caller then commits no offset of the batch, so whatever one writer did
    commit is written again, harmlessly, by the next reading.
    """
    writing = [asyncio.ensure_future(writer.write(rows, stopping, while_waiting))
               for writer, rows in zip(writers, parts, strict=True) if rows]
    if not writing:
        return []
    try:
        await asyncio.wait(writing, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((task for task in writing if task.done() and not task.cancelled() and task.exception()), None)
        if failed is not None:
            raise failed.exception()
        return [task.result() for task in writing]
    finally:
        for task in writing:
            task.cancel()
        for task in writing:
            with contextlib.suppress(BaseException):
                await task

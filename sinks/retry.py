"""When to retry a PostgreSQL operation, and how long to wait: pure functions, no I/O."""

from __future__ import annotations

import random
from collections.abc import Callable

import asyncpg

from streams.edge.backoff import Backoff

__all__ = ["INITIAL_BACKOFF_S", "backoff_delay", "is_transient"]

INITIAL_BACKOFF_S = 0.1

_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError (command_timeout) is an OSError too
    asyncpg.PostgresConnectionError,  # SQLSTATE 08: connection lost / does not exist
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up, canceled
    asyncpg.exceptions.TransactionRollbackError,  # 40: serialization failure, deadlock
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    # Client-side protocol errors. When the server ends a connection (terminated, shut
    # down), asyncpg reads the FATAL message before it sees the socket close; a query in
    # between fails with "cannot switch to state ..." (InternalClientError) or "another
    # operation is in progress" (InterfaceError, e.g. from the transaction's rollback).
    # Both mean "this connection is unusable": a new one is the cure, as for a lost one.
    # The sink uses one connection from one task, so they cannot stem from its own misuse.
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


def is_transient(error: BaseException) -> bool:
    """True when ``error`` means "PostgreSQL is away, busy, or this connection is gone": retry.

    The caller drops the connection and writes the batch again on a new one. Errors the
    server reports about the data or the schema (constraints, types, missing tables) are
    not transient: the same batch would fail the same way.
    """
    return isinstance(error, _TRANSIENT_ERRORS)


def backoff_delay(attempt: int, *, cap_s: float, initial_s: float = INITIAL_BACKOFF_S,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): the edges' one ``Backoff``.

    Doubling, capped, with equal jitter, so several sink replicas do not all knock on a
    restarted server at the same instant.
    """
    return Backoff(initial_s, max(cap_s, initial_s), rng=rng).delay(attempt)

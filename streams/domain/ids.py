"""Identifiers: pure functions of the inputs, never random, never a database sequence.

Replaying the same inputs from the same offsets therefore produces the same ids, and a
retried request can never become a second order at the exchange.
"""

from __future__ import annotations

import hashlib
import re

from streams.domain.exceptions import InvalidValueError
from streams.domain.model import OrderRole, ReportOutcome

__all__ = [
    "CLIENT_ORDER_ID_PATTERN",
    "client_order_id",
    "command_id",
    "key_for",
    "key_of_position_id",
    "position_id",
    "report_key",
    "role_of_client_order_id",
]

# What Binance accepts as newClientOrderId.
CLIENT_ORDER_ID_PATTERN = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")

_ROLE_LETTER = {OrderRole.ENTRY: "e", OrderRole.STOP_LOSS: "s", OrderRole.CLOSE: "c"}
_ROLE_OF_LETTER = {letter: role for role, letter in _ROLE_LETTER.items()}
_DIGEST_BYTES = 10  # 80 bits: exactly 16 base32 characters, so no padding to strip
# RFC 4648 base32 in lower case, two characters (10 bits) at a time, as `base64.b32encode` does.
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_BASE32_PAIRS = tuple(first + second for first in _BASE32 for second in _BASE32)
_PAIR_SHIFTS = tuple(range(_DIGEST_BYTES * 8 - 10, -1, -10))


def key_for(symbol: str, exchange: str) -> str:
    """The partition key of a symbol on an exchange: `APTUSDT@binance`."""
    return f"{symbol}@{exchange}"


def position_id(key: str, offset: int) -> str:
    """Id of the position opened or adopted by the input at `offset` of `key`.

    A key always hashes to the same partition, so key + offset is unique.
    """
    if not key or offset < 0:
        raise InvalidValueError(f"position_id needs a key and an offset >= 0, got {key!r}, {offset}")
    return f"{key}/{offset}"


def key_of_position_id(position_id: str) -> str:
    """The key part of a position id (everything before the last `/`)."""
    return position_id.rpartition("/")[0]


def client_order_id(position_id: str, role: OrderRole, attempt: int) -> str:
    """The exchange client order id of attempt `attempt` (from 1) of `role` for a position.

    `"pp" + role letter + attempt + "-" + base32(blake2b(position_id|role|attempt))`, lower
    case: at most 36 characters of `[.A-Z:/a-z0-9_-]`. A retry of the same command keeps
    the id; a new attempt gets a new one.
    """
    if attempt < 1:
        raise InvalidValueError(f"client_order_id attempt must be >= 1, got {attempt}")
    digest = hashlib.blake2b(
        f"{position_id}|{role}|{attempt}".encode(), digest_size=_DIGEST_BYTES  # a StrEnum formats as its value
    ).digest()
    bits = int.from_bytes(digest, "big")
    encoded = "".join([_BASE32_PAIRS[(bits >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])
    identifier = f"pp{_ROLE_LETTER[role]}{attempt}-{encoded}"
    if not CLIENT_ORDER_ID_PATTERN.match(identifier):
        # Only an absurd attempt number (> 16 digits) can get here.
        raise InvalidValueError(f"client order id {identifier!r} breaks the exchange's rules")
    return identifier


def role_of_client_order_id(client_order_id: str) -> OrderRole:
    """The role a client order id of `client_order_id()` was made for (its third character)."""
    role = _ROLE_OF_LETTER.get(client_order_id[2:3]) if client_order_id.startswith("pp") else None
    if role is None:
        raise InvalidValueError(f"{client_order_id!r} is not a client order id of this pipeline")
    return role


def command_id(position_id: str, kind: str, client_order_id: str, offset: int | None = None) -> str:
    """Deterministic id of a command: `{position_id}/{kind}/{client_order_id}`.

    A query or a cancel is repeated on every deadline for the same order, so each passes the
    offset of the input that asked for it and gets `.../{offset}` appended: each has its own
    id while a re-sent place command keeps its id.
    """
    base = f"{position_id}/{kind}/{client_order_id}"
    return base if offset is None else f"{base}/{offset}"


def report_key(client_order_id: str, outcome: ReportOutcome) -> str:
    """The string recorded in `Position.seen_reports` for a report: `client_order_id|outcome`.

    `|` is outside the client-id alphabet, so the pair is unambiguous.
    """
    return f"{client_order_id}|{outcome}"  # a StrEnum formats as its value

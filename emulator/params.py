"""Binance request parameters (strings) read and checked as Binance checks them.

Each reader raises the ``BinanceError`` Binance answers for a missing or malformed value.
"""

from __future__ import annotations

import re
from decimal import Decimal

from emulator.errors import BinanceError, illegal_characters

__all__ = ["CLIENT_ID_PATTERN", "bool_param", "client_id_param", "decimal_param", "numeric_id_param",
           "required_param"]

CLIENT_ID_PATTERN = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_DECIMAL_PATTERN = re.compile(r"^-?([0-9]{1,20})(\.[0-9]{1,20})?$")


def required_param(params: dict[str, str], name: str) -> str:
    """The parameter's value; -1102 when it is missing or empty."""
    value = params.get(name)
    if value is None or value == "":
        raise BinanceError(-1102, name=name)
    return value


def decimal_param(params: dict[str, str], name: str) -> Decimal:
    """A required decimal parameter (a quantity or a price)."""
    raw = required_param(params, name)
    if not _DECIMAL_PATTERN.match(raw):
        raise illegal_characters(name, r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
    return Decimal(raw)


def bool_param(params: dict[str, str], name: str) -> bool:
    """An optional ``true``/``false`` parameter, false when absent."""
    raw = params.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise illegal_characters(name, "true, false")
    return raw == "true"


def client_id_param(params: dict[str, str], name: str) -> str | None:
    """An optional client order id, None when absent."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not CLIENT_ID_PATTERN.match(value):
        raise illegal_characters(name, r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
    return value


def numeric_id_param(params: dict[str, str], name: str) -> int:
    """An exchange-assigned id (``orderId``, ``algoId``) the caller has checked is present."""
    try:
        return int(params[name])
    except ValueError:
        raise illegal_characters(name, "^[0-9]{1,20}$") from None

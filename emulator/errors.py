"""Binance's error answers: ``{"code": ..., "msg": ...}`` with an HTTP status.

Every refusal of the emulator is a ``BinanceError`` raised where Binance would refuse, and
turned into its JSON answer by the server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BANNED_MESSAGE", "ERROR_MESSAGES", "BinanceError", "illegal_characters"]

# Binance's texts for the codes the emulator answers; a `reject` fault without `msg` uses them.
ERROR_MESSAGES: dict[int, str] = {
    -1001: "Internal error; unable to process your request. Please try again.",
    -1003: "Too many requests; current limit of IP(127.0.0.1) is {limit} requests per minute. "
           "Please use the websocket for live updates to avoid polling the API.",
    -1015: "Too many new orders; current limit is {limit} orders per {interval}.",
    -1021: "Timestamp for this request is outside of the recvWindow.",
    -1022: "Signature for this request is not valid.",
    -1102: "Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
    -1111: "Precision is over the maximum defined for this asset.",
    -1116: "Invalid orderType.",
    -1117: "Invalid side.",
    -1121: "Invalid symbol.",
    -1131: "recvWindow must be less than 60000",
    -2011: "Unknown order sent.",
    -2013: "Order does not exist.",
    -2014: "API-key format invalid.",
    -2015: "Invalid API-key, IP, or permissions for action.",
    -2019: "Margin is insufficient.",
    -2021: "Order would immediately trigger.",
    -2022: "ReduceOnly Order is rejected.",
    -4003: "Quantity less than or equal to zero.",
    -4005: "Quantity greater than max quantity.",
    -4014: "Price not increased by tick size.",
    -4045: "Reach max stop order limit.",
    -4061: "Order's position side does not match user's setting.",
    -4116: "ClientOrderId is duplicated.",
    -4120: "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.",
    -4164: "Order's notional must be no smaller than {notional} (unless you choose reduce only).",
}

# -1003 with HTTP 418: the IP ignored a 429 and is banned until `until_ms`.
BANNED_MESSAGE = ("Way too many requests; IP(127.0.0.1) banned until {until_ms}. "
                  "Please use the websocket for live updates to avoid bans.")

# Binance answers key errors with 401, every other refusal of a request with 400.
_HTTP_401_CODES = frozenset({-2014, -2015})


class BinanceError(Exception):
    """An answer in Binance's error shape: ``{"code": code, "msg": msg}`` with an HTTP status."""

    def __init__(self, code: int, msg: str | None = None, http_status: int | None = None, **fmt: Any) -> None:
        text = msg if msg is not None else ERROR_MESSAGES.get(code, "Unknown error.")
        if fmt:
            text = text.format(**fmt)
        super().__init__(f"{code}: {text}")
        self.code = code
        self.msg = text
        self.http_status = http_status or (401 if code in _HTTP_401_CODES else 400)
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        """The JSON body Binance sends."""
        return {"code": self.code, "msg": self.msg}


def illegal_characters(name: str, legal_range: str) -> BinanceError:
    """Binance's -1100 for a parameter outside its legal range (a regex or a list of values)."""
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal_range}'.")

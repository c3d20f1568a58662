"""Fault injection: the rules that make the emulator answer badly on purpose (errors, 429s,
hangs, lost answers, partial fills) and the latency rules that hold requests back.

The kinds and their fields are listed in ``docs/emulator.md`` ("Control API").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from emulator.records import PARTIAL_REMAINDER_EXPIRES

__all__ = ["FAULT_KINDS", "MAX_FAULT_SECONDS", "FaultRule", "LatencyRule", "bounded_seconds"]

FAULT_KINDS = ("http_error", "rate_limit", "hang", "accept_then_timeout", "hold_answer", "reject", "partial_fill")
ORDER_PLACEMENT = (("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder"))
MARKET_ORDER_PLACEMENT = (("POST", "/fapi/v1/order"),)
MAX_FAULT_SECONDS = 3600.0  # bound of every configured wait (hang, drop delay, latency)


def bounded_seconds(value: Any, name: str, default: float) -> float:
    """``value`` (``default`` when None) as seconds, refused outside 0..MAX_FAULT_SECONDS."""
    seconds = default if value is None else float(value)
    if not 0 <= seconds <= MAX_FAULT_SECONDS:
        raise ValueError(f"{name} must be between 0 and {MAX_FAULT_SECONDS}, got {seconds}")
    return seconds


@dataclass
class FaultRule:
    """A fault applied to the next ``remaining`` matching requests (None: until cleared)."""

    id: int
    kind: str
    remaining: int | None = 1
    method: str | None = None
    path: str | None = None
    status: int | None = None
    code: int | None = None
    msg: str | None = None
    seconds: float | None = None
    retry_after_s: float = 1.0
    quantity: Decimal | None = None
    remainder: str = PARTIAL_REMAINDER_EXPIRES
    after_processing: bool = False

    def matches(self, method: str, path: str) -> bool:
        """True when the rule applies to this request."""
        if self.method is not None and self.method != method:
            return False
        if self.kind == "partial_fill":  # only a market order can fill in part
            return (method, path) in MARKET_ORDER_PLACEMENT
        if self.path is not None:
            return self.path == path
        if self.kind == "reject":
            return (method, path) in ORDER_PLACEMENT
        return True

    def as_dict(self) -> dict[str, Any]:
        """The rule as the control API shows it."""
        return {"id": self.id, "kind": self.kind, "count": self.remaining, "method": self.method, "path": self.path,
                "status": self.status, "code": self.code, "msg": self.msg, "seconds": self.seconds,
                "retry_after_s": self.retry_after_s,
                "quantity": str(self.quantity) if self.quantity is not None else None,
                "remainder": self.remainder, "after_processing": self.after_processing}


@dataclass(frozen=True)
class LatencyRule:
    """Matching requests wait ``seconds`` before they are processed."""

    seconds: float
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """True when the rule applies to this request."""
        return (self.method is None or self.method == method) and (self.path is None or self.path == path)

    def as_dict(self) -> dict[str, Any]:
        """The rule as the control API shows it."""
        return {"seconds": self.seconds, "method": self.method, "path": self.path}

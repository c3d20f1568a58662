"""Driving the emulator from a test or a script: the in-process control methods of
``BinanceUsdmEmulator`` and the ``/_emulator/`` JSON API that calls them.

``EmulatorControl`` is a mixin: ``BinanceUsdmEmulator`` (``emulator.binance_usdm``) owns the
state listed in its annotations. The API's routes and fields are in ``docs/emulator.md``.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from emulator.book import ExchangeBook
from emulator.errors import BinanceError
from emulator.faults import FAULT_KINDS, FaultRule, LatencyRule, bounded_seconds
from emulator.rate_limits import RateLimitConfig, RateLimiter
from emulator.records import PARTIAL_REMAINDER_EXPIRES, PARTIAL_REMAINDERS
from emulator.render import control_algo, control_order, control_position

__all__ = ["CONTROL_PREFIX", "EmulatorControl", "json_response"]

logger = logging.getLogger(__name__)

CONTROL_PREFIX = "/_emulator"

# An action of the control API: (query parameters, JSON body of a POST or {}) -> JSON-ready answer.
_Action = Callable[[Mapping[str, str], dict[str, Any]], Any]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``body`` as a JSON answer."""
    # Compact separators like Binance; no Decimal ever reaches here (money is already text).
    return web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                        content_type="application/json", headers=headers)


class EmulatorControl:
    """Control of the emulator's state: mark prices, positions, faults, latency, limits, clock."""

    # Owned by BinanceUsdmEmulator.
    book: ExchangeBook
    faults: list[FaultRule]
    latency: list[LatencyRule]
    clock_offset_ms: int
    request_log: collections.deque[dict[str, Any]]
    rejection_log: collections.deque[dict[str, Any]]
    _limiter: RateLimiter
    _fault_ids: itertools.count
    _base_url: str | None
    rate_limits: RateLimitConfig
    reset: Callable[[], None]
    server_time_ms: Callable[[], int]

    # -- in-process control --------------------------------------------------------------

    def set_mark_price(self, symbol: str, price: Decimal | str) -> list[str]:
        """Moves the mark price; returns the client ids of the stops it triggered."""
        triggered = self.book.set_mark_price(symbol, Decimal(str(price)))
        for algo in triggered:
            logger.info("stop %s triggered at %s: %s", algo.client_algo_id, price, algo.status)
        return [algo.client_algo_id for algo in triggered]

    def set_clock_offset(self, offset_ms: int) -> None:
        """Runs the server clock ``offset_ms`` away from the wall clock (timestamp checks, serverTime)."""
        self.clock_offset_ms = int(offset_ms)

    def mark_price(self, symbol: str) -> Decimal:
        """The symbol's mark price."""
        self.book.spec(symbol)
        return self.book.marks[symbol]

    def set_position(self, symbol: str, side: str, quantity: Decimal | str,
                     entry_price: Decimal | str | None = None) -> dict[str, Any]:
        """Opens, changes or (quantity 0) closes a position by hand."""
        position = self.book.set_position(symbol, side, Decimal(str(quantity)),
                                          None if entry_price is None else Decimal(str(entry_price)))
        return control_position(position, self.book.specs[symbol])

    def positions(self) -> list[dict[str, Any]]:
        """Non-flat positions."""
        return [control_position(p, self.book.specs[p.symbol]) for p in self.book.positions.values() if p.amount]

    def orders(self, symbol: str | None = None, kind: str | None = None,
               client_order_id: str | None = None) -> list[dict[str, Any]]:
        """Every order the exchange accepted (regular and algo), oldest first."""
        rows = [control_order(o, self.book.specs[o.symbol]) for o in self.book.orders]
        rows += [control_algo(a, self.book.specs[a.symbol]) for a in self.book.algos]
        rows.sort(key=lambda row: (row["time_ms"], row["kind"] == "algo"))
        return [row for row in rows
                if (symbol is None or row["symbol"] == symbol) and (kind is None or row["kind"] == kind)
                and (client_order_id is None or row["client_order_id"] == client_order_id)]

    def rejections(self) -> list[dict[str, Any]]:
        """Order placements the exchange refused."""
        return list(self.rejection_log)

    def requests(self, since: int = 0, path: str | None = None) -> list[dict[str, Any]]:
        """The exchange request log (``seq`` > ``since``), oldest first."""
        return [dict(entry) for entry in self.request_log
                if entry["seq"] > since and (path is None or entry["path"] == path)]

    def add_fault(self, kind: str, *, count: int | None = 1, method: str | None = None, path: str | None = None,
                  status: int | None = None, code: int | None = None, msg: str | None = None,
                  seconds: float | None = None, retry_after_s: float | None = None,
                  quantity: Decimal | str | None = None, remainder: str | None = None,
                  after_processing: bool = False) -> dict[str, Any]:
        """Adds a fault rule (see ``docs/emulator.md``); returns it with its id."""
        if kind == "partial_fill":
            if quantity is None or Decimal(str(quantity)) <= 0:
                raise ValueError("a partial_fill fault needs the quantity that fills, > 0")
            if remainder not in (None, *PARTIAL_REMAINDERS):
                raise ValueError(f"remainder must be one of {', '.join(PARTIAL_REMAINDERS)}, got {remainder!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"count must be a positive integer or null, got {count!r}")
        if kind == "reject" and code is None:
            raise ValueError("a reject fault needs the Binance error code to answer, e.g. -2019")
        if kind == "rate_limit" and status not in (None, 429, 418):
            raise ValueError("a rate_limit fault answers 429 or 418")
        if status is not None and not 400 <= int(status) <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status}")
        rule = FaultRule(
            id=next(self._fault_ids), kind=kind, remaining=count, method=method.upper() if method else None,
            path=path, status=int(status) if status is not None else None,
            code=int(code) if code is not None else None, msg=msg,
            seconds=bounded_seconds(seconds, "seconds", 300.0 if kind == "hang" else 0.0),
            retry_after_s=bounded_seconds(retry_after_s, "retry_after_s", 1.0),
            quantity=Decimal(str(quantity)) if quantity is not None else None,
            remainder=remainder or PARTIAL_REMAINDER_EXPIRES,
            after_processing=bool(after_processing))
        self.faults.append(rule)
        return rule.as_dict()

    def clear_faults(self) -> None:
        """Removes every pending fault rule."""
        self.faults.clear()

    def set_latency(self, seconds: float, method: str | None = None, path: str | None = None) -> list[dict]:
        """Matching requests wait ``seconds`` before processing (0 removes the rule)."""
        seconds = bounded_seconds(seconds, "seconds", 0.0)
        method = method.upper() if method else None
        self.latency = [rule for rule in self.latency if (rule.method, rule.path) != (method, path)]
        if seconds > 0:
            self.latency.append(LatencyRule(seconds, method, path))
        return [rule.as_dict() for rule in self.latency]

    def set_rate_limits(self, **changes: Any) -> dict[str, Any]:
        """Changes the published and enforced limits; returns the configuration."""
        allowed = {f.name for f in RateLimitConfig.__dataclass_fields__.values()}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown rate limit settings: {', '.join(sorted(unknown))}")
        config = replace(self.rate_limits, **changes)
        for name in ("request_weight_per_minute", "orders_per_10s", "orders_per_minute"):
            if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if not isinstance(config.enforce, bool):
            raise ValueError("enforce must be true or false")
        bounded_seconds(config.ban_seconds, "ban_seconds", 0.0)
        self._limiter.config = config
        return asdict(config)

    # -- the same over HTTP, under CONTROL_PREFIX ----------------------------------------

    def _control_actions(self) -> dict[tuple[str, str], _Action]:
        """(method, path under CONTROL_PREFIX) -> its action."""
        return {
            ("GET", "/health"): lambda query, body: {"ok": True, "base_url": self._base_url},
            ("GET", "/mark_price"): lambda query, body: {s: self.book.specs[s].price(p)
                                                         for s, p in self.book.marks.items()},
            ("POST", "/mark_price"): self._ctl_set_mark,
            ("GET", "/positions"): lambda query, body: self.positions(),
            ("POST", "/positions"): self._ctl_set_position,
            ("GET", "/orders"): lambda query, body: self.orders(query.get("symbol"), query.get("kind"),
                                                                query.get("client_order_id")),
            ("GET", "/rejections"): lambda query, body: self.rejections(),
            ("GET", "/requests"): lambda query, body: self.requests(int(query.get("since", "0")), query.get("path")),
            ("GET", "/faults"): lambda query, body: [rule.as_dict() for rule in self.faults],
            ("POST", "/faults"): self._ctl_add_fault,
            ("DELETE", "/faults"): self._ctl_clear_faults,
            ("GET", "/latency"): lambda query, body: [rule.as_dict() for rule in self.latency],
            ("POST", "/latency"): lambda query, body: self.set_latency(body["seconds"], body.get("method"),
                                                                       body.get("path")),
            ("DELETE", "/latency"): self._ctl_clear_latency,
            ("GET", "/rate_limits"): lambda query, body: asdict(self.rate_limits),
            ("POST", "/rate_limits"): lambda query, body: self.set_rate_limits(**body),
            ("POST", "/clock"): self._ctl_clock,
            ("POST", "/reset"): self._ctl_reset,
        }

    def _add_control_routes(self, app: web.Application) -> None:
        for (method, path), action in self._control_actions().items():
            handler = self._control_handler(action)
            if method == "GET":
                app.router.add_get(CONTROL_PREFIX + path, handler)  # HEAD too, as aiohttp does for GET
            else:
                app.router.add_route(method, CONTROL_PREFIX + path, handler)

    @staticmethod
    def _control_handler(action: _Action) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            try:
                body = await _json_body(request) if request.method == "POST" else {}
                result = action(request.query, body)
            except (ValueError, KeyError, TypeError, InvalidOperation, BinanceError) as error:
                message = error.msg if isinstance(error, BinanceError) else str(error)
                if isinstance(error, KeyError):
                    message = f"missing field {error}"
                return json_response({"error": message}, status=400)
            return json_response(result)
        return handle

    def _ctl_set_mark(self, query: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
        symbol = body["symbol"]
        triggered = self.set_mark_price(symbol, str(body["price"]))
        return {"symbol": symbol, "price": self.book.specs[symbol].price(self.book.marks[symbol]),
                "triggered": triggered}

    def _ctl_set_position(self, query: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
        entry = body.get("entry_price")
        return self.set_position(body["symbol"], str(body.get("side", "BUY")), str(body["quantity"]),
                                 None if entry is None else str(entry))

    def _ctl_add_fault(self, query: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
        allowed = {"kind", "count", "method", "path", "status", "code", "msg", "seconds", "retry_after_s",
                   "quantity", "remainder", "after_processing"}
        unknown = set(body) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        fields = dict(body)
        return self.add_fault(fields.pop("kind"), **fields)

    def _ctl_clear_faults(self, query: Mapping[str, str], body: dict[str, Any]) -> list:
        self.clear_faults()
        return []

    def _ctl_clear_latency(self, query: Mapping[str, str], body: dict[str, Any]) -> list:
        self.latency = []
        return []

    def _ctl_clock(self, query: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.set_clock_offset(body["offset_ms"])
        return {"offset_ms": self.clock_offset_ms, "server_time_ms": self.server_time_ms()}

    def _ctl_reset(self, query: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.reset()
        return {"ok": True}


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"the body must be a JSON object: {error}") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body

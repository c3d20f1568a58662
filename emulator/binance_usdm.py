"""A Binance USD-M futures REST emulator: the subset ccxt 4.5.90's ``binanceusdm`` calls.

It is the pipeline's exchange in paper trading (the embedded default of ``make run``) and
in tests. The real ccxt client talks to it unchanged; only the host differs
(``streams.edge.ccxt_client.create_binanceusdm``).

The manual (endpoints, semantics, authentication, rate limits, faults and the
``/_emulator/`` control API) is ``docs/emulator.md``. This module holds the server,
``BinanceUsdmEmulator``: how one exchange request is authenticated, rate-limited, faulted
and answered. The rest of the package, by job:

- ``emulator.endpoints``: the route table and one handler an endpoint;
- ``emulator.book``: positions, orders, mark prices and the rules that change them;
- ``emulator.control``: the in-process control methods and the ``/_emulator/`` API;
- ``emulator.faults``, ``emulator.rate_limits``: fault and latency rules, Binance's limits;
- ``emulator.records``, ``emulator.params``, ``emulator.render``, ``emulator.symbols``,
  ``emulator.errors``: the records, parameter parsing, wire shapes, symbols, error answers.

The names this module held before it was split are still importable from it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import itertools
import logging
import time
from collections.abc import Iterable
from decimal import Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from emulator.book import CLIENT_ID_RULES, CLIENT_ID_UNIQUE_AMONG_OPEN, CLIENT_ID_UNIQUE_FOREVER, ExchangeBook
from emulator.control import CONTROL_PREFIX, EmulatorControl, json_response
from emulator.endpoints import ROUTES, ExchangeEndpoints
from emulator.errors import BANNED_MESSAGE, ERROR_MESSAGES, BinanceError
from emulator.faults import FaultRule, LatencyRule
from emulator.rate_limits import RateLimitConfig, RateLimiter, retry_after
from emulator.records import PartialFill
from emulator.symbols import REAL_SYMBOLS, SymbolSpec, bench_symbols, default_symbols

# The names importers of this module use, defined here or in the module named beside them.
__all__ = [
    "BinanceUsdmEmulator",
    "DEFAULT_API_KEY", "DEFAULT_API_SECRET",
    "CLIENT_ID_RULES", "CLIENT_ID_UNIQUE_AMONG_OPEN", "CLIENT_ID_UNIQUE_FOREVER", "ExchangeBook",  # book
    "CONTROL_PREFIX",  # control
    "BinanceError",  # errors
    "RateLimitConfig",  # rate_limits
    "REAL_SYMBOLS", "SymbolSpec", "bench_symbols", "default_symbols",  # symbols
]

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "emulator-api-key"
DEFAULT_API_SECRET = "emulator-api-secret"

DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
MAX_AHEAD_MS = 1000  # Binance refuses a timestamp more than 1 s ahead of its clock
REQUEST_LOG_SIZE = 100_000


class _Drop(Exception):
    """The connection is closed without an answer (after ``delay_s``)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"drop after {delay_s}s")
        self.delay_s = delay_s


def _strip_signature(raw: str) -> tuple[str, str | None]:
    """``raw`` (a query string or form body) without its ``signature=`` part, and that value."""
    if not raw:
        return "", None
    kept, signature = [], None
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature="):]
        else:
            kept.append(part)
    return "&".join(kept), signature


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class BinanceUsdmEmulator(EmulatorControl, ExchangeEndpoints):
    """The emulator as an aiohttp server, started in-process or by ``python -m emulator``.

    ``await start()`` binds ``host:port`` (port 0: a free one) and returns the base URL to
    give ``create_binanceusdm``; ``await stop()`` releases hung requests and closes it. The
    ``set_*``/``add_*`` methods and ``orders()``/``positions()``/``requests()`` do what the
    control API does, for tests running in the same event loop (``emulator.control``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, symbols: Iterable[SymbolSpec] | None = None,
                 api_key: str = DEFAULT_API_KEY, api_secret: str = DEFAULT_API_SECRET,
                 rate_limits: RateLimitConfig | None = None,
                 client_id_rule: str = CLIENT_ID_UNIQUE_AMONG_OPEN) -> None:
        self.host = host
        self.port = port
        self._api_key = api_key
        self._api_secret = api_secret.encode()
        self._default_limits = rate_limits or RateLimitConfig()
        self.book = ExchangeBook(symbols if symbols is not None else default_symbols(), self.server_time_ms,
                                 client_id_rule)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._fault_ids = itertools.count(1)
        self._request_seq = itertools.count(1)
        self._release = asyncio.Event()
        self._reset_runtime()

    def __repr__(self) -> str:  # never the secret
        return f"BinanceUsdmEmulator(base_url={self._base_url!r}, symbols={len(self.book.specs)})"

    def _reset_runtime(self) -> None:
        self.clock_offset_ms = 0
        self._limiter = RateLimiter(self._default_limits)
        self.faults: list[FaultRule] = []
        self.latency: list[LatencyRule] = []
        self.request_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        self.rejection_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        # Wake everything that waits (hangs, delayed drops, latency), then start afresh.
        self._release.set()
        self._release = asyncio.Event()

    @property
    def rate_limits(self) -> RateLimitConfig:
        """The published and enforced limits (``set_rate_limits`` changes them)."""
        return self._limiter.config

    def reset(self) -> None:
        """Everything back to the state at start."""
        self.book.reset()
        self._reset_runtime()

    def server_time_ms(self) -> int:
        """The exchange's clock: the wall clock plus the configured offset."""
        return int(time.time() * 1000) + self.clock_offset_ms

    # -- lifecycle --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` once started."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not started")
        return self._base_url

    async def start(self) -> str:
        """Starts listening; returns the base URL (``http://127.0.0.1:<port>``)."""
        if self._runner is not None:
            return self.base_url
        self._release = asyncio.Event()
        app = web.Application()
        self._add_control_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._handle_exchange)
        # A short shutdown timeout: hung requests are released by stop() anyway.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        display_host = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{display_host}:{port}"
        logger.info("Binance USD-M emulator listening on %s (%d symbols)", self._base_url, len(self.book.specs))
        return self._base_url

    async def stop(self) -> None:
        """Drops hung requests and stops listening."""
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "BinanceUsdmEmulator":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- exchange requests --------------------------------------------------------------

    async def _wait(self, seconds: float) -> None:
        """Waits ``seconds``, or less when reset/stop releases every waiting request."""
        if seconds <= 0:
            return
        release = self._release
        try:
            await asyncio.wait_for(release.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    def _take_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in self.faults:
            if rule.matches(method, path):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self.faults.remove(rule)
                return rule
        return None

    def _authenticate(self, request: web.Request, raw_query: str, raw_body: str, params: dict[str, str]) -> None:
        api_key = request.headers.get("X-MBX-APIKEY")
        if not api_key:
            raise BinanceError(-2014)
        if not hmac.compare_digest(api_key.encode(), self._api_key.encode()):
            raise BinanceError(-2015)
        query, query_signature = _strip_signature(raw_query)
        body, body_signature = _strip_signature(raw_body)
        signature = query_signature or body_signature
        if not signature:
            raise BinanceError(-1102, name="signature")
        if "timestamp" not in params:
            raise BinanceError(-1102, name="timestamp")
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
        except ValueError:
            raise BinanceError(-1102, name="timestamp") from None
        if recv_window > MAX_RECV_WINDOW_MS:
            raise BinanceError(-1131)
        # Binance signs the query string and the body concatenated as sent (no separator).
        expected = hmac.new(self._api_secret, (query + body).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(-1022)
        # Binance USD-M "Timing security": "if (timestamp < (serverTime + 1000) && (serverTime -
        # timestamp) <= recvWindow) { // process request } else { // reject request }". Checked
        # when the request is processed, after any configured latency: a request held in front
        # of the exchange past its recvWindow is refused (-1021) and never carried out.
        now = self.server_time_ms()
        if timestamp > now + MAX_AHEAD_MS or now - timestamp > recv_window:
            raise BinanceError(-1021)

    async def _handle_exchange(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        raw_query = request.raw_path.partition("?")[2]
        raw_body = (await request.read()).decode("utf-8", errors="replace")
        params: dict[str, str] = dict(parse_qsl(raw_query, keep_blank_values=True))
        params.update(parse_qsl(raw_body, keep_blank_values=True))
        route = ROUTES.get((method, path))
        weight = route.weight_for(params) if route is not None else 1
        entry: dict[str, Any] = {
            "seq": next(self._request_seq), "time_ms": int(time.time() * 1000), "method": method, "path": path,
            "signed": bool(route and route.signed), "params": {k: v for k, v in params.items() if k != "signature"},
            "weight": weight, "order": bool(route and route.places_order), "status": None, "code": None,
            "fault": None, "dropped": False,
        }
        self.request_log.append(entry)
        delay = max((rule.seconds for rule in self.latency if rule.matches(method, path)), default=0.0)
        await self._wait(delay)

        headers: dict[str, str] = {}
        fault: FaultRule | None = None
        try:
            now = time.time()
            self._limiter.charge_weight(weight, now)
            fault = self._take_fault(method, path)
            if fault is not None:
                entry["fault"] = fault.kind
                response = await self._early_fault(fault, entry)
                if response is not None:
                    return response
            if route is None:
                raise BinanceError(-5000, f"Path {path}, Method {method} is invalid", http_status=404)
            if route.signed:
                self._authenticate(request, raw_query, raw_body, params)
            if route.places_order:
                self._limiter.charge_order(now)
            if fault is not None and fault.kind == "reject":
                raise BinanceError(fault.code or -1000, fault.msg, http_status=fault.status)
            if fault is not None and fault.kind == "partial_fill":
                body = self._ep_new_order(params, PartialFill(fault.quantity or Decimal(0), fault.remainder))
            else:
                body = getattr(self, route.handler)(params)
            headers = self._limiter.headers(now, route.places_order)
            if fault is not None and fault.kind == "accept_then_timeout":
                raise _Drop(fault.seconds or 0.0)
            if fault is not None and fault.kind == "http_error":  # after_processing: the work is done
                return self._http_error(fault, entry)
            if fault is not None and fault.kind == "hold_answer":
                # Binance: a timeout or 503 "means the API successfully sent the message but
                # not get a response within the timeout period ... the execution status is
                # UNKNOWN and could have been a success". The order exists; its answer is late.
                await self._wait(fault.seconds or 0.0)
            entry["status"] = 200
            return json_response(body, headers=headers)
        except BinanceError as error:
            if route is not None and route.places_order:
                self._record_rejection(path, params, error)
            if fault is not None and fault.kind == "accept_then_timeout":
                return await self._drop(request, entry, fault.seconds or 0.0)
            entry["status"], entry["code"] = error.http_status, error.code
            headers = self._limiter.headers(time.time(), bool(route and route.places_order)) | error.headers
            return json_response(error.body(), status=error.http_status, headers=headers)
        except _Drop as drop:
            return await self._drop(request, entry, drop.delay_s)

    async def _early_fault(self, fault: FaultRule, entry: dict[str, Any]) -> web.StreamResponse | None:
        """Answers the faults that act before authentication; None for the others."""
        if fault.kind == "http_error" and not fault.after_processing:
            return self._http_error(fault, entry)
        if fault.kind == "rate_limit":
            status = fault.status or 429
            entry["status"], entry["code"] = status, -1003
            limit = self.rate_limits.request_weight_per_minute
            until_ms = int((time.time() + fault.retry_after_s) * 1000)
            msg = fault.msg or (ERROR_MESSAGES[-1003].format(limit=limit) if status == 429 else
                                BANNED_MESSAGE.format(until_ms=until_ms))
            return json_response({"code": -1003, "msg": msg}, status=status,
                                 headers={"Retry-After": retry_after(fault.retry_after_s)})
        if fault.kind == "hang":
            raise _Drop(fault.seconds if fault.seconds is not None else 300.0)
        return None

    @staticmethod
    def _http_error(fault: FaultRule, entry: dict[str, Any]) -> web.Response:
        status = fault.status or 503
        entry["status"], entry["code"] = status, fault.code
        if fault.code is not None:
            error = BinanceError(fault.code, fault.msg, http_status=status)
            return json_response(error.body(), status=status)
        # A gateway in front of Binance answers 5xx with plain text, not Binance's JSON.
        return web.Response(text=fault.msg or _reason(status), status=status)

    async def _drop(self, request: web.Request, entry: dict[str, Any], delay_s: float) -> web.StreamResponse:
        """Closes the connection without an answer after ``delay_s`` (or at reset/stop)."""
        transport = request.transport
        await self._wait(delay_s)
        entry["dropped"] = True
        if transport is not None:
            transport.close()
        # aiohttp finds the transport closed and writes nothing of this response.
        return web.Response(status=204)

    def _record_rejection(self, path: str, params: dict[str, str], error: BinanceError) -> None:
        self.rejection_log.append({
            "time_ms": int(time.time() * 1000), "path": path,
            "client_order_id": params.get("newClientOrderId") or params.get("clientAlgoId"),
            "symbol": params.get("symbol"), "side": params.get("side"), "type": params.get("type"),
            "code": error.code, "msg": error.msg,
        })

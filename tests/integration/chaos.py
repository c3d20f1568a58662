"""The fault suite's parts: a private stack to break, a faulty network to the exchange, a signal feed.

``tests/integration/test_chaos.py`` runs the pipeline as deployed (three workers, the sink,
the ingest) against these and breaks everything in turn. Everything is loopback, bounded in
time and count, and stops by itself.

- ``PrivateStack``: a Kafka broker and a PostgreSQL of the test alone (``stack.localstack``
  with private paths and free ports), so restarting the broker or stopping the database
  disturbs no other test.
- ``FaultyNetwork``: an HTTP proxy in front of the exchange emulator that, at a given rate,
  answers 503 or 429, hangs past the client's timeout, or forwards the request and then drops
  the connection before the answer (the order was placed; the caller never learns it).
- ``SignalFeed``: a WebSocket server playing open/close signals for many symbols at a given
  rate, resuming where it was when the ingest reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from websockets.asyncio.server import serve

from stack import localstack


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class ChaosSize:
    """How much load and how many faults: ``FULL`` for ``make chaos``, ``REDUCED`` inside ``make test``."""

    name: str
    symbols: int
    signals: int
    signals_per_s: float
    worker_kills: int
    postgres_outage_s: float
    fault_rate: float  # share of exchange requests answered with a fault
    hang_share: float  # share of those faults that hang until the client times out (slow: 10 s each)


FULL = ChaosSize("full", symbols=100, signals=1000, signals_per_s=4.0, worker_kills=5, postgres_outage_s=30.0,
                 fault_rate=0.10, hang_share=0.05)
REDUCED = ChaosSize("reduced", symbols=30, signals=180, signals_per_s=5.0, worker_kills=3, postgres_outage_s=8.0,
                    fault_rate=0.10, hang_share=0.02)


class PrivateStack:
    """A broker and a database that only this test uses (and may stop)."""

    def __init__(self, root: Path) -> None:
        self.paths = localstack.StackPaths(root=root, cache=localstack.StackPaths.from_environment().cache)
        self.bootstrap = ""
        self.database_url = ""

    def start(self) -> "PrivateStack":
        self.paths.kafka.mkdir(parents=True, exist_ok=True)
        (self.paths.kafka / "ports.json").write_text(json.dumps({"broker": free_port(), "controller": free_port()}))
        (self.paths.root / "postgres-port.json").write_text(json.dumps({"port": free_port()}))
        self.bootstrap = localstack.ensure_kafka(self.paths)
        self.database_url = localstack.ensure_postgres(self.paths)
        return self

    def restart_kafka(self) -> None:
        localstack.stop_kafka(self.paths)
        localstack.ensure_kafka(self.paths)

    def stop_postgres(self) -> None:
        localstack.stop_postgres(self.paths)

    def start_postgres(self) -> None:
        localstack.ensure_postgres(self.paths)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            localstack.stop_kafka(self.paths)
        with contextlib.suppress(Exception):
            localstack.stop_postgres(self.paths)
        if self.paths.postgres.is_symlink():  # as root the cluster may live outside the test's folder
            shutil.rmtree(self.paths.postgres.resolve(), ignore_errors=True)


FAULTS = ("http_503", "rate_limit_429", "hang", "answer_lost")


class FaultyNetwork:
    """An HTTP proxy to ``upstream`` that injects faults into exchange requests at ``rate``."""

    def __init__(self, upstream: str, rate: float, hang_share: float, seed: int, hang_s: float = 11.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.hang_share = hang_share
        self.hang_s = hang_s
        self.random = random.Random(seed)
        self.injected: Counter = Counter()
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        # Dropping a connection on purpose makes aiohttp log a traceback per fault: not news here.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        self._session = aiohttp.ClientSession()
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(application, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _choose_fault(self, path: str) -> str | None:
        if not path.startswith("/fapi/") or self.random.random() >= self.rate:
            return None
        if self.random.random() < self.hang_share:
            return "hang"
        return self.random.choice(("http_503", "rate_limit_429", "answer_lost"))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        fault = self._choose_fault(request.path)
        if fault is not None:
            self.injected[fault] += 1
        if fault == "http_503":
            return web.Response(status=503, text="<html>503 Service Temporarily Unavailable</html>")
        if fault == "rate_limit_429":
            return web.json_response({"code": -1003, "msg": "Too many requests; please use the websocket."},
                                     status=429, headers={"Retry-After": "1"})
        if fault == "hang":
            await asyncio.sleep(self.hang_s)  # past the client's timeout: it never learns anything
            raise web.HTTPGatewayTimeout()
        assert self._session is not None
        body = await request.read()
        async with self._session.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                         headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
                                         data=body) as answer:
            payload = await answer.read()
            if fault == "answer_lost":
                # The exchange did it; the caller's connection dies before the answer.
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError("answer lost")
            return web.Response(status=answer.status, body=payload,
                                headers={"Content-Type": answer.headers.get("Content-Type", "application/json")})


@dataclass
class PlannedSignal:
    signal_id: str
    symbol: str
    action: str


@dataclass
class SignalFeed:
    """Plays open/close signals over ``symbols``, ``count`` in all, at ``per_second``."""

    symbols: list[str]
    count: int
    per_second: float
    seed: int
    plan: list[PlannedSignal] = field(default_factory=list)
    sent: int = 0
    url: str = ""
    _server: object = None
    _next: int = 0

    def __post_init__(self) -> None:
        chooser = random.Random(self.seed)
        opened: set[str] = set()
        for index in range(self.count):
            symbol = chooser.choice(self.symbols)
            # Mostly alternate open/close per symbol, with some repeats (refusals) mixed in.
            action = ("close" if symbol in opened else "open") if chooser.random() < 0.85 else \
                chooser.choice(("open", "close"))
            (opened.discard if action == "close" else opened.add)(symbol)
            self.plan.append(PlannedSignal(f"chaos-{self.seed}-{index}", symbol, action))

    async def start(self) -> str:
        port = free_port()
        self._server = await serve(self._play, "127.0.0.1", port)
        self.url = f"ws://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def finished(self) -> bool:
        return self._next >= len(self.plan)

    async def _play(self, connection) -> None:
        with contextlib.suppress(Exception):
            while self._next < len(self.plan):
                planned = self.plan[self._next]
                frame = {"id": planned.signal_id, "action": planned.action, "symbol": planned.symbol,
                         "exchange": "binance", "ts": int(time.time() * 1000)}
                if planned.action == "open":
                    frame.update(side="BUY", quantity="1", stop_loss_pct="5")
                await connection.send(json.dumps(frame))
                self._next += 1
                self.sent += 1
                await asyncio.sleep(1 / self.per_second)
            await connection.wait_closed()

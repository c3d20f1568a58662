"""One order per decision, end to end: ``make pipeline``'s processes, the real broker and
PostgreSQL, the signal ingest reading a WebSocket feed, the real ccxt client, and the Binance
USD-M emulator following Binance's documented client-id rule (a filled order's id is
accepted again).

The pipeline is ``python -m streams.supervise`` (what ``make pipeline`` runs: the stream
worker, the PostgreSQL sink and the ingest) in its own process group; killing that group
with SIGKILL is the crash the contract names. The emulator and the feed live in the test's
process, so they outlive the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from tests.integration.pipeline_harness import free_port
from tests.integration.sink_support import created_database

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
SYMBOL = "APTUSDT"


class SignalFeed:
    """The WebSocket feed the ingest connects to: sends the queued frames to each connection once."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.sent = 0
        self.connections = 0
        self._server: Server | None = None
        self.url = ""

    async def start(self) -> SignalFeed:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            while True:
                while self.sent < len(self.frames):
                    await connection.send(json.dumps(self.frames[self.sent]))
                    self.sent += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(connection.wait_closed(), 0.1)
                    return

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class SupervisedPipeline:
    """``python -m streams.supervise`` with the test's variables, as ``make pipeline`` runs it."""

    environment: dict[str, str]
    log_path: Path
    web_port: int
    process: subprocess.Popen | None = None
    runs: int = field(default=0)

    def start(self) -> None:
        self.runs += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== run {self.runs} =====\n".encode())
        self.process = subprocess.Popen([sys.executable, "-m", "streams.supervise"], cwd=REPO_ROOT,
                                        env=self.environment, stdin=subprocess.DEVNULL,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def kill_process_group(self) -> None:
        """The crash: SIGKILL to the whole process group, no chance to commit or flush."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.kill_process_group()

    def log_tail(self, characters: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""


@dataclass
class EndToEnd:
    exchange: BinanceUsdmEmulator
    feed: SignalFeed
    pipeline: SupervisedPipeline
    database_url: str

    async def row(self, symbol: str = SYMBOL) -> dict | None:
        connection = await asyncpg.connect(self.database_url)
        try:
            with contextlib.suppress(asyncpg.UndefinedTableError):
                rows = await connection.fetch("SELECT * FROM monitoring.positions WHERE symbol = $1 "
                                              "ORDER BY opened_at DESC", symbol)
                return dict(rows[0]) if rows else None
            return None
        finally:
            await connection.close()

    async def rows(self, symbol: str = SYMBOL) -> list[dict]:
        connection = await asyncpg.connect(self.database_url)
        try:
            return [dict(r) for r in await connection.fetch("SELECT * FROM monitoring.positions WHERE symbol = $1",
                                                            symbol)]
        finally:
            await connection.close()

    async def wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.25)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; pipeline log:\n"
                             f"{self.pipeline.log_tail()}")

    async def wait_ready(self, timeout_s: float = 120) -> None:
        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as session, \
                        session.get(f"http://127.0.0.1:{self.pipeline.web_port}/ready") as answer:
                    return answer.status == 200
            except aiohttp.ClientError:
                return False
        await self.wait(ready, timeout_s, "the worker to be ready")

    def open_signal(self, signal_id: str, quantity: str) -> None:
        self.feed.frames.append({"id": signal_id, "action": "open", "symbol": SYMBOL, "exchange": "binance",
                                 "side": "BUY", "quantity": quantity, "stop_loss_pct": "2.5",
                                 "ts": int(time.time() * 1000)})

    def open_stops(self) -> list[dict]:
        return [o for o in self.exchange.orders(symbol=SYMBOL, kind="algo") if o["status"] == "NEW"]


@pytest.fixture
async def end_to_end(kafka_bootstrap, database_url, unique_suffix, tmp_path) -> AsyncIterator[EndToEnd]:
    exchange = BinanceUsdmEmulator()
    base_url = await exchange.start()
    feed = await SignalFeed().start()
    async with created_database(database_url) as database:
        web_port = free_port()
        environment = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": database,
            "SIGNALS_WS_URL": feed.url,
            "BINANCE_FUTURES_URL": base_url,
            "BINANCE_API_KEY": DEFAULT_API_KEY,
            "BINANCE_API_SECRET": DEFAULT_API_SECRET,
            "SYNC_INTERVAL_S": "1",
            "WEB_PORT": str(web_port),
            "PIPELINE_APP_ID": f"e2e-{unique_suffix}",
            "PIPELINE_TOPIC_PREFIX": f"e2e-{unique_suffix}.",
            "PIPELINE_TOPIC_PARTITIONS": "3",
            "PIPELINE_DATA_DIR": str(tmp_path / "pipeline"),
            "PIPELINE_ENTRY_TIMEOUT_S": "10",
            "PIPELINE_STOP_LOSS_TIMEOUT_S": "10",
            "PIPELINE_CLOSE_TIMEOUT_S": "10",
            "PIPELINE_DEADLINE_SCAN_INTERVAL_S": "0.5",
            "PIPELINE_SESSION_TIMEOUT_S": "10",
            "PYTHONPATH": str(REPO_ROOT),
        }
        pipeline = SupervisedPipeline(environment, tmp_path / "pipeline.log", web_port)
        harness = EndToEnd(exchange, feed, pipeline, database)
        try:
            yield harness
        finally:
            pipeline.stop()
            await feed.stop()
            await exchange.stop()


def _one_order_per_client_id(orders: list[dict]) -> None:
    counts = Counter((o["kind"], o["client_order_id"]) for o in orders)
    assert all(count == 1 for count in counts.values()), counts


async def test_kill_9_while_the_entrys_answer_is_held_restart_places_one_entry_and_protects_it(end_to_end):
    # Arrange: the exchange fills the entry and holds its answer for 60 s.
    e2e = end_to_end
    e2e.exchange.add_fault("hold_answer", method="POST", path="/fapi/v1/order", seconds=60)
    e2e.pipeline.start()
    await e2e.wait_ready()
    e2e.open_signal("sig-e2e-kill", "10")
    await e2e.wait(lambda: len(e2e.exchange.orders(symbol=SYMBOL, kind="regular")) == 1, 60,
                   "the entry to be filled at the exchange")
    held = [r for r in e2e.exchange.requests(path="/fapi/v1/order") if r["method"] == "POST"]
    assert [r["status"] for r in held] == [None]  # its answer is still held

    # Act: the crash, then the same pipeline again (the exchange answers normally now).
    e2e.pipeline.kill_process_group()
    e2e.exchange.clear_faults()
    e2e.pipeline.start()
    await e2e.wait_ready()
    await e2e.wait(lambda: _row_is(e2e, "active"), 120, "the position to be active in PostgreSQL")
    await asyncio.sleep(3)  # a few more polls and deadlines: nothing else may happen

    # Assert: one entry, one client id each, the row active with the exchange's quantity,
    # one open stop covering it.
    orders = e2e.exchange.orders(symbol=SYMBOL)
    _one_order_per_client_id(orders)
    entries = [o for o in orders if o["kind"] == "regular"]
    assert len(entries) == 1 and entries[0]["status"] == "FILLED", entries
    assert [p["quantity"] for p in e2e.exchange.positions()] == ["10.0"]
    rows = await e2e.rows()
    assert len(rows) == 1
    (row,) = rows
    assert (row["status"], row["quantity"], row["side"]) == ("active", Decimal("10.0"), "BUY")
    (stop,) = e2e.open_stops()
    assert (stop["side"], stop["reduce_only"]) == ("SELL", True)
    assert Decimal(stop["quantity"]) >= Decimal("10.0")
    assert e2e.pipeline.runs == 2


async def test_active_position_grown_by_hand_from_10_to_15_ends_with_a_stop_covering_15(end_to_end):
    # Arrange
    e2e = end_to_end
    e2e.pipeline.start()
    await e2e.wait_ready()
    e2e.open_signal("sig-e2e-grow", "10")
    await e2e.wait(lambda: _row_is(e2e, "active"), 120, "the position to be active")
    (first_stop,) = e2e.open_stops()

    # Act: someone adds 5 by hand.
    e2e.exchange.set_position(SYMBOL, "BUY", "15")
    await e2e.wait(lambda: _row_is(e2e, "active", quantity=Decimal("15.0")), 60,
                   "the row to be active with 15")
    await e2e.wait(lambda: len(e2e.open_stops()) == 1 and e2e.open_stops()[0]["client_order_id"]
                   != first_stop["client_order_id"], 60, "the undersized stop to be replaced")

    # Assert: one open stop, SELL, covering 15; the old one canceled; one row.
    (stop,) = e2e.open_stops()
    assert (stop["side"], stop["reduce_only"], Decimal(stop["quantity"])) == ("SELL", True, Decimal("15.0"))
    (old,) = e2e.exchange.orders(symbol=SYMBOL, kind="algo", client_order_id=first_stop["client_order_id"])
    assert old["status"] == "CANCELED"
    _one_order_per_client_id(e2e.exchange.orders(symbol=SYMBOL))
    assert len(await e2e.rows()) == 1


async def _row_is(e2e: EndToEnd, status: str, quantity: Decimal | None = None) -> bool:
    row = await e2e.row()
    return row is not None and row["status"] == status and (quantity is None or row["quantity"] == quantity)

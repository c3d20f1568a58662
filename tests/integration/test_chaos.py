"""The fault suite: the pipeline as deployed, with every worker, the broker, the database and the exchange misbehaving.

Three workers in one group (separate processes, own data dirs), the PostgreSQL sink and the
signal ingest run on a private Kafka and PostgreSQL, trading on the Binance USD-M emulator
behind a faulty network. A signal feed plays open/close signals over many symbols, sync every
1 s, while workers are SIGKILLed (one of them while entries are in flight) and restarted, one
is stopped gracefully, the broker is restarted, PostgreSQL is stopped for a while, the network
to the exchange answers 503/429, hangs or loses answers, and positions are opened, grown and
closed by hand on the exchange. Then the faults stop, the pipeline settles, and the outcome is
printed and checked against every invariant of the contract.

``make test`` runs the reduced size; ``make chaos`` the full one (``CHAOS_SIZE=full``: 1,000
signals over 100 symbols, 5 kills, a 30 s database outage).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import asyncpg
import pytest

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from streams.wire import serde
from streams.domain import AuditDecision, AuditRecord, Position, Status
from tests.integration.chaos import FULL, REDUCED, FaultyNetwork, PrivateStack, SignalFeed
from tests.integration.pipeline_harness import (
    REPO_ROOT,
    PipelineWorker,
    UpdatesTap,
    changelog_states,
    read_topic,
    wait_until_applied,
)
from tests.integration.sinks.test_sink_pipeline import start_sink_process

pytestmark = pytest.mark.integration

PARTITIONS = 12
SIZE = FULL if os.environ.get("CHAOS_SIZE") == "full" else REDUCED


class Chaos:
    """The running deployment and the log of what was done to it."""

    def __init__(self, stack: PrivateStack, network: FaultyNetwork, exchange: BinanceUsdmEmulator, app_id: str,
                 tmp_path) -> None:
        self.stack, self.network, self.exchange, self.app_id, self.tmp_path = stack, network, exchange, app_id, tmp_path
        self.workers = [self._worker(name) for name in ("w1", "w2", "w3")]
        self.faults: Counter = Counter()
        self.sink: subprocess.Popen | None = None
        self.ingest: subprocess.Popen | None = None
        self.web_answers: Counter = Counter()
        self.web_problems: list[str] = []

    def _worker(self, name: str) -> PipelineWorker:
        return PipelineWorker(self.stack.bootstrap, self.app_id, self.tmp_path / f"data-{name}",
                              self.tmp_path / f"{name}.log", extra_env={
                                  "PIPELINE_EXCHANGE_EDGE": "on", "BINANCE_FUTURES_URL": self.network.url,
                                  "BINANCE_API_KEY": DEFAULT_API_KEY, "BINANCE_API_SECRET": DEFAULT_API_SECRET,
                                  "SYNC_INTERVAL_S": "1", "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS),
                                  "PIPELINE_ENTRY_TIMEOUT_S": "15", "PIPELINE_STOP_LOSS_TIMEOUT_S": "15",
                                  "PIPELINE_CLOSE_TIMEOUT_S": "15"})

    def start_ingest(self, feed_url: str) -> None:
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KAFKA_BOOTSTRAP_SERVERS": self.stack.bootstrap,
                       "PIPELINE_APP_ID": self.app_id, "PIPELINE_TOPIC_PREFIX": f"{self.app_id}.",
                       "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS), "SIGNALS_WS_URL": feed_url,
                       "BINANCE_FUTURES_URL": self.exchange.base_url, "PIPELINE_INGEST_MAX_BACKOFF_S": "2"}
        self.ingest = subprocess.Popen([sys.executable, "-m", "streams.ingest"], cwd=REPO_ROOT, env=environment,
                                       stdin=subprocess.DEVNULL, stdout=open(self.tmp_path / "ingest.log", "ab"),
                                       stderr=subprocess.STDOUT, start_new_session=True)

    async def watch_the_web(self, stop: asyncio.Event) -> None:
        """Asks every running worker for /positions/ all along: a 200 or a 503 naming what is missing."""
        while not stop.is_set():
            for worker in self.workers:
                if not worker.running:
                    continue
                status, body = await worker.get_json("/positions/", timeout_s=20)
                self.web_answers[status] += 1
                if status == 200:
                    keys = [p["key"] for p in body]
                    if len(keys) != len(set(keys)):
                        self.web_problems.append(f"{worker.log_path.name}: a key listed twice: {keys}")
                elif status == 503:
                    if "missing_partitions" not in body:
                        self.web_problems.append(f"{worker.log_path.name}: 503 without missing partitions: {body}")
                elif status != 0:  # 0: the process is being killed or restarted right now
                    self.web_problems.append(f"{worker.log_path.name}: HTTP {status}: {body}")
            await asyncio.sleep(0.5)

    def stop_everything(self) -> None:
        for worker in self.workers:
            worker.stop()
        for process in (self.ingest, self.sink):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()


async def in_flight(updates: UpdatesTap) -> int:
    latest: dict[str, Position] = {}
    for update in updates.decoded:
        if isinstance(update, Position):
            latest[f"{update.symbol}@{update.exchange}"] = update
    return sum(1 for p in latest.values() if p.status in (Status.PENDING_ENTRY, Status.ENTRY_PLACED))


async def run_faults(chaos: Chaos, feed: SignalFeed, updates: UpdatesTap, by_hand: list[str]) -> None:
    """The fault schedule, spread over the feed's playing time."""
    chooser = random.Random(7)
    kills_left = SIZE.worker_kills
    steps = ["kill_in_flight", "broker", "graceful", "postgres", "hand_open", "hand_grow", "hand_close"] + \
        ["kill"] * (kills_left - 1)
    chooser.shuffle(steps)
    steps.remove("kill_in_flight")
    steps.insert(0, "kill_in_flight")
    pause = max(2.0, (SIZE.signals / SIZE.signals_per_s) / (len(steps) + 1))
    for step in steps:
        await asyncio.sleep(pause)
        if step in ("kill", "kill_in_flight"):
            if step == "kill_in_flight":
                deadline = time.monotonic() + 30
                while await in_flight(updates) == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            victim = chooser.choice([w for w in chaos.workers if w.running])
            victim.kill()
            chaos.faults["worker SIGKILL" + (" (entries in flight)" if step == "kill_in_flight" else "")] += 1
            await asyncio.sleep(chooser.uniform(0, 3))
            if step == "kill" and not chaos.faults["restart on an empty data dir"]:
                victim.data_dir = victim.data_dir.with_name(victim.data_dir.name + "-new")  # a new pod, no volume
                chaos.faults["restart on an empty data dir"] += 1
            await victim.start(ready_timeout_s=120)
        elif step == "graceful":
            victim = chooser.choice([w for w in chaos.workers if w.running])
            victim.stop()
            chaos.faults["worker stopped gracefully (rebalance)"] += 1
            await victim.start(ready_timeout_s=120)
        elif step == "broker":
            await asyncio.to_thread(chaos.stack.restart_kafka)
            chaos.faults["Kafka broker restarted"] += 1
        elif step == "postgres":
            await asyncio.to_thread(chaos.stack.stop_postgres)
            await asyncio.sleep(SIZE.postgres_outage_s)
            await asyncio.to_thread(chaos.stack.start_postgres)
            chaos.faults[f"PostgreSQL stopped {SIZE.postgres_outage_s:.0f}s"] += 1
        elif step == "hand_open":
            symbol = by_hand[0]
            chaos.exchange.set_position(symbol, "BUY", Decimal("2"), chaos.exchange.mark_price(symbol))
            chaos.faults["position opened by hand"] += 1
        elif step == "hand_grow":
            held = [p for p in chaos.exchange.positions() if p["symbol"] != by_hand[0]]
            if held:
                position = chooser.choice(held)
                chaos.exchange.set_position(position["symbol"], position["side"],
                                            Decimal(position["quantity"]) + Decimal("1.5"))
                chaos.faults["position grown by hand"] += 1
        elif step == "hand_close":
            held = chaos.exchange.positions()
            if held:
                position = chooser.choice(held)
                chaos.exchange.set_position(position["symbol"], position["side"], Decimal("0"))
                chaos.faults["position closed by hand"] += 1


async def unsettled(chaos: Chaos, updates: UpdatesTap, feed: SignalFeed) -> str | None:
    """What keeps the pipeline from having settled, or None: every signal decided, nothing in
    flight, every exchange position held by an active position of its quantity."""
    decided = {u.event_id for u in updates.decoded if isinstance(u, AuditRecord) and u.input_kind.value == "signal"
               and u.decision in (AuditDecision.APPLIED, AuditDecision.REFUSED)}
    undecided = [p.signal_id for p in feed.plan if f"signal:{p.signal_id}" not in decided]
    if undecided:
        return f"{len(undecided)} signals without a decision, e.g. {undecided[:3]}"
    latest: dict[str, Position] = {}
    for update in updates.decoded:
        if isinstance(update, Position):
            latest[update.symbol] = update
    moving = {s: p.status.value for s, p in latest.items()
              if p.status not in (Status.ACTIVE, Status.CLOSED, Status.ROLLED_BACK)}
    if moving:
        return f"positions in flight: {moving}"
    held = {p["symbol"]: p for p in chaos.exchange.positions()}
    unmatched = {symbol: (held[symbol]["quantity"], latest[symbol].status.value if symbol in latest else None,
                          str(latest[symbol].quantity) if symbol in latest else None)
                 for symbol in held if symbol not in latest or latest[symbol].status != Status.ACTIVE
                 or latest[symbol].quantity != Decimal(held[symbol]["quantity"])}
    if unmatched:
        return f"exchange positions without an active position of their quantity: {unmatched}"
    return None


async def test_chaos_three_workers_kills_broker_restart_database_outage_exchange_faults_keep_every_invariant(
        tmp_path, unique_suffix):
    # Arrange: the private stack, the exchange behind a faulty network, the feed, the deployment.
    stack = await asyncio.to_thread(PrivateStack(tmp_path / "stack").start)
    exchange = BinanceUsdmEmulator()
    await exchange.start()
    network = FaultyNetwork(exchange.base_url, rate=0.0, hang_share=SIZE.hang_share, seed=11)
    await network.start()
    symbols = [f"BENCH{i}USDT" for i in range(SIZE.symbols)]
    by_hand = [f"BENCH{SIZE.symbols + 5}USDT"]
    feed = SignalFeed(symbols, SIZE.signals, SIZE.signals_per_s, seed=int(unique_suffix[:6], 16))
    chaos = Chaos(stack, network, exchange, f"chaos-{unique_suffix}", tmp_path)
    started = time.monotonic()
    stop_watching = asyncio.Event()
    watcher = None
    try:
        for worker in chaos.workers:
            await worker.start(ready_timeout_s=120)
        chaos.sink = start_sink_process(stack.bootstrap, stack.database_url, chaos.app_id, tmp_path / "sink.log",
                                        partitions=PARTITIONS)
        updates = await UpdatesTap(stack.bootstrap, chaos.workers[0].topics.updates).start()
        await feed.start()
        chaos.start_ingest(feed.url)
        watcher = asyncio.create_task(chaos.watch_the_web(stop_watching))

        # Act: faults while the feed plays; then the faults stop and the pipeline settles.
        network.rate = SIZE.fault_rate
        await run_faults(chaos, feed, updates, by_hand)
        deadline = time.monotonic() + 600
        while not feed.finished and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        network.rate = 0.0
        deadline = time.monotonic() + 240
        while (problem := await unsettled(chaos, updates, feed)) is not None:
            assert time.monotonic() < deadline, f"not settled 240 s after the faults: {problem}\n" + "\n".join(
                f"--- {w.log_path.name}\n{w.log_tail(3000)}" for w in chaos.workers)
            await asyncio.sleep(1)
        stop_watching.set()
        await watcher
        # Every worker answers every key after the rebalances.
        expected = {f"{p.symbol}@{p.exchange}": p for p in (updates.latest(f"{s}@binance") for s in symbols + by_hand)
                    if p is not None and p.status.is_live}
        for worker in chaos.workers:
            status, listing = await worker.get_json("/positions/")
            assert status == 200, (worker.log_path.name, listing)
            assert {p["key"]: p["id"] for p in listing} == {k: p.id for k, p in expected.items()}
            for key, position in list(expected.items())[:5]:
                status, body = await worker.get_json(f"/positions/{key}/")
                assert status == 200 and body["id"] == position.id, (worker.log_path.name, key, body)
    finally:
        stop_watching.set()
        if watcher is not None and not watcher.done():
            await watcher
        chaos.stop_everything()
        await feed.stop()
        await network.stop()

    try:
        # The table settles: one worker without the exchange edge applies what is left.
        drain = PipelineWorker(stack.bootstrap, chaos.app_id, tmp_path / "data-drain", tmp_path / "drain.log",
                               extra_env={"PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS)})
        await drain.start(ready_timeout_s=120)
        try:
            await wait_until_applied(stack.bootstrap, chaos.app_id, drain.topics.inputs, timeout_s=120)
        finally:
            drain.stop()
        sink = start_sink_process(stack.bootstrap, stack.database_url, chaos.app_id, tmp_path / "sink-final.log",
                                  partitions=PARTITIONS)
        try:
            table = await changelog_states(stack.bootstrap, f"{chaos.app_id}-key_to_state-changelog")
            latest_versions = {s.position.id: s.position.version for s in table.values() if s.position is not None}
            latest_statuses = {s.position.id: s.position.status.value for s in table.values() if s.position}

            async def rows_written() -> bool:
                rows = await _rows(stack.database_url)
                return all(rows.get(i, {}).get("version") == v for i, v in latest_versions.items())

            deadline = time.monotonic() + 120
            while not await rows_written():
                assert time.monotonic() < deadline, "the sink did not write the final table"
                await asyncio.sleep(0.5)
            rows = await _rows(stack.database_url)
            audit = await _audit(stack.database_url)
        finally:
            sink.terminate()
            sink.wait(60)
        inputs_log = await read_topic(stack.bootstrap, drain.topics.inputs)
        dead_letters = await read_topic(stack.bootstrap, drain.topics.dead_letters)
        await updates.stop()
    finally:
        await exchange.stop()
        await asyncio.to_thread(stack.stop)

    # Report
    inputs = [serde.decode_input(r.value) for records in inputs_log.values() for r in records]
    kinds = Counter(type(event.payload).__name__ for event in inputs)
    orders = exchange.orders()
    report = [
        f"chaos ({SIZE.name}) in {time.monotonic() - started:.0f}s: {feed.sent} signals over {len(symbols)} symbols",
        *(f"  fault: {name:<44} x{count}" for name, count in sorted(chaos.faults.items())),
        *(f"  fault: exchange {name:<35} x{count}" for name, count in sorted(network.injected.items())),
        f"  exchange requests through the faulty network: {network.requests}",
        f"  inputs processed: {sum(kinds.values())} ({dict(kinds)}); dead letters {sum(map(len, dead_letters.values()))}",
        f"  orders at the exchange: {len(orders)}; positions held: {len(exchange.positions())}",
        f"  web answers during the faults: {dict(chaos.web_answers)}",
    ]
    print("\n" + "\n".join(report))

    # Assert every invariant.
    live_rows = Counter((r["symbol"], r["exchange"]) for r in rows.values()
                        if r["status"] not in ("closed", "rolled_back"))
    assert all(count == 1 for count in live_rows.values()), live_rows
    client_ids = Counter(o["client_order_id"] for o in orders)
    assert all(count == 1 for count in client_ids.values()), {i: c for i, c in client_ids.items() if c > 1}
    for held in exchange.positions():
        assert live_rows[(held["symbol"], "binance")] == 1, ("exchange position without one live row", held)
    for row in rows.values():
        if row["status"] != "active":
            continue
        held = next((p for p in exchange.positions() if p["symbol"] == row["symbol"]), None)
        assert held is not None and Decimal(held["quantity"]) == row["quantity"], (row, held)
        stops = [o for o in orders if o["symbol"] == row["symbol"] and o["kind"] == "algo" and o["status"] == "NEW"
                 and o["side"] != held["side"]]
        assert any(o["close_position"] or Decimal(o["quantity"]) >= Decimal(held["quantity"]) for o in stops), \
            (row, stops)
    deciding = Counter(r["event_id"] for r in audit if r["kind"] == "signal" and r["decision"] in ("applied", "refused"))
    for planned in feed.plan:
        assert deciding[f"signal:{planned.signal_id}"] == 1, planned
    # monitoring.positions equals the table
    assert {i: r["version"] for i, r in rows.items() if i in latest_versions} == latest_versions
    assert {i: r["status"] for i, r in rows.items() if i in latest_statuses} == latest_statuses
    audited = {(r["key"], r["input_offset"]) for r in audit}
    logged = {(r.key.decode(), r.offset) for records in inputs_log.values() for r in records}
    assert logged - audited == set(), sorted(logged - audited)[:20]  # no input lost
    assert not chaos.web_problems, chaos.web_problems[:5]


async def _rows(database_url: str) -> dict[str, dict]:
    connection = await asyncpg.connect(database_url)
    try:
        return {r["id"]: dict(r) for r in await connection.fetch("SELECT * FROM monitoring.positions")}
    finally:
        await connection.close()


async def _audit(database_url: str) -> list[dict]:
    connection = await asyncpg.connect(database_url)
    try:
        return [dict(r) for r in await connection.fetch("SELECT * FROM monitoring.position_events")]
    finally:
        await connection.close()

"""A burst of 200 open signals on 200 symbols: how long until all 200 positions are protected.

The real worker (12 partitions, the executor's one actor per partition) and the real ccxt
client against the emulator, which enforces Binance USD-M's published rate limits (2400
weight/min, 300 orders/10 s, 1200 orders/min). Prints the time from the first signal to
the last position reaching `active` (entry filled and stop-loss placed), and how many
requests the exchange refused for rate limiting (must be 0: pacing, not retries).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaProducer

from benchmarks.harness import PARTITIONS, Worker, deployment, endpoints, read_topic
from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from streams.domain import InputEvent, Position, Side, Signal, SignalAction, Status
from streams.wire import serde

SYMBOLS = int(os.environ.get("BURST_SYMBOLS", "200"))


def open_signal(index: int, now_ms: int) -> InputEvent:
    symbol = f"BENCH{index}USDT"
    return InputEvent(event_id=f"signal:burst-{index}", key=f"{symbol}@binance", ts=now_ms,
                      payload=Signal(signal_id=f"burst-{index}", action=SignalAction.OPEN, symbol=symbol,
                                     exchange="binance", side=Side.BUY, quantity=Decimal("1"),
                                     stop_loss_pct=Decimal("2.5"), ts=now_ms))


async def active_positions(bootstrap: str, topic: str) -> int:
    """How many keys' newest position on ``topic`` (position-updates) is active."""
    newest: dict[str, Position] = {}
    for records in (await read_topic(bootstrap, topic)).values():
        for record in records:
            update = serde.decode_update(record.value)
            if isinstance(update, Position):
                newest[f"{update.symbol}@{update.exchange}"] = update
    return sum(1 for position in newest.values() if position.status is Status.ACTIVE)


async def run(bootstrap: str, database_url: str) -> None:
    exchange = BinanceUsdmEmulator()
    base_url = await exchange.start()
    async with deployment(bootstrap, database_url, "bench-burst") as deployed:
        with tempfile.TemporaryDirectory() as scratch:
            worker = Worker(deployed, Path(scratch) / "data", Path(scratch) / "worker.log", extra_env={
                "PIPELINE_EXCHANGE_EDGE": "on", "BINANCE_FUTURES_URL": base_url, "BINANCE_API_KEY": DEFAULT_API_KEY,
                "BINANCE_API_SECRET": DEFAULT_API_SECRET, "SYNC_INTERVAL_S": "30",
                # Production deadlines: shorter ones would fire while stop-losses wait,
                # correctly, for the next 10 s order window.
                "PIPELINE_ENTRY_TIMEOUT_S": "30", "PIPELINE_STOP_LOSS_TIMEOUT_S": "30",
                "PIPELINE_CLOSE_TIMEOUT_S": "30"})
            await worker.start()
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            try:
                started = time.monotonic()
                now_ms = int(time.time() * 1000)
                await asyncio.gather(*(producer.send_and_wait(deployed.topics.inputs, key=event.key.encode(),
                                                              value=serde.encode_input(event))
                                       for event in (open_signal(index, now_ms) for index in range(SYMBOLS))))
                deadline = time.monotonic() + 300
                while (active := await active_positions(bootstrap, deployed.topics.updates)) < SYMBOLS:
                    _ = worker.ready  # raises if the worker died
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{active} of {SYMBOLS} positions active after 300 s:\n{worker.log_tail()}")
                    await asyncio.sleep(1.0)
                elapsed = time.monotonic() - started
            finally:
                await producer.stop()
                worker.stop()
                await exchange.stop()
    orders = exchange.orders()
    refused = [r for r in exchange.requests() if r["status"] in (418, 429)]
    print(f"burst: {SYMBOLS} signals on {SYMBOLS} symbols -> {SYMBOLS} protected positions in {elapsed:.1f}s "
          f"(at most 1 s of polling in it; {len(orders)} orders at the exchange, {len(refused)} requests refused "
          f"for rate limits; one worker, {PARTITIONS} partitions, emulator enforcing Binance USD-M limits)")


def main() -> None:
    asyncio.run(run(*endpoints()))


if __name__ == "__main__":
    main()

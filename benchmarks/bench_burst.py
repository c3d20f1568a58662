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
import uuid
from pathlib import Path

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from stack import localstack
from streams.domain import Side, Status
from tests.integration.pipeline_harness import InputSender, PipelineWorker, UpdatesTap

SYMBOLS = int(os.environ.get("BURST_SYMBOLS", "200"))
PARTITIONS = 12


async def run(bootstrap: str) -> None:
    exchange = BinanceUsdmEmulator()
    base_url = await exchange.start()
    app_id = f"burst-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as scratch:
        worker = PipelineWorker(bootstrap, app_id, Path(scratch) / "data", Path(scratch) / "worker.log", extra_env={
            "PIPELINE_EXCHANGE_EDGE": "on", "BINANCE_FUTURES_URL": base_url, "BINANCE_API_KEY": DEFAULT_API_KEY,
            "BINANCE_API_SECRET": DEFAULT_API_SECRET, "SYNC_INTERVAL_S": "30",
            "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS),
            # Production deadlines: the harness's short test deadlines would fire while
            # stop-losses wait, correctly, for the next 10 s order window.
            "PIPELINE_ENTRY_TIMEOUT_S": "30", "PIPELINE_STOP_LOSS_TIMEOUT_S": "30", "PIPELINE_CLOSE_TIMEOUT_S": "30"})
        await worker.start()
        updates = await UpdatesTap(bootstrap, worker.topics.updates).start()
        inputs = await InputSender(bootstrap, worker.topics.inputs).start()
        keys = [f"BENCH{index}USDT@binance" for index in range(SYMBOLS)]
        try:
            started = time.monotonic()
            await asyncio.gather(*(inputs.open(f"BENCH{index}USDT", Side.BUY, "1", signal_id=f"burst-{index}")
                                   for index in range(SYMBOLS)))
            await updates.wait_for(
                lambda: all((p := updates.latest(key)) is not None and p.status == Status.ACTIVE for key in keys),
                timeout_s=300, what=f"{SYMBOLS} active positions; log:\n{worker.log_tail(2000)}")
            elapsed = time.monotonic() - started
        finally:
            await inputs.stop()
            await updates.stop()
            worker.stop()
            await exchange.stop()
    orders = exchange.orders()
    refused = [r for r in exchange.requests() if r["status"] in (418, 429)]
    print(f"burst: {SYMBOLS} signals on {SYMBOLS} symbols -> {SYMBOLS} protected positions in {elapsed:.1f}s "
          f"({len(orders)} orders at the exchange, {len(refused)} requests refused for rate limits; "
          f"one worker, {PARTITIONS} partitions, emulator enforcing Binance USD-M limits)")


def main() -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or localstack.ensure_running().kafka_bootstrap_servers
    asyncio.run(run(bootstrap))


if __name__ == "__main__":
    main()

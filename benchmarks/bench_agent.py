"""The agent's inputs per second on the real broker: a real worker, a rocksdb table.

Publishes a lifecycle stream to a fresh ``position-inputs`` first, then starts the worker
and measures from the first to the last audit record it publishes (one per input), by the
records' own Kafka timestamps, so start-up and group join are not counted. Completion is
the group's committed offsets reaching the end of the inputs (read after, never during,
the run: the measuring process takes no CPU from the measured one).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.harness import PARTITIONS, Worker, audit_stamps, deployment, endpoints, produce_all, \
    wait_until_committed
from benchmarks.lifecycle import lifecycle_inputs
from streams.wire import serde

KEYS = 200
CYCLES = 5


async def run(bootstrap: str, database_url: str) -> None:
    events = list(lifecycle_inputs(KEYS, CYCLES))
    async with deployment(bootstrap, database_url, "bench-agent") as deployed:
        await produce_all(bootstrap, deployed.topics.inputs,
                          [(event.key.encode(), serde.encode_input(event)) for event in events])
        with tempfile.TemporaryDirectory() as scratch:
            worker = Worker(deployed, Path(scratch) / "data", Path(scratch) / "worker.log")
            started = time.monotonic()
            await worker.start()
            try:
                await wait_until_committed(bootstrap, deployed.app_id, deployed.topics.inputs, timeout_s=600,
                                           alive=lambda: worker.ready)
                wall = time.monotonic() - started
            finally:
                worker.stop()
        stamps = await audit_stamps(bootstrap, deployed.topics.updates)
    span_s = (stamps[-1] - stamps[0]) / 1000
    print(f"agent: {len(stamps) / span_s:,.0f} inputs/s on the real broker "
          f"({len(stamps):,} inputs over {KEYS} keys, {PARTITIONS} partitions, one worker, rocksdb table, "
          f"outputs acknowledged before each state write; {span_s:.1f}s first-to-last audit, "
          f"{wall:.1f}s including worker start)")


def main() -> None:
    asyncio.run(run(*endpoints()))


if __name__ == "__main__":
    main()

"""The agent's inputs per second on the real broker: a real worker, a rocksdb table.

Publishes a lifecycle stream to a fresh ``position-inputs`` first, then starts the worker
and measures from the first to the last audit record it publishes (one per input), by the
records' own Kafka timestamps, so start-up and group join are not counted.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from benchmarks.lifecycle import lifecycle_inputs
from stack import localstack
from streams.wire import serde
from streams.domain import AuditRecord
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.integration.pipeline_harness import PARTITIONS, PipelineWorker, UpdatesTap

KEYS = 200
CYCLES = 5


async def run(bootstrap: str) -> None:
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    events = list(lifecycle_inputs(KEYS, CYCLES))
    with tempfile.TemporaryDirectory() as scratch:
        worker = PipelineWorker(bootstrap, app_id, Path(scratch) / "data", Path(scratch) / "worker.log")
        settings = Settings.from_env(kafka_bootstrap_servers=bootstrap, topic_prefix=f"{app_id}.",
                                     topic_partitions=PARTITIONS)
        await ensure_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            for event in events:
                await producer.send(worker.topics.inputs, key=event.key.encode(), value=serde.encode_input(event))
            await producer.flush()
        finally:
            await producer.stop()

        updates = await UpdatesTap(bootstrap, worker.topics.updates).start()
        started = time.monotonic()
        await worker.start()
        try:
            def audits() -> list:
                return [r for r in updates.records if isinstance(serde.decode_update(r.value), AuditRecord)]

            await updates.wait_for(lambda: len(audits()) >= len(events), timeout_s=600,
                                   what=f"{len(events)} audit records; log:\n{worker.log_tail(2000)}")
            wall = time.monotonic() - started
            stamps = sorted(r.timestamp for r in audits())
        finally:
            await updates.stop()
            worker.stop()
    span_s = (stamps[-1] - stamps[0]) / 1000
    print(f"agent: {len(events) / span_s:,.0f} inputs/s on the real broker "
          f"({len(events):,} inputs over {KEYS} keys, {PARTITIONS} partitions, one worker, rocksdb table, "
          f"outputs acknowledged before each state write; {span_s:.1f}s first-to-last audit, "
          f"{wall:.1f}s including worker start)")


def main() -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or localstack.ensure_running().kafka_bootstrap_servers
    asyncio.run(run(bootstrap))


if __name__ == "__main__":
    main()

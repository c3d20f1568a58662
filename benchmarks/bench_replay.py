"""Replay and decision diff: inputs per second over 200,000 recorded inputs on the real broker.

A fresh deployment's ``position-inputs`` gets 200,000 inputs of whole position lives
(``benchmarks.lifecycle``: 1,000 keys x 20 lives), then ``streams.ops.replay.replay`` rebuilds
the table from it and ``streams.ops.diff.diff_decisions`` folds it again and compares. Both run
in this process, as the commands do; the figure is inputs folded per second of wall time,
reading the topic included.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from aiokafka import AIOKafkaProducer

from benchmarks.lifecycle import lifecycle_inputs
from stack import localstack
from streams.wire import serde
from streams.ops.diff import diff_decisions
from streams.ops.replay import replay
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

KEYS = 1_000
CYCLES = 20
PARTITIONS = 12


async def run(bootstrap: str, database_url: str) -> None:
    app_id = f"bench-replay-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(kafka_bootstrap_servers=bootstrap, database_url=database_url, app_id=app_id,
                                 topic_prefix=f"{app_id}.", topic_partitions=PARTITIONS)
    await ensure_topics(settings)
    names = TopicNames.for_prefix(settings.topic_prefix)
    events = list(lifecycle_inputs(KEYS, CYCLES))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=262_144)
    await producer.start()
    try:
        for event in events:
            await producer.send(names.inputs, key=event.key.encode(), value=serde.encode_input(event))
        await producer.flush()
    finally:
        await producer.stop()

    started = time.monotonic()
    summary = await replay(settings, progress=False)
    replay_s = time.monotonic() - started
    started = time.monotonic()
    result = await diff_decisions(settings, progress=False)
    diff_s = time.monotonic() - started
    print(f"replay: {summary.inputs / replay_s:,.0f} inputs/s ({summary.inputs:,} inputs over {KEYS:,} keys, "
          f"{PARTITIONS} partitions, {summary.keys:,} keys written, {replay_s:.1f}s)")
    print(f"diff: {result.folded / diff_s:,.0f} inputs/s ({result.folded:,} inputs folded and compared, "
          f"{diff_s:.1f}s)")


def main() -> None:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if not (kafka and database):
        endpoints = localstack.ensure_running()
        kafka, database = kafka or endpoints.kafka_bootstrap_servers, database or endpoints.database_url
    asyncio.run(run(kafka, database))


if __name__ == "__main__":
    main()

"""A minimal Faust app for the foundation test: an agent that counts events per key in a Table.

Every count is also forwarded to an output topic, so the test can observe from outside the
process whether the table came back from its changelog after a restart. Configured entirely
through environment variables so the test can start it as a real `faust worker` process.
"""

from __future__ import annotations

import os

import faust

APP_ID = os.environ["COUNTING_APP_ID"]
BROKERS = [f"kafka://{server}" for server in os.environ["KAFKA_BOOTSTRAP_SERVERS"].split(",")]

app = faust.App(
    APP_ID,
    broker=BROKERS,
    store="memory://",  # memory: a restart can only get the counts back from the changelog
    datadir=os.environ["COUNTING_APP_DATADIR"],
    web_enabled=False,
    topic_partitions=3,
    processing_guarantee="at_least_once",
)

# Raw bytes in and out: the default JSON codec would crash the agent on a plain-text value.
events_topic = app.topic(f"{APP_ID}-events", key_serializer="raw", value_serializer="raw", partitions=3)
counts_topic = app.topic(f"{APP_ID}-counts-out", key_serializer="raw", value_serializer="raw", partitions=3)
event_counts = app.Table("event_counts", default=int, partitions=3)


@app.agent(events_topic, concurrency=1)
async def count_events(stream):
    """Adds one per event to the key's count and publishes the new count."""
    async for key, _value in stream.items():
        symbol_key = key.decode()
        event_counts[symbol_key] = event_counts[symbol_key] + 1  # reassigned: the changelog records it
        await counts_topic.send(key=key, value=str(event_counts[symbol_key]).encode())

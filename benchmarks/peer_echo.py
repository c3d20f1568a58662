"""The latency floor: a raw aiokafka loop that copies each input to ``position-commands`` at once.

``python -m benchmarks.peer_echo --bootstrap HOST:PORT --prefix PREFIX --group GROUP``

No decoding, no decision, no state, no waiting: each record fetched from ``position-inputs``
is sent to ``position-commands`` with its key and value as soon as ``getmany`` returns it
(acks=all, as the agent's producer; the sends are never awaited one by one, so aiokafka
batches whatever accumulates while a produce request is out), and the offsets of what was
acknowledged are committed in a task of their own. Its latency is what this machine, this broker and one Python client cost
before any work is done: the part of ``bench_latency``'s figures no agent can go below.
Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.peer_cli import peer_arguments
from streams.topics import TopicNames

#: How often the offsets are committed (they only tell ``wait_until_committed`` the run is done).
COMMIT_EVERY_S = 0.2


async def run(bootstrap: str, prefix: str, group: str) -> None:
    names = TopicNames.for_prefix(prefix)
    consumer = AIOKafkaConsumer(names.inputs, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    await consumer.start()
    await producer.start()
    sent: list[asyncio.Future] = []
    reached: dict[TopicPartition, int] = {}

    async def commit_acknowledged() -> None:
        # Off the fetch loop, so that committing never delays a copy. The same crash rule as
        # the other contenders: no offset committed before its copy is acknowledged.
        while True:
            await asyncio.sleep(COMMIT_EVERY_S)
            if not sent:
                continue
            waiting, offsets = list(sent), dict(reached)
            sent.clear()
            await asyncio.gather(*waiting)
            await consumer.commit(offsets)

    committer = asyncio.create_task(commit_acknowledged())
    try:
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=50, max_records=2000)
            for tp, records in batch.items():
                for record in records:
                    sent.append(await producer.send(names.commands, record.value, record.key))
                reached[tp] = records[-1].offset + 1
    finally:
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
        await producer.stop()
        await consumer.stop()


def main() -> None:
    arguments = peer_arguments(__doc__.splitlines()[0])
    asyncio.run(run(arguments.bootstrap, arguments.prefix, arguments.group))


if __name__ == "__main__":
    main()

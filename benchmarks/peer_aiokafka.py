"""Peer A: a raw aiokafka loop doing the agent's step, with batched acknowledgements.

``python -m benchmarks.peer_aiokafka --bootstrap HOST:PORT --prefix PREFIX --group GROUP``
(the same ``PIPELINE_*`` variables as the worker give it the same policy).

Consume a batch (``getmany``) -> per record, in offset order: ``serde.decode_input`` (the
input's time is its log time, as the agent does), ``decide`` against the key's state (a dict
of decoded ``KeyState``), the outputs encoded by the agent's own encoders
(``benchmarks.peer_step``: byte for byte ``serde.encode_command`` / ``encode_position_update``
/ ``encode_audit_update``) -> send every output of the batch, await all acknowledgements
together -> commit the batch's offsets. Same crash rule as the agent (no offset committed
before its outputs are acknowledged); no table, no changelog, no dead letters, no
metrics, no input headers: the ceiling of a hand-written loop. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.peer_cli import peer_arguments
from benchmarks.peer_step import StepEncoders
from streams.wire import serde
from streams.domain import AppliedInput, KeyState, decide
from streams.settings import Settings
from streams.topics import TopicNames


async def run(bootstrap: str, prefix: str, group: str) -> None:
    names = TopicNames.for_prefix(prefix)
    default_policy = Settings.from_env(kafka_bootstrap_servers=bootstrap).policy()
    consumer = AIOKafkaConsumer(names.inputs, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    states: dict[bytes, KeyState | None] = {}
    encode = StepEncoders()
    await consumer.start()
    await producer.start()
    try:
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            if not batch:
                continue
            sends = []
            for records in batch.values():
                for record in records:
                    event = dataclasses.replace(serde.decode_input(record.value), ts=record.timestamp)
                    decision = decide(states.get(record.key), AppliedInput(record.offset, event),
                                      event.policy or default_policy)
                    states[record.key] = decision.state
                    for command in decision.commands:
                        sends.append(await producer.send(names.commands, encode.command(command), record.key))
                    position = decision.state.position
                    if decision.position_changed and position is not None:
                        sends.append(await producer.send(
                            names.updates, encode.position_update(event.key, record.offset, position), record.key))
                    if decision.audit is not None:
                        sends.append(await producer.send(names.updates, encode.audit_update(decision.audit), record.key))
            await asyncio.gather(*sends)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    arguments = peer_arguments(__doc__.splitlines()[0])
    asyncio.run(run(arguments.bootstrap, arguments.prefix, arguments.group))


if __name__ == "__main__":
    main()

"""Peer B: quixstreams doing the agent's step with its own RocksDB state store.

``python -m benchmarks.peer_quixstreams --bootstrap HOST:PORT --prefix PREFIX --group GROUP --state-dir DIR``
(the same ``PIPELINE_*`` variables as the worker give it the same policy).

A ``StreamingDataFrame`` on ``position-inputs`` (12 partitions, at-least-once, RocksDB
state with its changelog topic, quixstreams' defaults otherwise): a stateful ``apply``
reads the key's ``KeyState`` (Avro bytes: ``codec.encode("KeyState",
serde.key_state_to_record(state))``, written by the agent's own encoder), decodes the input
(its time is its log time, as the agent does), calls ``decide``, stores the new state and
expands into the outputs, encoded as the agent encodes them (``benchmarks.peer_step``);
each output is stamped with the time it is produced (quixstreams would otherwise keep the
input's timestamp, and the benchmark measures by output timestamps) and produced to
``position-commands`` or ``position-updates`` under the input's key. Runs until SIGTERM.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from quixstreams import Application, message_context
from quixstreams.models.serializers import Serializer
from quixstreams.state.rocksdb import RocksDBOptions
from quixstreams.utils.json import dumps as json_dumps

from benchmarks.peer_cli import peer_arguments
from benchmarks.peer_step import StepEncoders
from streams.wire import codec, serde
from streams.domain import AppliedInput, decide
from streams.settings import Settings
from streams.topics import TopicNames

COMMAND, UPDATE = 0, 1


class OutputBytes(Serializer):
    """Writes the bytes of an ``(output kind, bytes)`` pair."""

    def __call__(self, value, ctx) -> bytes:
        return value[1]


def _bytes_or_json(value) -> bytes:
    return value if isinstance(value, bytes) else json_dumps(value)


def build(bootstrap: str, prefix: str, group: str, state_dir: str) -> Application:
    names = TopicNames.for_prefix(prefix)
    default_policy = Settings.from_env(kafka_bootstrap_servers=bootstrap).policy()
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      processing_guarantee="at-least-once", state_dir=state_dir, loglevel=logging.WARNING,
                      # The state values are Avro bytes already: stored as they are (keys as quixstreams does).
                      rocksdb_options=RocksDBOptions(dumps=_bytes_or_json, loads=lambda value: value))
    inputs = app.topic(names.inputs, key_deserializer="bytes", value_deserializer="bytes")
    encode = StepEncoders()
    outputs = {kind: app.topic(name, key_serializer="bytes", value_serializer=OutputBytes())
               for kind, name in ((COMMAND, names.commands), (UPDATE, names.updates))}

    def step(value: bytes, key: bytes, timestamp: int, _headers, state) -> list[tuple[int, bytes]]:
        stored = state.get("state")
        current = serde.key_state_from_record(codec.decode("KeyState", stored)) if stored is not None else None
        offset = message_context().offset
        event = dataclasses.replace(serde.decode_input(value), ts=timestamp)
        decision = decide(current, AppliedInput(offset, event), event.policy or default_policy)
        if decision.state is not current:
            state.set("state", encode.state(decision.state))
        encoded = [(COMMAND, encode.command(command)) for command in decision.commands]
        position = decision.state.position
        if decision.position_changed and position is not None:
            encoded.append((UPDATE, encode.position_update(event.key, offset, position)))
        if decision.audit is not None:
            encoded.append((UPDATE, encode.audit_update(decision.audit)))
        return encoded

    sdf = app.dataframe(inputs)
    sdf = sdf.apply(step, stateful=True, expand=True, metadata=True)
    sdf = sdf.set_timestamp(lambda _value, _key, _timestamp, _headers: int(time.time() * 1000))
    sdf.to_topic(lambda value, _key, _timestamp, _headers: outputs[value[0]])
    return app


def main() -> None:
    arguments = peer_arguments(__doc__.splitlines()[0], "--state-dir")
    build(arguments.bootstrap, arguments.prefix, arguments.group, arguments.state_dir).run()


if __name__ == "__main__":
    main()

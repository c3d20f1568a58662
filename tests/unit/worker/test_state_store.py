"""The agent's state writes: the table's own store and changelog bytes, each key once, nothing lost.

``StateStore`` writes ``key_to_state`` beside Faust's per-key path; these tests hold it to
what that path wrote (the ``avro-key-state`` bytes the changelog topic's recovery decodes,
the input's partition) on a real Faust table with the memory store. The RocksDB store, the
real producer and recovery from the changelog are exercised by the worker's integration
tests (restarts, a replacement on an empty data dir, standbys).
"""

from __future__ import annotations

import asyncio
import dataclasses

from streams.domain import KeyState
from streams.settings import Settings
from streams.wire import codec, serde
from streams.worker.app import build_pipeline
from streams.worker.processor import StateWrite
from streams.worker.state_store import StateStore


class RecordedProducer:
    """Takes changelog records, one batch (and acknowledgement) per call and partition, resolved by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.acknowledgements: list[asyncio.Future] = []

    async def send_all(self, outputs) -> list[asyncio.Future]:
        batches: dict[int, asyncio.Future] = {}
        for output in outputs:
            self.sent.append((output.topic, output.key, output.value, output.partition))
            if output.partition not in batches:
                batches[output.partition] = asyncio.get_running_loop().create_future()
                self.acknowledgements.append(batches[output.partition])
        return [batches[output.partition] for output in outputs]


def built(tmp_path):
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATABASE_URL": "postgresql://u@h:1/d"},
                                 table_store="memory://", data_dir=tmp_path, app_id="state-store-unit")
    return build_pipeline(settings)


def state(key: str, last_offset: int) -> KeyState:
    return dataclasses.replace(KeyState.initial(key), last_offset=last_offset)


async def test_a_batch_is_stored_and_its_changelog_records_are_what_recovery_decodes(tmp_path):
    # Arrange
    pipeline = built(tmp_path)
    table = pipeline.key_to_state
    producer = RecordedProducer()
    noted: list[KeyState] = []
    states = StateStore(table, producer.send_all, noted.append)
    first, second = state("APTUSDT@binance", 3), state("BTCUSDT@binance", 7)

    # Act
    await states.write([StateWrite(b"APTUSDT@binance", 4, first), StateWrite(b"BTCUSDT@binance", 9, second)])

    # Assert: the changelog gets each state once, in its input's partition, as the table's codec writes it.
    changelog = table.changelog_topic.get_topic_name()
    assert [(topic, key, partition) for topic, key, _value, partition in producer.sent] == [
        (changelog, b"APTUSDT@binance", 4), (changelog, b"BTCUSDT@binance", 9)]
    recovered = [serde.key_state_from_record(pipeline.app.serializers.loads_value(
        None, value, serializer=table.changelog_topic.schema.value_serializer)) for *_head, value, _partition in
        producer.sent]
    assert recovered == [first, second]
    assert states.load(b"APTUSDT@binance", 4) == first
    assert states.load(b"BTCUSDT@binance", 9) == second
    assert states.load(b"ETHUSDT@binance", 4) is None
    assert noted == [first, second]


async def test_a_changelog_record_kafka_refused_is_sent_again_with_the_next_batch_as_the_newest_value(tmp_path):
    # Arrange: the first value of a key is refused after a newer value of the key was stored.
    table = built(tmp_path).key_to_state
    producer = RecordedProducer()
    states = StateStore(table, producer.send_all, lambda noted_state: None)
    await states.write([StateWrite(b"APTUSDT@binance", 2, state("APTUSDT@binance", 1))])
    await states.write([StateWrite(b"APTUSDT@binance", 2, state("APTUSDT@binance", 5))])
    producer.acknowledgements[0].set_exception(RuntimeError("broker unreachable"))
    await asyncio.sleep(0)  # the callback runs

    # Act: the next batch is another key's.
    await states.write([StateWrite(b"BTCUSDT@binance", 0, state("BTCUSDT@binance", 6))])

    # Assert: the refused key is sent again with the value stored now (never the older one).
    resent = [(key, partition, serde.key_state_from_record(codec.decode(serde.KEY_STATE_RECORD, value)))
              for _topic, key, value, partition in producer.sent[2:]]
    assert resent == [(b"APTUSDT@binance", 2, state("APTUSDT@binance", 5)),
                      (b"BTCUSDT@binance", 0, state("BTCUSDT@binance", 6))]


async def test_a_refused_record_whose_key_the_next_batch_writes_again_is_not_sent_twice(tmp_path):
    # Arrange
    table = built(tmp_path).key_to_state
    producer = RecordedProducer()
    states = StateStore(table, producer.send_all, lambda noted_state: None)
    await states.write([StateWrite(b"APTUSDT@binance", 2, state("APTUSDT@binance", 1))])
    producer.acknowledgements[0].set_exception(RuntimeError("broker unreachable"))
    await asyncio.sleep(0)

    # Act
    await states.write([StateWrite(b"APTUSDT@binance", 2, state("APTUSDT@binance", 8))])

    # Assert
    assert [codec.decode(serde.KEY_STATE_RECORD, value)["last_offset"]
            for *_head, value, _partition in producer.sent] == [1, 8]


async def test_a_large_batch_is_written_in_chunks_and_the_loop_runs_between_them(tmp_path):
    # Arrange: more states than one chunk, and a task that counts the turns of the loop it gets.
    from streams.worker.state_store import WRITE_CHUNK

    table = built(tmp_path).key_to_state
    producer = RecordedProducer()
    states = StateStore(table, producer.send_all, lambda noted_state: None)
    writes = [StateWrite(f"K{index}USDT@binance".encode(), index % 12, state(f"K{index}USDT@binance", index))
              for index in range(2 * WRITE_CHUNK + 1)]
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    turns = 0

    # Act
    await states.write(writes)
    counter.cancel()

    # Assert: every state stored and sent once, in order; the loop ran between the three chunks.
    assert [key for _topic, key, _value, _partition in producer.sent] == [write.key for write in writes]
    assert all(states.load(write.key, write.partition) == write.state for write in writes)
    assert turns >= 2

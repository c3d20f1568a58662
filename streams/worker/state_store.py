"""Reads and writes the agent's states in the ``key_to_state`` table's store: writes a batch at a time.

Faust writes a table key by key: each write goes through the table's ``on_key_set`` (a
``FutureMessage`` buffered by ``send_soon`` and a task that sends it, callbacks, sensors),
the store under the current event's partition, and a RocksDB write of the changelog offset
per record acknowledged. Profiled, that was an eighth of the agent's time. ``StateStore``
writes what Faust would, byte for byte and to the same places, in batches:

- the changelog records (raw key, the ``avro-key-state`` value bytes) through the app's own
  producer, one record batch per partition (``streams.worker.batch_send``), each to the
  partition of the input that decided it, as Faust's ``eager_partitioning`` does; Faust flushes that producer before every offset commit, so no input offset is
  committed before its state's changelog record is on its way, as before;
- the local store: one RocksDB ``WriteBatch`` per partition (the deployed store), or the
  memory store's dict;
- the changelog offset Faust recovers from (``set_persisted_offset``): the highest
  acknowledged offset per partition, written by ``persist_offsets`` (the worker calls it
  every second and before its partitions are revoked; each is a RocksDB write of its own),
  never below the offset stored already. It may lag the store (a restart then reads a few
  changelog records again, which rewrites the same values) but never runs ahead of it: a
  record is stored locally before it is sent.

It reads a key from the store of its input's partition, where it writes it (Faust's table
reads the partition of the task's current event, which is one of many in a run).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from faust.types import TP

from streams.domain import KeyState
from streams.telemetry import metrics
from streams.wire import codec, serde
from streams.wire.key_state_bytes import KeyStateEncoder, PositionBytes
from streams.worker.processor import Output, SendAll, StateWrite

logger = logging.getLogger(__name__)

#: States encoded and written between two turns of the event loop.
WRITE_CHUNK = 250


class StateStore:
    """Reads key states from the table's local store; writes batches of them to it and its changelog.

    ``noted(state)`` sees each written ``KeyState`` (the deadline index keeps its deadlines
    from it). The values are encoded by ``streams.wire.key_state_bytes.KeyStateEncoder`` (only the fields that
    changed since the key's last state), the positions by ``positions`` when given (the ones
    the position updates were written with are not encoded again).
    """

    def __init__(self, table: Any, send_all: SendAll, noted: Callable[[KeyState], None],
                 positions: PositionBytes | None = None) -> None:
        self._table = table
        self._send_all = send_all
        self._noted = noted
        self._encoder = KeyStateEncoder(positions=positions)
        self._changelog = table.changelog_topic.get_topic_name()
        self._acknowledged: dict[int, int] = {}
        #: key -> partition of changelog records Kafka did not acknowledge.
        self._unsent: dict[bytes, int] = {}

    def load(self, key: bytes, partition: int) -> KeyState | None:
        """The state stored for ``key`` in ``partition``'s store, or None."""
        store = self._table.data
        if _is_rocksdb(store):
            value = store._db_for_partition(partition).get(key)
            record = codec.decode(serde.KEY_STATE_RECORD, value) if value is not None else None
        else:
            record = store.data.get(key)
        return serde.key_state_from_record(record) if record is not None else None

    async def write(self, writes: Iterable[StateWrite]) -> None:
        """Stores each state locally and hands its changelog record to the producer (not awaiting Kafka).

        In chunks of ``WRITE_CHUNK`` states, yielding to the event loop between two: the
        completer stores the runs of up to half a second together (streams.worker.in_flight),
        and thousands of states encoded and written in one go would hold the agent's next
        decisions back by tens of milliseconds.
        """
        writes = list(writes)
        for start in range(0, len(writes), WRITE_CHUNK):
            if start:
                await asyncio.sleep(0)
            await self._write_chunk(writes[start:start + WRITE_CHUNK])

    async def _write_chunk(self, writes: list[StateWrite]) -> None:
        encoded: list[tuple[bytes, int, bytes, KeyState]] = []
        for write in writes:
            encoded.append((write.key, write.partition, self._encoder.encode(write.state), write.state))
            self._unsent.pop(write.key, None)  # this batch sends the key's newest value
        self._store_locally(encoded)
        for _key, _partition, _value, state in encoded:
            self._noted(state)
        records = [Output(self._changelog, key, value, [], partition) for key, partition, value, _state in encoded]
        if self._unsent:
            unsent, self._unsent = self._unsent, {}
            records[:0] = [Output(self._changelog, key, self._stored_value(key, partition), [], partition)
                           for key, partition in unsent.items()]
        await self._send_changelog(records)

    async def _send_changelog(self, records: list[Output]) -> None:
        if not records:
            return
        try:
            acknowledgements = await self._send_all(records)
        except Exception as error:  # noqa: BLE001 - the producer refused them: sent again with the next batch
            logger.error("%d changelog records not handed to the producer (%s); sending them again with the next "
                         "batch", len(records), error)
            self._refused(records)
            return
        # The records of one batch (one partition) share its acknowledgement: the batch's first offset.
        batches: dict[int, tuple[Any, list[Output]]] = {}
        for record, acknowledgement in zip(records, acknowledgements):
            batches.setdefault(id(acknowledgement), (acknowledgement, []))[1].append(record)
        for acknowledgement, in_batch in batches.values():
            acknowledgement.add_done_callback(lambda done, in_batch=in_batch: self._on_sent(done, in_batch))

    def _on_sent(self, done: Any, records: list[Output]) -> None:
        if done.cancelled() or done.exception() is not None:
            # The local store has the values and their inputs may be committed: the changelog
            # (standbys, the next owner) must get them too. Each key's value then stored is
            # sent with the next batch (an older one sent late would overwrite a newer one).
            logger.error("%d changelog records not acknowledged (%s); sending those keys again with the next batch",
                         len(records), "cancelled" if done.cancelled() else done.exception())
            self._refused(records)
            return
        partition, last_offset = records[0].partition, done.result().offset + len(records) - 1
        if last_offset > self._acknowledged.get(partition, -1):
            self._acknowledged[partition] = last_offset

    def _refused(self, records: list[Output]) -> None:
        for record in records:
            metrics.observe_changelog_resend()
            self._unsent[record.key] = record.partition

    def _stored_value(self, key: bytes, partition: int) -> bytes:
        store = self._table.data
        if _is_rocksdb(store):
            return store._db_for_partition(partition).get(key)
        return codec.encode(serde.KEY_STATE_RECORD, store[key])

    def _store_locally(self, encoded: list[tuple[bytes, int, bytes, KeyState]]) -> None:
        store = self._table.data
        if _is_rocksdb(store):
            import rocksdict

            batches: dict[int, Any] = {}
            key_index = store._key_index  # where Faust's reads look a key up first
            for key, partition, value, _state in encoded:
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
                batch.put(key, value)
                key_index[key] = partition
            for partition, batch in batches.items():
                store._db_for_partition(partition).write(batch)
        else:
            # The memory store keeps decoded values, as Faust's own table write leaves them.
            for key, _partition, _value, state in encoded:
                store[key] = serde.key_state_to_record(state)

    def persist_offsets(self) -> None:
        """Writes the highest changelog offset Kafka acknowledged per partition, where Faust's recovery starts."""
        if not self._acknowledged:
            return
        acknowledged, self._acknowledged = self._acknowledged, {}
        store = self._table.data
        for partition, offset in acknowledged.items():
            tp = TP(self._changelog, partition)
            # Only ever forward: the partition may have become a standby here meanwhile, its
            # store (and offset) moved on by the changelog records its new owner wrote.
            persisted = store.persisted_offset(tp)
            if persisted is None or offset > persisted:
                store.set_persisted_offset(tp, offset)


def _is_rocksdb(store: Any) -> bool:
    """True for faust-streaming 0.15.3's rocksdb store (pinned) over rocksdict; False for the memory store."""
    if not hasattr(store, "_db_for_partition"):
        return False
    if not store.use_rocksdict:
        raise RuntimeError("the rocksdb store needs rocksdict (python-rocksdb is not supported)")
    return True


__all__ = ["StateStore"]

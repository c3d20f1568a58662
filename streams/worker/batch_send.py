"""Hands a run's outputs to Kafka as one record batch per topic partition.

aiokafka's ``send`` costs a coroutine, a metadata wait, a partitioner call (a list of the
topic's partitions built every time) and a future per record; the agent sends about three
records per input, and profiled, the producer's per-record path was a fifth of the worker's
time. aiokafka's documented ``create_batch`` / ``send_batch`` build the records of one topic
partition into one batch (the records appended in C) with one future for the batch. The
batch goes through the same producer: acks=all, idempotence (its sequence number is set
when the sender drains it), retries, and Faust's flush before an offset commit. Each batch
is closed before it is handed over: aiokafka lets an open batch linger (``linger_ms``, 5 ms
here) for records ``send`` might still add, and queues the partition's next batch only once
that one is drained, so every decision waited out the linger (p50 8 ms at 100 opens/s, 3 ms
closed; 2026-12-02). Runs grow from the backlog instead (streams.worker.gathered_run).
Short runs go as batches too: sending a partition's records one by one into the producer's
open batch when a run has fewer than 8 of them (tried) halved the end-to-end rate, 850
against 1,400-2,000 inputs/s (27,000 lifecycle inputs, 2026-12-02).

Each key goes to the partition the default partitioner gives it (murmur2 of the raw key
bytes, as the Java client), the partition ``send`` would have chosen, unless the output
names its partition (a table's changelog record goes to its input's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from streams.worker.processor import Output

#: Distinct (topic, key) partitions remembered (cleared past this; a key is one symbol).
KNOWN_PARTITIONS = 100_000


class BatchSender:
    """Sends outputs as record batches per topic partition through an aiokafka producer.

    ``producer()`` gives the started ``AIOKafkaProducer`` (the worker's is created when Faust starts).
    """

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._get_producer = producer
        self._partitions: dict[tuple[str, bytes], int] = {}

    async def send_all(self, outputs: Sequence[Output]) -> list[Any]:
        """Hands ``outputs`` to the producer; one acknowledgement (its batch's future) per output, in order.

        A batch the producer refused gets an acknowledgement that fails with the error, so
        only its outputs are sent again; the other batches are on their way.
        """
        producer = self._get_producer()
        by_partition: dict[tuple[str, int], list[int]] = {}
        for index, output in enumerate(outputs):
            partition = output.partition
            if partition is None:
                partition = await self._partition(producer, output.topic, output.key)
            by_partition.setdefault((output.topic, partition), []).append(index)
        acknowledgements: list[Any] = [None] * len(outputs)
        for (topic, partition), indexes in by_partition.items():
            batch, in_batch = producer.create_batch(), []
            for index in indexes:
                output = outputs[index]
                # A batch takes its first record whatever its size; past that, a full one is sent.
                if in_batch and batch.append(key=output.key, value=output.value, timestamp=None,
                                             headers=output.headers) is not None:
                    in_batch.append(index)
                    continue
                if in_batch:
                    await self._send(producer, batch, topic, partition, in_batch, acknowledgements)
                    batch, in_batch = producer.create_batch(), []
                batch.append(key=output.key, value=output.value, timestamp=None, headers=output.headers)
                in_batch.append(index)
            await self._send(producer, batch, topic, partition, in_batch, acknowledgements)
        return acknowledgements

    async def _send(self, producer: Any, batch: Any, topic: str, partition: int, indexes: list[int],
                    acknowledgements: list[Any]) -> None:
        # Complete: sent as soon as the sender runs (aiokafka: "For complete control over the
        # batch's contents, close before submission"; a closed batch does not linger).
        batch.close()
        try:
            acknowledgement = await producer.send_batch(batch, topic, partition=partition)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - refused: these outputs are sent again, the others not
            acknowledgement = asyncio.get_running_loop().create_future()
            acknowledgement.set_exception(error)
        for index in indexes:
            acknowledgements[index] = acknowledgement

    async def _partition(self, producer: Any, topic: str, key: bytes) -> int:
        known = self._partitions.get((topic, key))
        if known is not None:
            return known
        partitions = sorted(await producer.partitions_for(topic))
        partition = DefaultPartitioner()(key, partitions, partitions)
        if len(self._partitions) >= KNOWN_PARTITIONS:
            self._partitions.clear()
        self._partitions[(topic, key)] = partition
        return partition


__all__ = ["BatchSender"]

"""The sink's decoding, in processes of its own: its event loop fetches and writes meanwhile.

Reading a batch's records into rows is pure Python work (``sinks.batch_decode``), and the
sink's one thread also fetches from Kafka and encodes what PostgreSQL receives: measured on
2 cores, decoding was 56% of the sink's busy time while the machine stayed about half idle.
Here ``decode_batch`` runs in worker processes (``concurrent.futures``, started by *spawn*:
nothing of the sink's sockets or threads is copied into them), so PostgreSQL writes one
batch while the sink fetches the next and a process decodes the one fetched before; the sink
keeps ``batches_in_flight`` batches handed over, so a process never waits for the fetch
(one batch at a time there: 25-32k records/s, three stages at once: 38-52k, alternating
runs of 150,000 records, 2026-12-03). With several, a batch is split by partition
(``split_by_partition``: a position id lives in one partition) and the parts are decoded side
by side, then put together (``combine``) into one part per sink writer (``writers``: writer w
the partitions p with p % writers == w). Records go over as bytes, rows come back as plain
values, the audit rows as one block of binary COPY bytes.

A decode process that dies (killed, out of memory) costs no record: the batch it held is
decoded in the sink's own thread, new processes take the next one, and it is logged. A
decode process whose sink is gone (killed by -9) ends within a second (``exit_with_parent``).
``PIPELINE_SINK_DECODE_PROCESSES=0`` decodes in the sink's thread throughout.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from sinks.batch_decode import DecodedRows, combine, decode_batch, split_by_partition, warm_up

__all__ = ["BatchDecoding", "exit_with_parent"]

#: How often a decode process looks whether the sink's process is still its parent.
PARENT_CHECK_S = 1.0

logger = logging.getLogger(__name__)


def exit_with_parent(parent_pid: int) -> None:
    """A decode process's initializer: the process ends once the sink's is gone, even killed by -9.

    Its pool would never tell it (each process holds both ends of the task queue's pipe), so a
    killed sink would leave it waiting forever.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="decode-process.exit-with-sink", daemon=True).start()


class BatchDecoding:
    """``await decode(values, partitions)``: ``decode_batch`` in ``processes`` decode processes, or in this thread (0).

    The rows come back in ``writers`` parts, writer w's the records of the partitions p with
    p % writers == w, for the sink's connections to write side by side.
    """

    def __init__(self, *, processes: int, writers: int = 1) -> None:
        self.processes = processes
        self.writers = writers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def batches_in_flight(self) -> int:
        """Batches the sink hands over before the first comes back: one per decode process and one
        waiting, so a process takes its next batch as soon as it is done (1 in the thread)."""
        return self.processes + 1 if self._pool is not None else 1

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=exit_with_parent, initargs=(os.getpid(),))

    async def start(self) -> None:
        """Starts the decode processes and builds their readers (so the first batch does not wait for them)."""
        if self.processes < 1 or self._pool is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._pool = self._new_pool()
            await asyncio.gather(*(loop.run_in_executor(self._pool, warm_up, self.processes)
                                   for _ in range(self.processes)))
        except (OSError, BrokenProcessPool) as error:
            # No processes here (no /dev/shm for their queues, a process limit): slower, never wrong.
            logger.warning("the sink cannot start its decode processes (%s: %s); it decodes in its own thread",
                           type(error).__name__, error)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    async def decode(self, values: list[bytes | None], partitions: list[int]) -> list[DecodedRows]:
        """The batch's rows (``sinks.batch_decode.decode_batch``), one ``DecodedRows`` per writer
        (indices the batch's)."""
        if self._pool is None:
            return self._decode_here(values, partitions)
        loop = asyncio.get_running_loop()
        try:
            if self.processes == 1 and self.writers == 1:  # the batch as it is
                return [await loop.run_in_executor(self._pool, decode_batch, values, partitions)]
            # A writer's part in as many groups as it takes to keep every process busy.
            groups = split_by_partition(partitions, self.writers * -(-self.processes // self.writers))
            parts = await asyncio.gather(*(
                loop.run_in_executor(self._pool, decode_batch, [values[index] for index in group],
                                     [partitions[index] for index in group])
                if group else _decoded_nothing()
                for group in groups))
        except BrokenProcessPool as error:
            logger.error("a decode process of the sink died (%s); this batch is decoded in the sink's thread, "
                         "new processes take the next one", error)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._decode_here(values, partitions)
        return self._per_writer(list(parts), groups)

    def _decode_here(self, values: list[bytes | None], partitions: list[int]) -> list[DecodedRows]:
        if self.writers == 1:
            return [decode_batch(values, partitions)]
        groups = split_by_partition(partitions, self.writers)
        return self._per_writer([decode_batch([values[index] for index in group],
                                              [partitions[index] for index in group]) for group in groups], groups)

    def _per_writer(self, parts: list[DecodedRows], groups: list[list[int]]) -> list[DecodedRows]:
        # Group g belongs to writer g % writers: the groups are a multiple of the writers.
        return [combine(parts[writer::self.writers], groups[writer::self.writers]) for writer in range(self.writers)]

    def close(self) -> None:
        """Ends the decode processes (a batch they still hold is dropped: its offsets were never committed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


async def _decoded_nothing() -> DecodedRows:
    return decode_batch([], [])

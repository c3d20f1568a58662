"""The sink's counters and positions, summed up in its periodic health log line."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["SinkStats"]


@dataclass
class SinkStats:
    """Counters and positions of the sink, for logs now and metrics later.

    Partition numbers are those of ``position-updates`` (co-partitioned with
    ``position-inputs``, so a version, the input offset, belongs to the same partition).
    """

    records_written: int = 0  # update records whose batch is durable (offsets then committed)
    positions_upserted: int = 0  # position rows inserted or replaced by a newer version
    events_inserted: int = 0  # audit rows new to the table
    batches: int = 0
    retries: int = 0  # failed attempts to reach or write PostgreSQL
    reconnects: int = 0  # successful connections after a failure, or after one was lost while idle
    undecodable: int = 0  # update records that could not be decoded (sent to dead letters)
    refused: int = 0  # position rows the one-live-position index refused (sent to dead letters)
    commit_failures: int = 0  # Kafka offset commits that failed (rows were written: replay only)
    last_offsets: dict[int, int] = field(default_factory=dict)  # partition -> last written update offset
    last_versions: dict[int, int] = field(default_factory=dict)  # partition -> newest input offset written
    lag: dict[int, int] = field(default_factory=dict)  # partition -> update records not yet written
    batches_in_hand: int = 0  # batches fetched and not yet written: decoding, waiting, or being written
    last_batch_s: float = 0.0  # duration of the last transaction, retries included
    waiting_since: float | None = None  # monotonic time PostgreSQL became unreachable, if it is

    @property
    def total_lag(self) -> int:
        """Update records on the assigned partitions not yet written."""
        return sum(self.lag.values())

    def summary(self) -> str:
        """One log line: what was written, how far behind, how many retries."""
        waiting = "" if self.waiting_since is None else \
            f", WAITING for PostgreSQL for {time.monotonic() - self.waiting_since:.0f}s"
        return (
            f"{self.records_written} records written in {self.batches} batches "
            f"({self.positions_upserted} position upserts, {self.events_inserted} audit rows), "
            f"lag {self.total_lag} {_by_partition(self.lag)}, last offsets {_by_partition(self.last_offsets)}, "
            f"last versions {_by_partition(self.last_versions)}, retries {self.retries}, "
            f"reconnects {self.reconnects}, batches in hand {self.batches_in_hand}, "
            f"undecodable {self.undecodable}, refused {self.refused}{waiting}"
        )


def _by_partition(values: dict[int, int]) -> str:
    return "{" + ", ".join(f"p{partition}={value}" for partition, value in sorted(values.items())) + "}"

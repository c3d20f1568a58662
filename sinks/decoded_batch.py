"""A fetched batch of update records read into rows, as the sink's writers take it (pure, no I/O).

The decoding (``sinks.decode_process``) gives one ``DecodedRows`` per writer, each the rows
of the partitions that writer's connection writes. ``decoded_batch`` puts them beside what
the sink must know of the records themselves: the offsets that move once every writer's
transaction has committed, the records to dead-letter, and the record each position row was
read from (a row PostgreSQL refuses is dead-lettered with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sinks.batch_decode import DecodedRows
from sinks.rows import BatchRows

__all__ = ["DecodedBatch", "decoded_batch"]


@dataclass
class DecodedBatch:
    """A batch of update records read into rows, and what its write must know of them."""

    started: float
    records: int
    #: One part per writer, in writer order (an empty part: that writer has nothing to write).
    writer_rows: list[BatchRows] = field(default_factory=list)
    undecodable: list = field(default_factory=list)  # (record, error type name, message)
    position_records: dict = field(default_factory=dict)  # position id -> the record of its newest version
    newest: dict = field(default_factory=dict)  # partition -> its highest offset in the batch
    versions: dict = field(default_factory=dict)  # partition -> its highest version in the batch
    held_from: dict = field(default_factory=dict)  # partition -> its first offset in the batch


def decoded_batch(records: Sequence, partitions: Sequence[int], parts: Sequence[DecodedRows],
                  started: float) -> DecodedBatch:
    """``records`` (messages of one topic: ``offset()``), each one's partition, and their rows, one part per writer."""
    batch = DecodedBatch(started=started, records=len(records), writer_rows=[part.rows for part in parts])
    newest, held_from = batch.newest, batch.held_from
    for record, partition in zip(records, partitions, strict=True):
        offset = record.offset()
        if partition not in held_from:
            held_from[partition] = offset
        if offset > newest.get(partition, -1):
            newest[partition] = offset
    # The parts hold disjoint partitions, so their records, ids and versions never meet.
    undecodable = sorted((item for part in parts for item in part.undecodable), key=lambda item: item.index)
    batch.undecodable = [(records[item.index], item.error_type, item.message) for item in undecodable]
    for part in parts:
        batch.position_records.update((position_id, records[index])
                                      for position_id, index in part.position_records.items())
        batch.versions.update(part.versions)
    return batch

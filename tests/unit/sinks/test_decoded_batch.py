"""``sinks.decoded_batch``: a fetched batch's records beside the rows of each writer's part."""

from __future__ import annotations

from dataclasses import dataclass

from sinks.batch_decode import DecodedRows, Undecodable, split_by_partition
from sinks.decoded_batch import decoded_batch
from sinks.rows import BatchRows


@dataclass(frozen=True)
class Message:
    """What the sink's consumer hands over, as far as ``decoded_batch`` reads it (confluent-kafka's methods)."""

    partition_number: int
    offset_number: int

    def partition(self) -> int:
        return self.partition_number

    def offset(self) -> int:
        return self.offset_number


def test_offsets_records_and_versions_of_every_part_are_the_batchs():
    # Arrange: three partitions' records interleaved; two writers (partitions 0 and 2 are writer 0's).
    records = [Message(0, 10), Message(1, 5), Message(2, 7), Message(0, 11), Message(1, 6), Message(2, 8)]
    groups = split_by_partition([record.partition() for record in records], 2)
    writer_zero = DecodedRows(rows=BatchRows(positions=[("a",)], events=[]),
                              undecodable=[Undecodable(3, "ValueError", "bad")],
                              position_records={"a@x/1": 2}, versions={0: 40, 2: 41})
    writer_one = DecodedRows(rows=BatchRows(positions=[("b",)], events=[]),
                             undecodable=[Undecodable(1, "SchemaError", "worse")],
                             position_records={"b@x/1": 4}, versions={1: 42})

    # Act
    batch = decoded_batch(records, [record.partition() for record in records], [writer_zero, writer_one], started=1.5)

    # Assert: per partition its first and newest offset; records found by their batch index.
    assert groups == [[0, 2, 3, 5], [1, 4]]
    assert batch.records == 6 and batch.started == 1.5
    assert batch.writer_rows == [writer_zero.rows, writer_one.rows]
    assert batch.held_from == {0: 10, 1: 5, 2: 7}
    assert batch.newest == {0: 11, 1: 6, 2: 8}
    assert batch.versions == {0: 40, 1: 42, 2: 41}
    assert batch.position_records == {"a@x/1": records[2], "b@x/1": records[4]}
    # Dead letters in batch order, whichever part found them.
    assert batch.undecodable == [(records[1], "SchemaError", "worse"), (records[3], "ValueError", "bad")]

"""A batch read as the sink reads it: the rows of the domain values, in a process of its own or not.

``decode_batch`` must give what ``merge_updates`` of the decoded domain values gives (the
audit rows in binary COPY form, read back here by ``read_copy_row``), report what it cannot
read by index without raising, and give the same in the decode process as in the caller's
thread, also after one was killed; a batch split among several processes as it is in one.
A position version a later record supersedes is read no further than its head, unless the
newest record does not bear its head out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

import dataclasses

from sinks.batch_decode import combine, decode_batch, split_by_partition
from sinks.decode import UpdateDecoder
from sinks.decode_process import BatchDecoding
from sinks.rows import merge_updates
from streams.domain import Position
from streams.wire import serde
from tests.integration.sink_support import UpdateStream
from tests.unit.sinks.test_audit_copy import read_copy_row


def copy_rows(rows) -> list[tuple]:
    """The rows of ``BatchRows.event_copy`` (concatenated binary COPY rows), read back."""
    found, position, data = [], 0, rows.event_copy
    while position < len(data):
        start = position
        position += 2
        for _ in range(struct.unpack_from(">h", data, start)[0]):
            (length,) = struct.unpack_from(">i", data, position)
            position += 4 + max(length, 0)
        found.append(read_copy_row(data[start:position]))
    return found


def test_a_batch_gives_the_rows_of_its_domain_values():
    # Arrange
    stream = UpdateStream.lives(keys=4, cycles=3)
    values = [update.data for update in stream.updates]
    expected = merge_updates(update.value for update in stream.updates)

    # Act
    decoded = decode_batch(values, [7] * len(values))

    # Assert
    assert decoded.rows.positions == expected.positions
    assert copy_rows(decoded.rows) == expected.events and not decoded.rows.events
    assert decoded.rows.event_copy_rows == len(expected.events)
    assert decoded.undecodable == []
    newest_version = max(update.value.version if isinstance(update.value, Position) else update.value.offset
                         for update in stream.updates)
    assert decoded.versions == {7: newest_version}
    for position_id, index in decoded.position_records.items():
        assert stream.updates[index].value.id == position_id
        assert stream.updates[index].value.version == max(
            update.value.version for update in stream.updates
            if isinstance(update.value, Position) and update.value.id == position_id)


def test_records_no_path_reads_are_reported_by_index_and_the_others_decoded():
    # Arrange
    stream = UpdateStream.lives(keys=1, cycles=1)
    values = [None, b"not avro", *(update.data for update in stream.updates)]

    # Act
    decoded = decode_batch(values, [0] * len(values))

    # Assert
    assert [(item.index, item.error_type) for item in decoded.undecodable] == [(0, "ValueError"),
                                                                               (1, "NotSingleObjectEncoded")]
    assert all(item.message for item in decoded.undecodable)
    assert decoded.rows.positions == merge_updates(update.value for update in stream.updates).positions


def position_indexes(stream: UpdateStream) -> list[int]:
    return [index for index, update in enumerate(stream.updates) if isinstance(update.value, Position)]


def test_the_head_of_a_position_update_names_its_position_and_offset_and_nothing_else_has_one():
    # Arrange
    stream = UpdateStream.lives(keys=1, cycles=1)
    decoder = UpdateDecoder()

    # Act
    heads = [decoder.position_identity(update.data) for update in stream.updates]

    # Assert
    for update, head in zip(stream.updates, heads, strict=True):
        if isinstance(update.value, Position):
            assert head == (update.value.id.encode(), update.value.version)
        else:
            assert head is None
    first = stream.updates[position_indexes(stream)[0]].data
    assert decoder.position_identity(first[:12]) is None  # cut inside its head
    assert decoder.position_identity(b"not avro") is None


def test_a_superseded_version_is_read_no_further_than_its_head():
    # Arrange: every position's versions but its newest lose their last byte.
    stream = UpdateStream.lives(keys=3, cycles=2)
    newest = {update.value.id: index for index, update in enumerate(stream.updates) if isinstance(update.value, Position)}
    damaged = [index for index in position_indexes(stream) if newest[stream.updates[index].value.id] != index]
    values = [update.data[:-1] if index in damaged else update.data for index, update in enumerate(stream.updates)]

    # Act
    decoded = decode_batch(values, [0] * len(values))

    # Assert: those were never read (reading them reports them), the rows are the whole stream's.
    assert damaged and decoded.undecodable == []
    assert decode_batch([values[damaged[0]]], [0]).undecodable != []
    expected = merge_updates(update.value for update in stream.updates)
    assert decoded.rows.positions == expected.positions
    assert decoded.position_records == {position_id: index for position_id, index in newest.items()}


def test_a_damaged_newest_version_is_reported_and_the_one_before_it_written():
    # Arrange: the last record of the first position loses its last byte.
    stream = UpdateStream.lives(keys=1, cycles=1)
    positions = position_indexes(stream)
    first_id = stream.updates[positions[0]].value.id
    last = max(index for index in positions if stream.updates[index].value.id == first_id)
    values = [update.data[:-1] if index == last else update.data for index, update in enumerate(stream.updates)]

    # Act
    decoded = decode_batch(values, [0] * len(values))

    # Assert: as reading every record: the newest reported, its predecessor written.
    assert [item.index for item in decoded.undecodable] == [last]
    expected = merge_updates(update.value for index, update in enumerate(stream.updates) if index != last)
    assert decoded.rows.positions == expected.positions
    before = max(index for index in positions if index < last and stream.updates[index].value.id == first_id)
    assert decoded.position_records[first_id] == before


@pytest.mark.parametrize("behind", [1, 0], ids=["older", "as-old"])
def test_a_newest_record_whose_state_is_older_than_its_offset_makes_the_others_read(behind):
    # Arrange: a record that claims offset 1,000 for a state of an older version than the one
    # before it, or of the same version (then, as in batch order, the later record's row).
    stream = UpdateStream.lives(keys=1, cycles=1)
    positions = position_indexes(stream)
    newest_state = stream.updates[positions[-1]].value
    stale = dataclasses.replace(newest_state, version=newest_state.version - behind, quantity=newest_state.quantity * 2)
    values = [update.data for update in stream.updates]
    values.append(serde.encode_position_update(stream.updates[positions[-1]].key, 1_000, stale))

    # Act
    decoded = decode_batch(values, [0] * len(values))

    # Assert: the rows of reading every record (the higher state version wins).
    expected = merge_updates([*(update.value for update in stream.updates), stale])
    assert decoded.rows.positions == expected.positions
    assert decoded.position_records[newest_state.id] == (positions[-1] if behind else len(values) - 1)
    assert decoded.undecodable == []


@pytest.mark.parametrize("processes", [1, 2])
def test_decode_processes_give_the_rows_of_the_callers_thread_also_after_one_was_killed(processes):
    # Arrange
    stream = UpdateStream.lives(keys=3, cycles=2)
    values = [update.data for update in stream.updates]
    partitions = [zlib.crc32(update.key.encode()) % 3 for update in stream.updates]  # a key lives in one partition
    here = decode_batch(values, partitions)

    async def scenario():
        decoding = BatchDecoding(processes=processes)
        await decoding.start()
        try:
            first = await decoding.decode(values, partitions)
            process = next(iter(decoding._pool._processes.values()))  # a decode process
            os.kill(process.pid, signal.SIGKILL)
            process.join(10)
            after_kill = await decoding.decode(values, partitions)  # decoded here, a new process is made
            next_one = await decoding.decode(values, partitions)  # by the new process
            return first, after_kill, next_one
        finally:
            decoding.close()

    # Act
    results = asyncio.run(scenario())

    # Assert: one writer, one part.
    for (result,) in results:
        assert result.rows.positions == here.rows.positions
        assert sorted(copy_rows(result.rows)) == sorted(copy_rows(here.rows))  # the parts' blocks, one after the other
        assert result.rows.event_copy_rows == here.rows.event_copy_rows and not result.rows.events
        assert result.versions == here.versions and result.position_records == here.position_records


def test_a_batch_split_by_partition_and_combined_is_the_batch_decoded_whole():
    # Arrange: two keys on two partitions, and unreadable records in both parts.
    stream = UpdateStream.lives(keys=2, cycles=2)
    partition_of = {key: number for number, key in enumerate(sorted({update.key for update in stream.updates}))}
    values = [b"junk", *(update.data for update in stream.updates), None]
    partitions = [1, *(partition_of[update.key] for update in stream.updates), 0]
    whole = decode_batch(values, partitions)

    # Act
    groups = split_by_partition(partitions, 2)
    combined = combine([decode_batch([values[i] for i in group], [partitions[i] for i in group]) for group in groups],
                       groups)

    # Assert
    assert len(groups) == 2 and sorted(sum(groups, [])) == list(range(len(values)))
    assert combined.undecodable == whole.undecodable
    assert [item.index for item in combined.undecodable] == [0, len(values) - 1]
    assert combined.rows.positions == whole.rows.positions
    assert sorted(copy_rows(combined.rows)) == sorted(copy_rows(whole.rows))
    assert combined.position_records == whole.position_records and combined.versions == whole.versions


@pytest.mark.parametrize("processes", [0, 1, 3])
def test_each_writers_part_holds_the_rows_of_its_partitions_and_together_they_are_the_batch(processes):
    # Arrange: keys on five partitions, an unreadable record in two of them.
    stream = UpdateStream.lives(keys=5, cycles=2)
    partition_of = {key: number for number, key in enumerate(sorted({update.key for update in stream.updates}))}
    values = [b"junk", *(update.data for update in stream.updates), None]
    partitions = [3, *(partition_of[update.key] for update in stream.updates), 0]
    whole = decode_batch(values, partitions)

    async def scenario():
        decoding = BatchDecoding(processes=processes, writers=2)
        await decoding.start()
        try:
            return await decoding.decode(values, partitions)
        finally:
            decoding.close()

    # Act
    parts = asyncio.run(scenario())

    # Assert: writer w has the records of the partitions p with p % 2 == w, indices the batch's.
    assert len(parts) == 2
    for writer, part in enumerate(parts):
        assert {partitions[index] % 2 for index in part.position_records.values()} <= {writer}
        assert {partition % 2 for partition in part.versions} <= {writer}
        assert {partitions[item.index] % 2 for item in part.undecodable} == {writer}
    assert sorted(item.index for part in parts for item in part.undecodable) == [0, len(values) - 1]
    assert sorted(row for part in parts for row in part.rows.positions) == sorted(whole.rows.positions)
    assert sorted(row for part in parts for row in copy_rows(part.rows)) == sorted(copy_rows(whole.rows))
    assert {**parts[0].position_records, **parts[1].position_records} == whole.position_records
    assert {**parts[0].versions, **parts[1].versions} == whole.versions


def test_a_decode_process_ends_when_the_sink_process_is_killed():
    # Arrange: a process that starts its decode process, prints its pid, and is killed by -9.
    script = (
        "import asyncio, os, signal\n"
        "from sinks.decode_process import BatchDecoding\n"
        "async def main():\n"
        "    decoding = BatchDecoding(processes=1)\n"
        "    await decoding.start()\n"
        "    print(next(iter(decoding._pool._processes)), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    sink = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[3])
    decode_pid = int(sink.stdout.split()[0])

    # Act: wait for the orphaned decode process to end.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(decode_pid):
        time.sleep(0.1)

    # Assert
    assert sink.returncode == -signal.SIGKILL
    assert not _alive(decode_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

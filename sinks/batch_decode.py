"""A batch of update record values -> the rows one transaction writes (pure, no I/O).

``decode_batch`` is what the sink does between fetching a batch and writing it: every audit
record of the current schema straight to its binary COPY row (``sinks.audit_copy``), every
other record read into its row (``sinks.decode``), the position rows merged to each id's
newest version (``sinks.rows.BatchMerger``). Its arguments and result are plain values
(bytes, ints, strings, tuples of ``Decimal`` / ``datetime``), so it runs in the sink's
decode process as well as in the sink's own thread; see ``sinks.decode_process``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from sinks.audit_copy import AuditTranscoder
from sinks.decode import POSITION, UpdateDecoder
from sinks.rows import BatchMerger, BatchRows, sorted_positions

__all__ = ["DecodedRows", "Undecodable", "combine", "decode_batch", "split_by_partition"]


@dataclass(frozen=True)
class Undecodable:
    """A record of the batch no path could read: its index in the batch and the error."""

    index: int
    error_type: str  # the exception's class name, as dead letters carry it
    message: str


@dataclass
class DecodedRows:
    """The rows of one batch and what the sink must know of its records."""

    rows: BatchRows
    undecodable: list[Undecodable] = field(default_factory=list)
    #: Position id -> index (in the batch) of the record of its newest version.
    position_records: dict[str, int] = field(default_factory=dict)
    #: Partition -> the highest version (input offset) among its records in the batch.
    versions: dict[int, int] = field(default_factory=dict)


_readers: tuple[UpdateDecoder, AuditTranscoder] | None = None


def _the_readers() -> tuple[UpdateDecoder, AuditTranscoder]:
    # One of each per process: each compiles its readers once, on first use.
    global _readers
    if _readers is None:
        _readers = (UpdateDecoder(), AuditTranscoder())
    return _readers


def warm_up(processes: int) -> int:
    """Builds this process's readers (each decode process's first task) and returns its pid.

    With several processes it then holds its process a moment, so that the other warm-up
    tasks go to the other processes (one that missed its warm-up builds its readers on its
    first batch instead: slower once, never wrong).
    """
    _the_readers()
    time.sleep(0.2 if processes > 1 else 0)
    return os.getpid()


def decode_batch(values: list[bytes | None], partitions: list[int]) -> DecodedRows:
    """The rows of a batch of ``position-updates`` values (and each one's partition), in order.

    A record no path reads is reported in ``undecodable`` with the error the row path
    raised for it (``serde``'s, a ``ValueError`` for a missing value), never raised.

    Only the newest version of each position is written, so a version a later record of the
    batch supersedes (``UpdateDecoder.position_identity``: same id, an offset as high) is
    not read past its head: most position records of a busy batch are. Should the newest
    record not bear its claim out (undecodable, or a state version other than its offset),
    that position's other records are read after all, so the rows are those of reading
    every record. What is given up: a superseded record that is itself damaged is not
    reported (its position's newer state is written instead).
    """
    decoder, transcoder = _the_readers()
    decode = decoder.decode
    transcode = transcoder.transcode
    identity = decoder.position_identity
    merger = BatchMerger()
    result = DecodedRows(rows=BatchRows(positions=[], events=[]))
    versions = result.versions
    position_records = result.position_records

    # Audit records straight to their COPY rows; each other record's head, if it is a position
    # update's: id -> (offset, index) of its newest version (ties: the later record).
    others: list[int] = []
    heads: dict[int, tuple[bytes, int]] = {}
    newest: dict[bytes, tuple[int, int]] = {}
    for index, value in enumerate(values):
        if type(value) is bytes:
            copied = transcode(value)
            if copied is not None:
                natural_key, copy_row = copied
                merger.add_event_copy(natural_key, copy_row)
                version, partition = natural_key[1], partitions[index]
                if version > versions.get(partition, -1):
                    versions[partition] = version
                continue
            head = identity(value)
            if head is not None:
                heads[index] = head
                current = newest.get(head[0])
                if current is None or current[0] <= head[1]:
                    newest[head[0]] = (head[1], index)
        others.append(index)

    def add_position(row: tuple, index: int) -> None:
        # As if added in batch order (a superseded record read after all comes late): the
        # newest version, of two equal ones the later record's.
        kept = merger.kept_position(row[0])
        if kept is not None and (kept[-1] > row[-1] or (kept[-1] == row[-1] and position_records[row[0]] > index)):
            return
        merger.add_position_row(row)
        position_records[row[0]] = index

    superseded: dict[bytes, list[int]] = {}
    unconfirmed: list[bytes] = []  # ids whose newest record did not bear its head out
    for index in others:
        value = values[index]
        head = heads.get(index)
        if head is not None and newest[head[0]][1] != index:
            superseded.setdefault(head[0], []).append(index)
            version = head[1]
        else:
            try:
                if value is None:
                    raise ValueError("update record has no value")
                kind, row = decode(value)
            except Exception as error:  # noqa: BLE001 - one bad record must not stop the audit log
                result.undecodable.append(Undecodable(index, type(error).__name__,
                                                      str(error) or type(error).__name__))
                if head is not None:
                    unconfirmed.append(head[0])
                continue
            if kind == POSITION:
                add_position(row, index)
                version = row[-1]
                if head is not None and (version != head[1] or row[0].encode() != head[0]):
                    unconfirmed.append(head[0])
            else:
                merger.add_event_row(row)
                version = row[1]
        partition = partitions[index]
        if version > versions.get(partition, -1):
            versions[partition] = version
    for position_id in unconfirmed:
        for index in superseded.pop(position_id, ()):
            try:
                kind, row = decode(values[index])
            except Exception as error:  # noqa: BLE001 - as above
                result.undecodable.append(Undecodable(index, type(error).__name__, str(error) or type(error).__name__))
                continue
            if kind == POSITION:
                add_position(row, index)
                if row[-1] > versions.get(partitions[index], -1):
                    versions[partitions[index]] = row[-1]
    result.undecodable.sort(key=lambda item: item.index)
    result.rows = merger.rows()
    return result


def split_by_partition(partitions: list[int], parts: int) -> list[list[int]]:
    """The batch's indices in ``parts`` groups, group g holding the records of the partitions p
    with p % parts == g (an empty group too): a position id (and a key) lives in one partition,
    so each group's newest versions are final across groups."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    for index, partition in enumerate(partitions):
        groups[partition % parts].append(index)
    return groups


def combine(decoded: list[DecodedRows], groups: list[list[int]]) -> DecodedRows:
    """One batch's ``DecodedRows`` from those of its groups (``split_by_partition``), indices
    mapped back to the batch's; the position rows in (version, id) order again."""
    if len(decoded) == 1 and groups[0] == list(range(len(groups[0]))):
        return decoded[0]
    positions: list[tuple] = []
    events: list[tuple] = []
    copies: list[bytes] = []
    copy_rows = 0
    result = DecodedRows(rows=BatchRows(positions=[], events=[]))
    for part, group in zip(decoded, groups, strict=True):
        positions.extend(part.rows.positions)
        events.extend(part.rows.events)
        copies.append(part.rows.event_copy)
        copy_rows += part.rows.event_copy_rows
        result.undecodable.extend(Undecodable(group[item.index], item.error_type, item.message)
                                  for item in part.undecodable)
        result.position_records.update((position_id, group[index])
                                       for position_id, index in part.position_records.items())
        result.versions.update(part.versions)
    result.undecodable.sort(key=lambda item: item.index)
    result.rows = BatchRows(positions=sorted_positions(positions), events=events, event_copy=b"".join(copies),
                            event_copy_rows=copy_rows)
    return result

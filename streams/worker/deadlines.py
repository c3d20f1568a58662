"""The in-flight deadlines of a worker's keys, so the deadline timer never decodes the whole table."""

from __future__ import annotations

from streams.domain import Deadline, InputEvent, KeyState, Status

_Due = tuple[int, str, Status]  # (deadline_at, position id, status)


class DeadlineIndex:
    """The in-flight deadlines of this worker's keys, kept beside the table as states are stored.

    The timer asks it every ``PIPELINE_DEADLINE_SCAN_INTERVAL_S`` instead of decoding the
    whole table (100,000 keys would cost seconds per scan). It is rebuilt from the table
    once whenever the worker's partitions change, since another worker wrote them meanwhile.
    A rebuild may go on in steps while the agent stores states (``begin_rebuild``,
    ``rebuild_note``, ``finish_rebuild``): a key stored meanwhile keeps what the agent noted,
    never the older record the scan read.
    """

    def __init__(self) -> None:
        self._due: dict[str, _Due] = {}
        self.partitions: frozenset[int] | None = None
        self._rebuilt: dict[str, _Due] | None = None
        self._noted_meanwhile: set[str] = set()

    def note(self, record: dict) -> None:
        """Takes a stored ``KeyState`` record: its deadline if it has one in flight, else none."""
        key = record["key"]
        _set_due(self._due, key, record)
        if self._rebuilt is not None:
            self._noted_meanwhile.add(key)

    def note_state(self, state: KeyState) -> None:
        """Takes a stored ``KeyState`` (as ``note`` takes its record)."""
        position = state.position
        if position is not None and position.deadline_at is not None and position.status.is_in_flight:
            self._due[state.key] = (position.deadline_at, position.id, position.status)
        else:
            self._due.pop(state.key, None)
        if self._rebuilt is not None:
            self._noted_meanwhile.add(state.key)

    def rebuild(self, records: list[dict], partitions: frozenset[int]) -> None:
        """Starts over from ``records`` (the table of ``partitions``)."""
        self.begin_rebuild()
        for record in records:
            self.rebuild_note(record)
        self.finish_rebuild(partitions)

    def begin_rebuild(self) -> None:
        """Starts a rebuild; the index keeps answering from what it had until ``finish_rebuild``."""
        self._rebuilt = {}
        self._noted_meanwhile = set()

    def rebuild_note(self, record: dict) -> None:
        """One record the rebuild's scan read from the table."""
        if self._rebuilt is None:
            raise RuntimeError("rebuild_note outside a rebuild")
        key = record["key"]
        if key not in self._noted_meanwhile:
            _set_due(self._rebuilt, key, record)

    def finish_rebuild(self, partitions: frozenset[int]) -> None:
        """Ends the rebuild: the index is the scan's, with the keys noted meanwhile as noted."""
        if self._rebuilt is None:
            raise RuntimeError("finish_rebuild outside a rebuild")
        rebuilt = self._rebuilt
        for key in self._noted_meanwhile:
            if key in self._due:
                rebuilt[key] = self._due[key]
            else:
                rebuilt.pop(key, None)
        self._due = rebuilt
        self.partitions = partitions
        self.abandon_rebuild()

    def abandon_rebuild(self) -> None:
        """Drops a rebuild (the assignment changed under it); the index stays as it was."""
        self._rebuilt = None
        self._noted_meanwhile = set()

    def due(self, now_ms: int) -> list[InputEvent]:
        """A deadline input for every position whose deadline has passed."""
        return [InputEvent(event_id=f"deadline:{position_id}:{status.value}:{deadline_at}", key=key, ts=now_ms,
                           payload=Deadline(position_id=position_id, status=status, due_at=deadline_at, ts=now_ms))
                for key, (deadline_at, position_id, status) in self._due.items() if deadline_at <= now_ms]


def _set_due(due: dict[str, _Due], key: str, record: dict) -> None:
    position = record.get("position")
    if position and position.get("deadline_at") is not None and Status(position["status"]).is_in_flight:
        due[key] = (position["deadline_at"], position["id"], Status(position["status"]))
    else:
        due.pop(key, None)


__all__ = ["DeadlineIndex"]

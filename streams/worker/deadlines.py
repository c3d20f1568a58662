"""The in-flight deadlines of a worker's keys, so the deadline timer never decodes the whole table."""

from __future__ import annotations



from streams.domain import Deadline, InputEvent, Status

class DeadlineIndex:
    """The in-flight deadlines of this worker's keys, kept beside the table as states are stored.

    The timer asks it every ``PIPELINE_DEADLINE_SCAN_INTERVAL_S`` instead of decoding the
    whole table (100,000 keys would cost seconds per scan). It is rebuilt from the table
    once whenever the worker's partitions change, since another worker wrote them meanwhile.
    """

    def __init__(self) -> None:
        self._due: dict[str, tuple[int, str, Status]] = {}  # key -> (deadline_at, position id, status)
        self.partitions: frozenset[int] | None = None

    def note(self, record: dict) -> None:
        """Takes a stored ``KeyState`` record: its deadline if it has one in flight, else none."""
        position = record.get("position")
        key = record["key"]
        if position and position.get("deadline_at") is not None and Status(position["status"]).is_in_flight:
            self._due[key] = (position["deadline_at"], position["id"], Status(position["status"]))
        else:
            self._due.pop(key, None)

    def rebuild(self, records: list[dict], partitions: frozenset[int]) -> None:
        """Starts over from ``records`` (the table of ``partitions``)."""
        self._due.clear()
        for record in records:
            self.note(record)
        self.partitions = partitions

    def due(self, now_ms: int) -> list[InputEvent]:
        """A deadline input for every position whose deadline has passed."""
        return [InputEvent(event_id=f"deadline:{position_id}:{status.value}:{deadline_at}", key=key, ts=now_ms,
                           payload=Deadline(position_id=position_id, status=status, due_at=deadline_at, ts=now_ms))
                for key, (deadline_at, position_id, status) in self._due.items() if deadline_at <= now_ms]


__all__ = ["DeadlineIndex"]

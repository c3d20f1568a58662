"""Decision diff: ``python -m streams diff``, every decision that a new version or policy would change.

Before deploying a new version of the code (or a new policy), replay the recorded inputs
through it and compare, input by input, with what the running system decided:

1. the recorded decisions are read back from the pipeline's own outputs: each command on
   ``position-commands`` and each update on ``position-updates`` carries the headers of the
   input it was decided for (``app.input_headers``); audit records carry the input offset,
   position states their version (the input offset);
2. ``position-inputs`` is folded from offset 0 with the agent's own ``InputProcessor``
   (the code being tested), each input with the policy recorded in it (``--set`` and
   ``--policy`` change fields of it), collecting its
   outputs instead of sending them;
3. for every input in the chosen range the system has already decided, the two decisions
   are compared: the position's status after the input, the commands, the audit decision
   and its reason. Inputs the running system has not decided yet are counted, not compared.

Nothing is written: no table, no command, no sink row, no consumer group offset. The fold
always starts at offset 0 (the state at any later offset depends on every input before it);
the range only limits what is compared and printed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streams.wire import serde
from streams.worker.processor import ConsumedRecord, InputProcessor, input_of, load_from
from streams.domain import AuditRecord, Command, KeyState, Policy, Position
from streams.settings import Settings
from streams.ops.log import from_start
from streams.topics import TopicNames
from streams.ops.errors import OpsError

__all__ = ["DecisionDiff", "DiffError", "Difference", "InputDecision", "diff_decisions", "policy_overrides"]


class DiffError(OpsError, ValueError):
    """The diff cannot run as asked (a malformed policy override, a missing topic)."""


@dataclass(frozen=True)
class InputDecision:
    """What the pipeline decided for one input, in comparable form."""

    status: str | None = None  # the position's status after the input; None when the input changed no position
    commands: tuple[str, ...] = ()  # one line per command, sorted
    decision: str | None = None  # the audit's decision (applied, refused, ...); None without an audit
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Difference:
    """One input whose decision differs between the recorded run and the replay."""

    key: str
    partition: int
    offset: int
    input_kind: str
    changed: tuple[str, ...]  # which of status, commands, decision, reason differ
    recorded: InputDecision
    replayed: InputDecision

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "partition": self.partition, "offset": self.offset, "input_kind": self.input_kind,
                "changed": list(self.changed), "recorded": self.recorded.as_json(),
                "replayed": self.replayed.as_json()}


@dataclass
class DecisionDiff:
    """The outcome of a diff: the differences and what was compared."""

    differences: list[Difference] = field(default_factory=list)
    compared: int = 0  # inputs in range the running system had decided
    undecided: int = 0  # inputs in range the running system has not decided (yet)
    dead_lettered: int = 0  # inputs in range that are dead letters (undecodable) for the current code
    # Keys with recorded commands that carry no input headers (written before they existed):
    # their commands cannot be put beside an input, so only status, decision and reason are compared.
    keys_without_attribution: set[str] = field(default_factory=set)
    folded: int = 0  # inputs folded from offset 0
    seconds: float = 0.0
    overrides: dict[str, Any] = field(default_factory=dict)  # policy fields changed on top of the recorded ones

    @property
    def changes_by_kind(self) -> Counter:
        """How many inputs changed each part of their decision."""
        return Counter(part for difference in self.differences for part in difference.changed)

    def render(self, limit: int = 200) -> str:
        """The table of differing inputs (at most ``limit`` rows) and the summary."""
        lines = []
        if self.differences:
            lines.append(f"{'key':<24} {'offset':>9} {'input':<9} {'what':<9} recorded -> replayed")
            for difference in self.differences[:limit]:
                for part in difference.changed:
                    recorded = _show(getattr(difference.recorded, part))
                    replayed = _show(getattr(difference.replayed, part))
                    lines.append(f"{difference.key:<24} {difference.partition:>3}@{difference.offset:<5} "
                                 f"{difference.input_kind:<9} {part:<9} {recorded} -> {replayed}")
            if len(self.differences) > limit:
                lines.append(f"... {len(self.differences) - limit} more inputs (--json FILE has them all)")
            lines.append("")
        by_kind = ", ".join(f"{part} {count}" for part, count in sorted(self.changes_by_kind.items())) or "none"
        lines.append(f"{len(self.differences)} of {self.compared} decided inputs decide differently "
                     f"(changed: {by_kind}); {self.undecided} inputs in range not decided by the running "
                     f"system yet, {self.dead_lettered} dead letters; {self.folded} inputs folded in "
                     f"{self.seconds:.1f}s")
        if self.keys_without_attribution:
            lines.append(f"commands not compared for {len(self.keys_without_attribution)} keys: their recorded "
                         f"commands carry no input headers (written by an older version)")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {"differences": [d.as_json() for d in self.differences], "compared": self.compared,
                "undecided": self.undecided, "dead_lettered": self.dead_lettered, "folded": self.folded,
                "keys_without_attribution": sorted(self.keys_without_attribution),
                "changes_by_kind": dict(self.changes_by_kind),
                "policy_overrides": {name: str(value) for name, value in self.overrides.items()}}


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + "; ".join(value) + "]" if value else "[]"
    return "-" if value is None else str(value)


def command_line(command: Command) -> str:
    """A command as one comparable line: its kind and every field that reaches the exchange."""
    fields = ", ".join(f"{f.name}={getattr(command, f.name)}" for f in dataclasses.fields(command)
                       if f.name not in ("key", "symbol", "exchange"))
    return f"{type(command).__name__}({fields})"


def policy_overrides(base: Policy, overrides: Mapping[str, str]) -> dict[str, Any]:
    """``{field: text}`` (``--set``, ``--policy FILE``) as typed policy fields, checked against ``base``."""
    known = {f.name: f for f in dataclasses.fields(base)}
    values: dict[str, Any] = {}
    for name, text in overrides.items():
        if name not in known:
            raise DiffError(f"unknown policy field {name!r}; the policy has {', '.join(sorted(known))}")
        current = getattr(base, name)
        try:
            values[name] = Decimal(str(text)) if isinstance(current, Decimal) else type(current)(str(text))
        except (InvalidOperation, ValueError) as error:
            raise DiffError(f"policy field {name}={text!r} is not a {type(current).__name__}") from error
    try:
        dataclasses.replace(base, **values)
    except Exception as error:  # noqa: BLE001 - the domain's own validation, reported as the user's error
        raise DiffError(f"invalid policy: {error}") from error
    return values


def load_policy_file(path: Path) -> dict[str, str]:
    """``{field: value}`` from a JSON object file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DiffError(f"cannot read the policy file {path}: {error}") from error
    if not isinstance(document, dict):
        raise DiffError(f"{path}: the policy file must hold a JSON object of field: value")
    return {str(name): str(value) for name, value in document.items()}


async def _read_all(bootstrap: str, topic: str, on_record, progress_label: str | None = None,
                    progress: bool = False) -> int:
    """Calls ``on_record(partition, record)`` for every record of ``topic``, partition by partition, in order."""
    async with from_start(bootstrap, topic) as log:
        consumer, partitions, ends = log.consumer, log.partitions, log.ends
        if not partitions:
            raise DiffError(f"topic {topic!r} does not exist")
        starts = await consumer.beginning_offsets(partitions)
        bar = tqdm(total=sum(ends[tp] - starts[tp] for tp in partitions), unit="record", desc=progress_label,
                   disable=not progress)
        count = 0
        for tp in partitions:  # one partition at a time: the fold applies each partition in offset order
            consumer.pause(*partitions)
            consumer.resume(tp)
            while await consumer.position(tp) < ends[tp]:
                for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                    for record in records:
                        if record.offset < ends[tp]:
                            await on_record(tp.partition, record)
                            count += 1
                            bar.update(1)
        bar.close()
        return count


@dataclass
class _Decisions:
    """Decisions per ``(key, input offset)``, assembled from output records."""

    statuses: dict[tuple[str, int], str] = field(default_factory=dict)
    commands: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    audits: dict[tuple[str, int], AuditRecord] = field(default_factory=dict)

    def add_update(self, value: bytes) -> None:
        update = serde.decode_update(value)
        if isinstance(update, Position):
            self.statuses[(f"{update.symbol}@{update.exchange}", update.version)] = update.status.value
        else:
            self.audits.setdefault((update.key, update.offset), update)

    def add_command(self, key: str, offset: int, value: bytes) -> None:
        self.commands[(key, offset)].add(command_line(serde.decode_command(value)))

    def decided(self, key: str, offset: int) -> bool:
        return (key, offset) in self.audits

    def of(self, key: str, offset: int) -> InputDecision:
        audit = self.audits.get((key, offset))
        return InputDecision(
            status=self.statuses.get((key, offset)),
            commands=tuple(sorted(self.commands.get((key, offset), ()))),
            decision=audit.decision.value if audit is not None else None,
            reason=audit.reason if audit is not None else None,
        )


async def diff_decisions(settings: Settings, *, overrides: Mapping[str, Any] | None = None, from_offset: int = 0,
                         to_offset: int | None = None, progress: bool = True) -> DecisionDiff:
    """Folds ``position-inputs`` through the current code and compares with the recorded decisions."""
    started = time.monotonic()
    names = TopicNames.for_prefix(settings.topic_prefix)
    bootstrap = settings.kafka_bootstrap_servers
    result = DecisionDiff(overrides=dict(overrides or {}))

    recorded = _Decisions()

    async def read_command(partition: int, record) -> None:
        if record.key is None:
            return
        attributed = input_of(record.headers)
        if attributed is None:
            result.keys_without_attribution.add(record.key.decode(errors="replace"))
        else:
            recorded.add_command(record.key.decode(), attributed[1], record.value)

    async def read_update(partition: int, record) -> None:
        if record.value is not None:
            recorded.add_update(record.value)

    await _read_all(bootstrap, names.commands, read_command, "reading recorded commands", progress)
    await _read_all(bootstrap, names.updates, read_update, "reading recorded updates", progress)

    replayed = _Decisions()
    acknowledged = asyncio.get_running_loop().create_future()
    acknowledged.set_result(None)
    current: dict[str, Any] = {}

    async def collect(topic: str, key: bytes, value: bytes, headers: list) -> asyncio.Future:
        if topic == names.commands:
            replayed.add_command(key.decode(), current["offset"], value)
        elif topic == names.updates:
            replayed.add_update(value)
        return acknowledged

    table: dict[bytes, KeyState | None] = {}  # decoded states, never re-encoded: nothing is stored
    processor = InputProcessor(settings=settings, topics=names, send=collect, load=load_from(table),
                               store=table.__setitem__, policy_overrides=result.overrides)
    in_range: list[tuple[str, int, int, str]] = []

    async def fold(partition: int, record) -> None:
        current["offset"] = record.offset
        (decision,) = await processor.apply_batch([ConsumedRecord(names.inputs, partition, record.offset, record.key,
                                                                  record.value, record.timestamp)], table)
        if record.offset < from_offset or (to_offset is not None and record.offset > to_offset):
            return
        if decision is None or record.key is None:
            result.dead_lettered += 1
            return
        kind = decision.audit.input_kind.value if decision.audit is not None else "-"
        in_range.append((record.key.decode(errors="replace"), partition, record.offset, kind))

    result.folded = await _read_all(bootstrap, names.inputs, fold, "folding position-inputs", progress)

    for key, partition, offset, kind in in_range:
        if not recorded.decided(key, offset):
            result.undecided += 1
            continue
        result.compared += 1
        before, after = recorded.of(key, offset), replayed.of(key, offset)
        parts = ("status", "decision", "reason") if key in result.keys_without_attribution else \
            ("status", "commands", "decision", "reason")
        changed = tuple(part for part in parts if getattr(before, part) != getattr(after, part))
        if changed:
            result.differences.append(Difference(key, partition, offset, kind, changed, before, after))
    result.seconds = time.monotonic() - started
    return result


def write_json(result: DecisionDiff, path: Path) -> None:
    """The diff as a JSON document (every difference, the summary, the policy used)."""
    path.write_text(json.dumps(result.as_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

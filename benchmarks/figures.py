"""A figure of the benchmark report: repeated measurements, their median, min and max.

``measure(runs, once)`` runs a warm-up and then ``runs`` measurements; ``Figure`` keeps
every value (and a peer's, for the side-by-side comparisons) and renders itself as one
object of ``benchmarks/results/latest.json`` and one row of the markdown table. A figure
that could not be measured is ``Missing``: it is printed with the reason and left out of
the JSON, never given a number.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path


def runs_for(name: str, default: int) -> int:
    """How many runs a figure gets: ``BENCH_RUNS_<NAME>`` (e.g. BENCH_RUNS_E2E=3), else ``default``."""
    return int(os.environ.get(f"BENCH_RUNS_{name.upper()}", default))


def size_for(name: str, default: int) -> int:
    """A benchmark's size: ``BENCH_<NAME>`` (e.g. BENCH_RECOVERY_KEYS=10000 for a reduced run), else ``default``."""
    return int(os.environ.get(f"BENCH_{name.upper()}", default))


async def measure(runs: int, once: Callable[[], Awaitable[float]], *, warmup: Callable[[], Awaitable[object]] | None = None,
                  label: str = "") -> list[float]:
    """One warm-up (``warmup``, default ``once``) whose value is dropped, then ``runs`` values of ``once``."""
    started = time.monotonic()
    await (warmup or once)()
    print(f"  {label}: warm-up done ({time.monotonic() - started:.0f}s)", flush=True)
    values = []
    for run in range(runs):
        started = time.monotonic()
        values.append(await once())
        print(f"  {label}: run {run + 1}/{runs}: {values[-1]:,.3f} ({time.monotonic() - started:.0f}s)", flush=True)
    return values


@dataclass
class Figure:
    """One named figure: our values and, for a comparison, the peer's (ratio = ours / peer's, medians)."""

    name: str
    unit: str
    values: list[float]
    what: str
    peer_values: list[float] | None = None
    peer_what: str | None = None
    note: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def peer(self) -> float | None:
        return statistics.median(self.peer_values) if self.peer_values else None

    @property
    def ratio(self) -> float | None:
        return self.median / self.peer if self.peer else None

    def to_json(self) -> dict:
        data = {"name": self.name, "unit": self.unit, "median": _round(self.median), "min": _round(min(self.values)),
                "max": _round(max(self.values)), "runs": len(self.values)}
        if self.peer_values:
            data.update(peer=_round(self.peer), ratio=round(self.ratio, 3), peer_min=_round(min(self.peer_values)),
                        peer_max=_round(max(self.peer_values)), peer_runs=len(self.peer_values),
                        peer_what=self.peer_what)
        data["what"] = self.what
        if self.note:
            data["note"] = self.note
        data["values"] = [_round(value) for value in self.values]
        if self.peer_values:
            data["peer_values"] = [_round(value) for value in self.peer_values]
        data.update(self.extra)
        return data

    def row(self) -> str:
        return row_of(self.to_json())


@dataclass
class Missing:
    """A figure that could not be produced, and why."""

    name: str
    reason: str

    def row(self) -> str:
        return f"| `{self.name}` | - | not measured: {self.reason} | | | | | |"


TABLE_HEADER = ("| figure | unit | median | min | max | runs | peer (median) | ratio |\n"
                "|---|---|---:|---:|---:|---:|---:|---:|")


def row_of(figure: dict) -> str:
    """One markdown row of a figure as ``latest.json`` holds it."""
    has_peer = figure.get("peer") is not None
    peer, ratio = (_show(figure["peer"]), f"{figure['ratio']:.2f}x") if has_peer else ("", "")
    return (f"| `{figure['name']}` | {figure['unit']} | {_show(figure['median'])} | {_show(figure['min'])} | "
            f"{_show(figure['max'])} | {figure['runs']} | {peer} | {ratio} |")


def _round(value: float) -> float:
    return round(value, 3) if abs(value) < 100 else round(value, 1)


def _show(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


#: Where ``make bench`` keeps the latest figures: a JSON array, one object per figure, sorted by name.
RESULTS_PATH = Path(__file__).parent / "results" / "latest.json"


def load(path: Path = RESULTS_PATH) -> list[dict]:
    """The recorded figures, sorted by name; an older file keyed by name is read too."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    found = list(data.values()) if isinstance(data, dict) else data
    return sorted(found, key=lambda figure: figure["name"])


def record(figures: list["Figure | Missing"], path: Path = RESULTS_PATH) -> None:
    """Merges ``figures`` into ``path`` by name, keeping the other figures there: a missing one is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = {figure["name"]: figure for figure in load(path)}
    for figure in figures:
        if isinstance(figure, Missing):
            existing.pop(figure.name, None)
        else:
            existing[figure.name] = {**figure.to_json(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps([existing[name] for name in sorted(existing)], indent=2) + "\n")


def report(figures: list["Figure | Missing"], path: Path = RESULTS_PATH) -> None:
    """Prints ``figures`` as the markdown table and records them in ``path``."""
    print(TABLE_HEADER)
    for figure in figures:
        print(figure.row())
    record(figures, path)
    print(f"written to {path}")

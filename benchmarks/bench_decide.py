"""decide() decisions per second on a realistic lifecycle stream (no I/O at all).

``python -m benchmarks.bench_decide [--runs 5]``: one warm-up round, then ``--runs``
rounds (default ``BENCH_RUNS_DECIDE`` or 5), each deciding the whole stream from empty
states; the figure ``decide`` is their median, with min and max, in
``benchmarks/results/latest.json``. The time of a round is the wall clock's: on a shared
machine, compare figures taken in the same minute.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.figures import Figure, measure, report, runs_for
from benchmarks.lifecycle import POLICY, lifecycle_inputs
from streams.domain import AppliedInput, InputEvent, KeyState, decide

KEYS = 200
CYCLES = 10


def run_once(events: list[InputEvent]) -> float:
    """Decisions per second over ``events``, each key starting empty, states carried as the agent does."""
    states: dict[str, KeyState | None] = {}
    offsets: dict[str, int] = {}
    started = time.perf_counter()
    for event in events:
        offset = offsets.get(event.key, -1) + 1
        offsets[event.key] = offset
        states[event.key] = decide(states.get(event.key), AppliedInput(offset, event), POLICY).state
    return len(events) / (time.perf_counter() - started)


async def figure(runs: int | None = None) -> Figure:
    """The ``decide`` figure: decisions/s over ``runs`` rounds after a warm-up round."""
    events = list(lifecycle_inputs(KEYS, CYCLES))
    runs = runs if runs is not None else runs_for("decide", 5)

    async def once() -> float:
        return run_once(events)

    values = await measure(runs, once, label="decide")
    return Figure("decide", "decisions/s", values,
                  f"decide() alone, {len(events):,} inputs of whole position lives (open, fill, stop accepted, "
                  f"3 snapshots, close, stop canceled, close filled) over {KEYS} keys, states carried per key",
                  extra={"inputs": len(events), "keys": KEYS})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="measured rounds (default BENCH_RUNS_DECIDE or 5)")
    arguments = parser.parse_args()
    measured = asyncio.run(figure(arguments.runs))
    print(f"decide(): {measured.median:,.0f} decisions/s (median of {len(measured.values)} rounds of "
          f"{measured.extra['inputs']:,} inputs over {KEYS} keys; min {min(measured.values):,.0f}, "
          f"max {max(measured.values):,.0f})")
    report([measured])


if __name__ == "__main__":
    main()

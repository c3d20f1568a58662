"""decide() decisions per second on a realistic lifecycle stream (no I/O at all)."""

from __future__ import annotations

import statistics
import time

from benchmarks.lifecycle import POLICY, lifecycle_inputs
from streams.domain import AppliedInput, KeyState, decide

KEYS = 200
CYCLES = 10
ROUNDS = 5


def run_once(events) -> float:
    states: dict[str, KeyState | None] = {}
    offsets: dict[str, int] = {}
    started = time.perf_counter()
    for event in events:
        offset = offsets.get(event.key, -1) + 1
        offsets[event.key] = offset
        states[event.key] = decide(states.get(event.key), AppliedInput(offset, event), POLICY).state
    return len(events) / (time.perf_counter() - started)


def main() -> None:
    events = list(lifecycle_inputs(KEYS, CYCLES))
    rates = [run_once(events) for _ in range(ROUNDS)]
    print(f"decide(): {statistics.median(rates):,.0f} decisions/s "
          f"(median of {ROUNDS} rounds of {len(events):,} inputs over {KEYS} keys; "
          f"min {min(rates):,.0f}, max {max(rates):,.0f})")


if __name__ == "__main__":
    main()

"""Replay and decision diff beside the agent's end-to-end rate, same inputs, same run: ``replay_vs_e2e``.

``python -m benchmarks.bench_replay [--keys 1000] [--cycles 5] [--runs 5]``

Same inputs for all: whole position lives from ``benchmarks.lifecycle`` (1,000 keys x 5 lives
x 9 inputs = 45,000 by default). A replay run gets a fresh deployment (12 partitions), the
inputs published to its ``position-inputs``, then ``streams.ops.replay.replay`` rebuilds the
table from them (writing the table's changelog, republishing the updates, moving the group's
offsets) and ``streams.ops.diff.diff_decisions`` folds them again and compares; both run in
this process, as the commands do, and each figure is inputs per second of wall time, reading
the topic included. The agent's run is ``bench_e2e``'s (one worker, rocksdb table, first to
last audit record). Rounds interleave the replay and the agent, after a warm-up of each.

- ``replay_vs_e2e``: replay inputs/s, the agent's inputs/s as its peer (ratio replay / e2e;
  the issue's target is at least 0.5x);
- ``diff_vs_e2e``: the decision diff, against the same agent runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.bench_e2e import run_once as e2e_once
from benchmarks.figures import Figure, measure, report, runs_for, size_for
from benchmarks.harness import deployment, endpoints, produce_all
from benchmarks.lifecycle import encoded_lifecycle
from streams.ops.diff import diff_decisions
from streams.ops.replay import replay

KEYS = 1_000
CYCLES = 5
WARMUP_CYCLES = 1


async def replay_once(bootstrap: str, database_url: str, records) -> tuple[float, float]:
    """(replay inputs/s, diff inputs/s) over ``records`` on a fresh deployment."""
    async with deployment(bootstrap, database_url, "replay") as deployed:
        await produce_all(bootstrap, deployed.topics.inputs, records)
        settings = deployed.settings()
        started = time.monotonic()
        summary = await replay(settings, progress=False)
        replay_s = time.monotonic() - started
        started = time.monotonic()
        result = await diff_decisions(settings, progress=False)
        diff_s = time.monotonic() - started
    if summary.inputs != len(records) or result.folded != len(records):
        raise RuntimeError(f"{len(records)} inputs: {summary.inputs} replayed, {result.folded} folded by the diff")
    return summary.inputs / replay_s, result.folded / diff_s


async def figures(keys: int = KEYS, cycles: int = CYCLES, runs: int | None = None) -> list[Figure]:
    bootstrap, database_url = endpoints()
    runs = runs if runs is not None else runs_for("replay", 5)
    records = encoded_lifecycle(keys, cycles)
    warmup_records = encoded_lifecycle(keys, WARMUP_CYCLES)
    await measure(0, lambda: replay_once(bootstrap, database_url, warmup_records), label="replay warm-up")
    await measure(0, lambda: e2e_once("agent", bootstrap, database_url, warmup_records), label="e2e agent warm-up")
    replayed, diffed, agent = [], [], []
    for run in range(runs):
        replay_rate, diff_rate = await replay_once(bootstrap, database_url, records)
        replayed.append(replay_rate)
        diffed.append(diff_rate)
        agent.append(await e2e_once("agent", bootstrap, database_url, records))
        print(f"  run {run + 1}/{runs}: replay {replay_rate:,.0f}, diff {diff_rate:,.0f}, agent {agent[-1]:,.0f} "
              f"inputs/s", flush=True)
    load = f"{len(records):,} inputs (lifecycle mix), {keys:,} keys, 12 partitions"
    note = f"{runs} rounds after a warm-up" if runs < 5 else None
    agent_what = "the agent end to end (bench_e2e: one worker, rocksdb table, first to last audit record), same inputs"
    return [
        Figure("replay_vs_e2e", "inputs/s", replayed,
               f"`streams replay` (fold from an empty table, write the changelog, republish the updates), "
               f"wall time with the topic's reading; {load}", agent, agent_what, note=note),
        Figure("diff_vs_e2e", "inputs/s", diffed,
               f"`streams diff` (fold and compare with the recorded decisions), wall time with the topics' reading; "
               f"{load}", agent, agent_what, note=note),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=size_for("replay_keys", KEYS))
    parser.add_argument("--cycles", type=int, default=size_for("replay_cycles", CYCLES),
                        help="position lives per key (default BENCH_REPLAY_CYCLES or 5)")
    parser.add_argument("--runs", type=int, default=None, help="rounds (default BENCH_RUNS_REPLAY or 5)")
    arguments = parser.parse_args()
    report(asyncio.run(figures(arguments.keys, arguments.cycles, arguments.runs)))


if __name__ == "__main__":
    main()

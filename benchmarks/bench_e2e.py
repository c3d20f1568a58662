"""End to end on the real broker: the agent against a raw aiokafka loop and quixstreams, same inputs.

``python -m benchmarks.bench_e2e [--keys 1000] [--cycles 23] [--runs 5] [--peer-runs 5]``

Each run gets a fresh deployment (topics with 12 partitions) and the same inputs: whole
position lives from ``benchmarks.lifecycle`` (1,000 keys x 23 lives x 9 inputs = 207,000
inputs), published before the contender starts. The contender is its own process:

- ours: ``python -m streams worker`` (one worker, rocksdb table with its changelog,
  exchange edge off, deadlines far away);
- ``benchmarks.peer_aiokafka``: consume -> decide -> produce, batched acknowledgements;
- ``benchmarks.peer_quixstreams``: the same step in quixstreams with its RocksDB state.

A run ends when the contender's consumer group has committed every input (each commits
only after the outputs are acknowledged); its rate is the inputs divided by the time from
the first to the last audit record on ``position-updates``, by the records' own Kafka
timestamps (start-up, group join and recovery are not counted). The run checks that there
is exactly one audit record per input.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from benchmarks.figures import Figure, measure, report, runs_for
from benchmarks.harness import (
    Deployment,
    Worker,
    alive_check,
    audit_stamps,
    deployment,
    endpoints,
    produce_all,
    spawn,
    terminate,
    wait_until_committed,
)
from benchmarks.lifecycle import encoded_lifecycle

KEYS = 1_000
CYCLES = 23  # x 9 inputs x 1,000 keys = 207,000 inputs
WARMUP_CYCLES = 2
CONTENDERS = ("agent", "aiokafka", "quixstreams")


async def run_once(contender: str, bootstrap: str, database_url: str, records) -> float:
    """Inputs per second of one contender over ``records`` on a fresh deployment."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{contender}-") as scratch:
        scratch = Path(scratch)
        log_path = scratch / "contender.log"
        async with deployment(bootstrap, database_url, f"e2e-{contender}") as deployed:
            await produce_all(bootstrap, deployed.topics.inputs, records)
            process = launch(contender, deployed, scratch, log_path)
            try:
                await wait_until_committed(bootstrap, deployed.app_id, deployed.topics.inputs,
                                           timeout_s=120 + len(records) / 100, alive=alive_check(process, log_path))
                stamps = await audit_stamps(bootstrap, deployed.topics.updates)
            finally:
                terminate(process)
    if len(stamps) != len(records):
        raise RuntimeError(f"{contender}: {len(stamps)} audit records for {len(records)} inputs")
    return len(records) / ((stamps[-1] - stamps[0]) / 1000)


def launch(contender: str, deployed: Deployment, scratch: Path, log_path: Path):
    worker = Worker(deployed, scratch / "data", log_path)
    env = worker.environment()
    common = ["--bootstrap", deployed.bootstrap, "--prefix", deployed.prefix, "--group", deployed.app_id]
    if contender == "agent":
        worker.launch()
        return worker.process
    if contender == "aiokafka":
        return spawn("benchmarks.peer_aiokafka", common, env, log_path)
    if contender == "quixstreams":
        return spawn("benchmarks.peer_quixstreams", [*common, "--state-dir", str(scratch / "state")], env, log_path)
    raise ValueError(contender)


async def figures(keys: int = KEYS, cycles: int = CYCLES, runs: int | None = None,
                  peer_runs: int | None = None) -> list[Figure]:
    """``e2e_agent``, ``e2e_vs_raw_aiokafka`` and ``e2e_vs_quixstreams``.

    Rounds interleave the contenders (agent, aiokafka, quixstreams; then the peers alone
    for their extra runs), so a drift of the machine's load touches all of them.
    """
    bootstrap, database_url = endpoints()
    runs = runs if runs is not None else runs_for("e2e", 5)
    peer_runs = peer_runs if peer_runs is not None else runs_for("e2e_peers", 5)
    records = encoded_lifecycle(keys, cycles)
    warmup_records = encoded_lifecycle(keys, WARMUP_CYCLES)
    values: dict[str, list[float]] = {contender: [] for contender in CONTENDERS}
    for contender in CONTENDERS:
        await measure(0, lambda c=contender: run_once(c, bootstrap, database_url, warmup_records),
                      label=f"e2e {contender} warm-up ({len(warmup_records):,} inputs)")
    for round_ in range(max(runs, peer_runs)):
        for contender in CONTENDERS:
            if len(values[contender]) >= (runs if contender == "agent" else peer_runs):
                continue
            rate = await run_once(contender, bootstrap, database_url, records)
            values[contender].append(rate)
            print(f"  e2e {contender} run {len(values[contender])}: {rate:,.0f} inputs/s", flush=True)
    load = f"{len(records):,} inputs (lifecycle mix), {keys:,} keys, 12 partitions"
    ours = f"the agent: one `python -m streams worker`, rocksdb table + changelog; {load}"
    agent_note = (f"{runs} runs of {len(records):,} inputs (a run takes minutes at the agent's rate)"
                  if runs < 5 else None)
    return [
        Figure("e2e_agent", "inputs/s", values["agent"], ours, note=agent_note),
        Figure("e2e_vs_raw_aiokafka", "inputs/s", values["agent"], ours, values["aiokafka"],
               "raw aiokafka loop, same step, states in a dict, batched acks, commit after", note=agent_note),
        Figure("e2e_vs_quixstreams", "inputs/s", values["agent"], ours, values["quixstreams"],
               "quixstreams 3, same step, KeyState Avro bytes in its RocksDB state + changelog, at-least-once",
               note=agent_note),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=KEYS)
    parser.add_argument("--cycles", type=int, default=CYCLES)
    parser.add_argument("--runs", type=int, default=None, help="runs of the agent (default BENCH_RUNS_E2E or 5: the issue asks for at least 5)")
    parser.add_argument("--peer-runs", type=int, default=None, help="runs of each peer (default 5)")
    arguments = parser.parse_args()
    measured = asyncio.run(figures(arguments.keys, arguments.cycles, arguments.runs, arguments.peer_runs))
    report(measured)


if __name__ == "__main__":
    main()

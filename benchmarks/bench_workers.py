"""Scale-out: 1, 2 and 3 worker processes in one group on the same 12 partitions, same inputs.

``python -m benchmarks.bench_workers [--workers 1,2,3] [--keys 1000] [--cycles 3] [--runs 5]``

Each run gets a fresh deployment (12 partitions) and starts its N ``python -m streams
worker`` processes one after another (rocksdb store, each its own data dir, the deployment's
defaults otherwise: one standby replica of each table partition when there are two or more
workers), waits until each is ready and the consumer group is Stable with N members, and
only then publishes the inputs: whole position lives from ``benchmarks.lifecycle`` (1,000 keys
x 3 lives x 9 inputs = 27,000 by default), so no rebalance falls inside the run. The rate is
the inputs divided by the time from the first to the last audit record on
``position-updates`` (their Kafka timestamps), as ``bench_e2e`` measures it; the run checks
one audit record per input. During each run the machine's CPU use (/proc/stat) and the
workers' own (their utime + stime) are sampled: they say what limits the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.figures import Figure, measure, report, runs_for, size_for
from benchmarks.harness import (
    CpuMeter,
    Worker,
    audit_stamps,
    deployment,
    endpoints,
    produce_all,
    wait_group_stable,
    wait_until_committed,
)
from benchmarks.lifecycle import encoded_lifecycle

WORKERS = (1, 2, 3)
KEYS = 1_000
CYCLES = 3
WARMUP_CYCLES = 1


async def run_once(workers: int, bootstrap: str, database_url: str, records, usage: list) -> float:
    """Inputs per second of ``workers`` worker processes over ``records`` on a fresh deployment."""
    async with deployment(bootstrap, database_url, f"workers{workers}") as deployed:
        with tempfile.TemporaryDirectory(prefix=f"bench-workers{workers}-") as scratch:
            group = [Worker(deployed, Path(scratch) / f"data{n}", Path(scratch) / f"worker{n}.log")
                     for n in range(workers)]
            try:
                for worker in group:
                    await worker.start()
                await wait_group_stable(bootstrap, deployed.app_id, workers)
                await asyncio.sleep(2)  # each worker's (empty) table recovery after the last rebalance
                meter = CpuMeter(worker.process.pid for worker in group).start()
                await produce_all(bootstrap, deployed.topics.inputs, records)
                await wait_until_committed(bootstrap, deployed.app_id, deployed.topics.inputs,
                                           timeout_s=120 + len(records) / 100,
                                           alive=lambda: all(worker.ready for worker in group))
                usage.append(meter.stop())
            finally:
                for worker in group:
                    worker.stop()
        stamps = await audit_stamps(bootstrap, deployed.topics.updates)
    if len(stamps) != len(records):
        raise RuntimeError(f"{workers} workers: {len(stamps)} audit records for {len(records)} inputs")
    return len(records) / ((stamps[-1] - stamps[0]) / 1000)


async def figures(counts=WORKERS, keys: int = KEYS, cycles: int = CYCLES, runs: int | None = None) -> list[Figure]:
    """``e2e_workers_<N>`` for each N of ``counts``; rounds interleave the counts against load drift."""
    bootstrap, database_url = endpoints()
    runs = runs if runs is not None else runs_for("workers", 5)
    records = encoded_lifecycle(keys, cycles)
    warmup_records = encoded_lifecycle(keys, WARMUP_CYCLES)
    values: dict[int, list[float]] = {n: [] for n in counts}
    usage: dict[int, list[CpuMeter]] = {n: [] for n in counts}
    for n in counts:
        await measure(0, lambda n=n: run_once(n, bootstrap, database_url, warmup_records, []),
                      label=f"{n} worker(s) warm-up ({len(warmup_records):,} inputs)")
    for _round in range(runs):
        for n in counts:
            values[n].append(await run_once(n, bootstrap, database_url, records, usage[n]))
            print(f"  {n} worker(s) run {len(values[n])}/{runs}: {values[n][-1]:,.0f} inputs/s, machine "
                  f"{usage[n][-1].machine_busy:.0%} busy, workers {usage[n][-1].processes_cores:.2f} cores", flush=True)
    found = []
    for n in counts:
        busy = statistics.median(meter.machine_busy for meter in usage[n])
        cores = statistics.median(meter.processes_cores for meter in usage[n])
        found.append(Figure(
            f"e2e_workers_{n}", "inputs/s", values[n],
            f"{n} `python -m streams worker` process(es) in one group, rocksdb tables, the deployment's default "
            f"standby replica; {len(records):,} inputs (lifecycle mix), {keys:,} keys, 12 partitions; first to last "
            f"audit record",
            note="; ".join(part for part in (
                f"on {os.cpu_count()} cores the machine was {busy:.0%} busy during the runs (median), the workers "
                f"together used {cores:.2f} cores and the broker, this benchmark and the machine's other load the rest"
                + (": CPU-bound, and more worker processes share the same cores (and add the standby replicas' "
                   "changelog reads) rather than add CPU" if busy >= 0.9 else
                   f": {1 - busy:.0%} of the CPU was idle, so not CPU alone"),
                f"{runs} runs of each count after a warm-up" if runs < 5 else "") if part),
            extra={"machine_cpu_busy": [round(meter.machine_busy, 3) for meter in usage[n]],
                   "workers_cpu_cores": [round(meter.processes_cores, 2) for meter in usage[n]]}))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default=",".join(str(n) for n in WORKERS))
    parser.add_argument("--keys", type=int, default=size_for("workers_keys", KEYS))
    parser.add_argument("--cycles", type=int, default=size_for("workers_cycles", CYCLES),
                        help="position lives per key (default BENCH_WORKERS_CYCLES or 3)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each worker count (default BENCH_RUNS_WORKERS or 5)")
    arguments = parser.parse_args()
    report(asyncio.run(figures([int(n) for n in arguments.workers.split(",")], arguments.keys, arguments.cycles,
                               arguments.runs)))


if __name__ == "__main__":
    main()

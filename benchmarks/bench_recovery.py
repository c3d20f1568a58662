"""Recovery: a worker's restart to its first decision, with 100,000 keys in the table.

``python -m benchmarks.bench_recovery [--keys 100000] [--runs 5]``

One fresh deployment (12 partitions, ``position-commands`` stamped by the broker with
``LogAppendTime``). Its table is filled through the real worker: ``--keys`` open signals,
each on a key of its own, applied by one ``python -m streams worker`` (rocksdb store), which
leaves ``--keys`` KeyStates in the table and its changelog. Then, one worker at a time, each
run stops the running worker (SIGTERM, a clean shutdown) and starts a new one:

- ``recovery_100k_keys``: rocksdb store on the SAME data dir (the local store is there;
  only the changelog past its offsets is read);
- ``recovery_100k_keys_empty_dir``: rocksdb store on an EMPTY data dir (the whole table is
  restored from the changelog);
- ``recovery_100k_keys_memory``: the memory store (``memory://``), which restores the whole
  table from the changelog on every start.

A run's figure is the time from the process start (just before ``Popen``) to the first
decision of a new input produced right after the start: an open signal on a fresh key,
whose PlaceEntry's append time on ``position-commands`` ends the run. Python's start-up,
the group join, the table's recovery and Faust's start-up are all inside it. Each variant
has a warm-up run first. The figures keep their names at another ``--keys`` (the note and
``what`` say the size).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.figures import Figure, measure, report, runs_for, size_for
from benchmarks.harness import (
    Deployment,
    Worker,
    deployment,
    end_offsets,
    endpoints,
    first_record_stamp,
    produce_all,
    wait_until_committed,
)
from benchmarks.lifecycle import encoded_open_signals

KEYS = 100_000
RUN_TIMEOUT_S = 600.0

#: name suffix -> (store, whether each run gets an empty data dir)
VARIANTS = {"": ("rocksdb://", False), "_empty_dir": ("rocksdb://", True), "_memory": ("memory://", True)}


def ready_time(worker: Worker) -> float | None:
    """When this launch of ``worker`` logged Faust's "Ready" (epoch seconds; its log's local time, ms)."""
    with open(worker.log_path, "rb") as log:
        log.seek(worker.log_offset)
        for line in log.read().decode(errors="replace").splitlines():
            if "[^Worker]: Ready" in line:
                stamp, millis = line[1:line.index("]")].split(",")
                return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    return None


class Restarts:
    """Restarts of one deployment's only worker, each timed from process start to its first decision."""

    def __init__(self, deployed: Deployment, scratch: Path) -> None:
        self.deployed = deployed
        self.scratch = scratch
        self.worker: Worker | None = None
        self.count = 0
        self.ready_s: dict[str, list[float]] = {}

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            if self.worker.data_dir.name.startswith("empty-"):
                shutil.rmtree(self.worker.data_dir, ignore_errors=True)
            self.worker = None

    async def fill(self, keys: int) -> float:
        """Applies ``keys`` open signals (a key each) through a worker on the warm data dir: seconds, its start included."""
        await produce_all(self.deployed.bootstrap, self.deployed.topics.inputs, encoded_open_signals("F", keys))
        self.worker = Worker(self.deployed, self.scratch / "warm", self.scratch / "worker.log")
        started = time.monotonic()
        await self.worker.start()
        await wait_until_committed(self.deployed.bootstrap, self.deployed.app_id, self.deployed.topics.inputs,
                                   timeout_s=120 + keys / 50, alive=lambda: self.worker.ready)
        return time.monotonic() - started

    async def restart(self, variant: str) -> float:
        """Stops the worker, starts another of ``variant``; seconds from its start to its first decision."""
        store, empty = VARIANTS[variant]
        self.stop()
        self.count += 1
        data_dir = self.scratch / (f"empty-{self.count}" if empty else "warm")
        self.worker = worker = Worker(self.deployed, data_dir, self.scratch / "worker.log", store=store)
        key, value = encoded_open_signals(f"R{self.count}", 1)[0]
        since = await end_offsets(self.deployed.bootstrap, self.deployed.topics.commands)
        started = time.time()
        worker.launch()
        await produce_all(self.deployed.bootstrap, self.deployed.topics.inputs, [(key, value)])
        stamp_ms = await first_record_stamp(self.deployed.bootstrap, self.deployed.topics.commands, key, since,
                                            RUN_TIMEOUT_S, lambda: worker.ready)  # raises if the worker died
        ready = ready_time(worker)
        for _ in range(60):  # Faust may log "Ready" after the first decision: waited for, not timed
            if ready is not None:
                break
            await asyncio.sleep(0.5)
            ready = ready_time(worker)
        self.ready_s.setdefault(variant, []).append(round(ready - started, 2) if ready else None)
        return stamp_ms / 1000 - started


async def figures(keys: int = KEYS, runs: int | None = None) -> list[Figure]:
    runs = runs if runs is not None else runs_for("recovery", 5)
    bootstrap, database_url = endpoints()
    found: list[Figure] = []
    async with deployment(bootstrap, database_url, "recovery", log_append_time=["commands"]) as deployed:
        with tempfile.TemporaryDirectory(prefix="bench-recovery-") as scratch:
            restarts = Restarts(deployed, Path(scratch))
            try:
                fill_s = await restarts.fill(keys)
                print(f"  recovery: table filled with {keys:,} keys in {fill_s:.0f} s (worker start included)", flush=True)
                for variant, (store, empty) in VARIANTS.items():
                    values = await measure(runs, lambda v=variant: restarts.restart(v), label=f"recovery{variant}")
                    where = ("an empty data dir: the table restored from the changelog" if empty and store != "memory://"
                             else "the memory store: the table restored from the changelog" if empty
                             else "the same data dir: the local rocksdb store present")
                    found.append(Figure(
                        f"recovery_100k_keys{variant}", "s", values,
                        f"worker process start -> the PlaceEntry of an open signal produced after the start appended "
                        f"to position-commands; {keys:,} keys in the table, one worker, 12 partitions, {where}",
                        note="; ".join(part for part in (
                            f"measured with {keys:,} keys, not 100,000" if keys != KEYS else "",
                            f"{runs} runs after a warm-up (a run with the table's restore takes up to minutes)"
                            if runs < 5 else "") if part) or None,
                        extra={"keys": keys, "ready_s": restarts.ready_s[variant][1:],
                               "fill_s": round(fill_s, 1)}))
            finally:
                restarts.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=size_for("recovery_keys", KEYS),
                        help="keys in the table (default BENCH_RECOVERY_KEYS or 100,000)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each variant (default BENCH_RUNS_RECOVERY or 5)")
    arguments = parser.parse_args()
    report(asyncio.run(figures(arguments.keys, arguments.runs)))


if __name__ == "__main__":
    main()

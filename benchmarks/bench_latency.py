"""Decision latency: an open signal appended to ``position-inputs`` -> its PlaceEntry appended to ``position-commands``.

``python -m benchmarks.bench_latency [--rates 300,1000,5000] [--seconds 5] [--runs N]``

Each contender runs on a fresh deployment whose ``position-commands`` is created with
``message.timestamp.type=LogAppendTime`` (the pipeline creates ``position-inputs`` so): both
ends are stamped by the broker as the records are appended, one clock. A run offers open
signals, each for a key of its own, at a steady rate for ``--seconds`` (paced by the
producer; nothing waits for the contender), and each signal's latency is its PlaceEntry's
append time minus its own. The contenders, measured in the same run on the same broker:

- ours: one ``python -m streams worker`` (12 partitions, rocksdb table with its changelog);
- the peer: ``benchmarks.peer_aiokafka``, the same decode -> decide -> encode step in a raw
  aiokafka loop with batched acknowledgements (``getmany`` every 200 ms at most when idle);
- the floor: ``benchmarks.peer_echo``, a raw aiokafka loop that copies each input to
  ``position-commands`` as it comes, doing nothing else (``latency_floor_<stat>_at_<rate>``):
  what the broker and one Python client on this machine cost before any work.

Figures per rate: p50, p99 and max over each run's inputs; median / min / max over runs. A
contender that cannot keep up with the offered rate shows it as latency growing through the
run: nothing is dropped. The offered rate actually achieved is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from pathlib import Path

from aiokafka import AIOKafkaProducer

from benchmarks.figures import Figure, report, runs_for
from benchmarks.harness import (
    Deployment,
    Worker,
    alive_check,
    deployment,
    endpoints,
    read_topic,
    spawn,
    terminate,
    wait_until_committed,
)
from benchmarks.lifecycle import encoded_open_signals

# The figures are at 1,000 and 5,000 inputs/s (decision_latency_p99_at_1000 is the target);
# 300/s shows the agent below its capacity on two cores.
RATES = (300, 1_000, 5_000)
SECONDS = 5.0
CONTENDERS = ("agent", "aiokafka", "echo")
PEER_MODULES = {"aiokafka": "benchmarks.peer_aiokafka", "echo": "benchmarks.peer_echo"}


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def offer(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float) -> None:
    """Publishes ``records`` at ``rate`` per second (each sent at its slot, never waiting for an ack first)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        pending = []
        for index, (key, value) in enumerate(records):
            delay = started + index / rate - loop.time()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            pending.append(await producer.send(topic, key=key, value=value))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def run_once(deployed: Deployment, alive, tag: str, rate: int, seconds: float) -> dict[str, float]:
    """One run: latencies (ms) of ``rate * seconds`` open signals on fresh keys."""
    records = encoded_open_signals(tag, int(rate * seconds))
    keys = {key for key, _value in records}
    await offer(deployed.bootstrap, deployed.topics.inputs, records, rate)
    await wait_until_committed(deployed.bootstrap, deployed.app_id, deployed.topics.inputs,
                               timeout_s=120 + len(records) / 50, alive=alive, poll_s=0.2)
    appended = {found.key: found.timestamp for partition in (await read_topic(deployed.bootstrap,
                                                                              deployed.topics.inputs)).values()
                for found in partition if found.key in keys}
    commanded: dict[bytes, int] = {}
    for partition in (await read_topic(deployed.bootstrap, deployed.topics.commands)).values():
        for found in partition:
            if found.key in keys:
                commanded.setdefault(found.key, found.timestamp)  # one PlaceEntry per fresh key
    if len(commanded) != len(keys) or len(appended) != len(keys):
        raise RuntimeError(f"{len(keys)} signals, {len(appended)} on the inputs log, {len(commanded)} commands")
    latencies = sorted(commanded[key] - appended[key] for key in keys)
    stamps = sorted(appended.values())
    offered = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000) if stamps[-1] > stamps[0] else float("inf")
    return {"p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99), "max": latencies[-1],
            "offered": offered}


async def measure_contender(contender: str, rates: list[int], seconds: float,
                            runs: dict[int, int]) -> dict[int, list[dict[str, float]]]:
    """Every run of every rate for one contender, on its own fresh deployment."""
    bootstrap, database_url = endpoints()
    results: dict[int, list[dict[str, float]]] = {}
    async with deployment(bootstrap, database_url, f"latency-{contender}", log_append_time=["commands"]) as deployed:
        with tempfile.TemporaryDirectory(prefix=f"bench-latency-{contender}-") as scratch:
            log_path = Path(scratch) / "contender.log"
            worker = Worker(deployed, Path(scratch) / "data", log_path)
            if contender == "agent":
                await worker.start()
                process = worker.process
            else:
                process = spawn(PEER_MODULES[contender], ["--bootstrap", deployed.bootstrap, "--prefix",
                                                             deployed.prefix, "--group", deployed.app_id],
                                worker.environment(), log_path)
            alive = alive_check(process, log_path)
            try:
                for rate in rates:
                    await run_once(deployed, alive, f"{contender[0]}w{rate}", rate, min(seconds, 2.0))  # warm-up
                    results[rate] = []
                    for run in range(runs[rate]):
                        results[rate].append(await run_once(deployed, alive, f"{contender[0]}r{rate}x{run}", rate, seconds))
                        print(f"  {contender} at {rate}/s run {run + 1}/{runs[rate]}: "
                              + ", ".join(f"{name} {value:,.0f}" for name, value in results[rate][-1].items()),
                              flush=True)
            finally:
                terminate(process)
    return results


async def figures(rates: list[int], seconds: float = SECONDS, runs: int | None = None) -> list[Figure]:
    """``decision_latency_<p50|p99|max>_at_<rate>``: the agent's, beside the raw aiokafka loop's;
    ``latency_floor_<p50|p99|max>_at_<rate>``: the echo's (``benchmarks.peer_echo``)."""
    counts = {rate: runs if runs is not None else runs_for(f"latency_{rate}", 5) for rate in rates}
    measured = {contender: await measure_contender(contender, rates, seconds, counts) for contender in CONTENDERS}
    found: list[Figure] = []
    for rate in rates:
        what = (f"open signal on a fresh key appended -> its PlaceEntry appended (broker LogAppendTime on both), "
                f"offered {rate:,}/s for {seconds:g} s ({int(rate * seconds):,} inputs) per run; "
                f"one worker, 12 partitions, rocksdb")
        extra = {"offered_rate_achieved": [round(r["offered"]) for r in measured["agent"][rate]]}
        for stat in ("p50", "p99", "max"):
            found.append(Figure(f"decision_latency_{stat}_at_{rate}", "ms", [r[stat] for r in measured["agent"][rate]],
                                what, [r[stat] for r in measured["aiokafka"][rate]],
                                "raw aiokafka loop, same step, batched acknowledgements", extra=extra))
            found.append(Figure(f"latency_floor_{stat}_at_{rate}", "ms", [r[stat] for r in measured["echo"][rate]],
                                f"input appended -> its copy appended by a raw aiokafka loop doing nothing else "
                                f"(benchmarks.peer_echo), offered {rate:,}/s for {seconds:g} s per run",
                                extra={"offered_rate_achieved": [round(r["offered"]) for r in measured["echo"][rate]]}))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES))
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--runs", type=int, default=None, help="runs per rate and contender (default 5, BENCH_RUNS_LATENCY_<rate>)")
    arguments = parser.parse_args()
    measured = asyncio.run(figures([int(rate) for rate in arguments.rates.split(",")], arguments.seconds,
                                   arguments.runs))
    report(measured)


if __name__ == "__main__":
    main()

"""The benchmark report: every figure of ``benchmarks/results/latest.json`` as one markdown table, and the machine.

``python -m benchmarks.table [--path benchmarks/results/latest.json]`` (the last step of
``make bench``): what the README's benchmark section reproduces.
"""

from __future__ import annotations

import argparse
import os
import platform
from importlib import metadata
from pathlib import Path

from benchmarks.figures import RESULTS_PATH, TABLE_HEADER, load, row_of


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _memory_gib() -> str:
    with open("/proc/meminfo") as meminfo:
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return f"{kib / 1024 ** 2:.1f} GiB"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")


def _kafka_version() -> str:
    """The local stack's Kafka (what ``make bench`` measures against unless the variables name another broker)."""
    from stack.layout import KAFKA_VERSION

    return KAFKA_VERSION if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else f"{KAFKA_VERSION} (if the local stack's)"


def machine() -> str:
    """One line: cores, memory, CPU, OS, and the versions of Python, Faust, aiokafka and Kafka."""
    return (f"{os.cpu_count()} cores ({_cpu_model()}), {_memory_gib()} memory, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, faust-streaming {_version('faust-streaming')}, "
            f"aiokafka {_version('aiokafka')}, quixstreams {_version('quixstreams')}, Kafka {_kafka_version()} "
            f"(single broker, KRaft)")


def render(figures: list[dict]) -> str:
    return "\n".join([TABLE_HEADER, *(row_of(figure) for figure in figures)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=RESULTS_PATH)
    arguments = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print(render(load(arguments.path)))


if __name__ == "__main__":
    main()

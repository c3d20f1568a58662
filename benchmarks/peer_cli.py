"""The command line every peer process of the benchmarks takes: where the broker is, the topics' prefix, the group."""

from __future__ import annotations

import argparse


def peer_arguments(description: str, *more: str) -> argparse.Namespace:
    """``--bootstrap``, ``--prefix``, ``--group`` and each of ``more`` (``"--state-dir"``), all required."""
    parser = argparse.ArgumentParser(description=description)
    for option in ("--bootstrap", "--prefix", "--group", *more):
        parser.add_argument(option, required=True)
    return parser.parse_args()

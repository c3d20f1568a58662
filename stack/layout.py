"""What the local stack runs and where it keeps it: versions, folders, endpoints, its error.

Everything the stack writes (data, logs, pid files, chosen ports) lives under one
git-ignored folder, ``.stack/``; the Kafka jars live in a cache shared by every checkout.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KAFKA_VERSION", "POSTGRES_MAJOR", "REPO_ROOT", "StackEndpoints", "StackError", "StackPaths", "log"]

KAFKA_VERSION = "4.1.1"
POSTGRES_MAJOR = "15"

REPO_ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    """A stack component could not be installed, started, reached or stopped."""


@dataclass(frozen=True)
class StackEndpoints:
    """Where the running stack answers."""

    kafka_bootstrap_servers: str
    database_url: str

    def env_lines(self) -> list[str]:
        """The shell lines that point the pipeline and the tests at this stack."""
        return [
            f"export KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers}",
            f"export DATABASE_URL={self.database_url}",
        ]


@dataclass(frozen=True)
class StackPaths:
    """The folders the stack uses; ``root`` holds data and logs, ``cache`` the Kafka jars."""

    root: Path
    cache: Path

    @classmethod
    def from_environment(cls) -> "StackPaths":
        """``$STACK_DIR`` (default ``.stack/`` in the repository) and ``$STACK_CACHE_DIR`` (default under XDG)."""
        root = Path(os.environ.get("STACK_DIR", REPO_ROOT / ".stack")).resolve()
        cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        cache = Path(os.environ.get("STACK_CACHE_DIR", cache_home / "position-pipeline")).resolve()
        return cls(root=root, cache=cache)

    @property
    def kafka(self) -> Path:
        """The broker's folder: configuration, data, logs, pid file."""
        return self.root / "kafka"

    @property
    def postgres(self) -> Path:
        """The cluster's folder (a link to /var/tmp when running as root, see ``postgres_cluster``)."""
        return self.root / "postgres"

    @property
    def kafka_libs(self) -> Path:
        """The cached jars of Kafka ``KAFKA_VERSION`` and its runtime dependencies."""
        return self.cache / f"kafka-{KAFKA_VERSION}" / "libs"


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the variables to eval."""
    print(f"[stack] {message}", file=sys.stderr, flush=True)

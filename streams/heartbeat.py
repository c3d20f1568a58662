"""Liveness heartbeats for the processes that serve no HTTP: the PostgreSQL sink and the ingest.

The process calls ``touch(path)`` from its main loop (also while it waits out an outage:
the heartbeat says the loop turns, not that the database or the feed answers); a probe runs

    python -m streams.heartbeat check /tmp/heartbeat/sink --max-age 60

which exits 0 when the file holds a time at most ``--max-age`` seconds old and 1 otherwise
(missing, unreadable, malformed or stale), with the reason on stderr. Kubernetes uses it as
an exec liveness/readiness probe, docker compose as a healthcheck.

The file holds the wall-clock time (epoch seconds) as text and is replaced atomically
(write a temporary file beside it, then rename), so a probe never reads a half-written
value. This module reads no environment variable: the caller passes the path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path


def touch(path: str | os.PathLike[str], now: float | None = None) -> None:
    """Records ``now`` (default: the current time) in ``path``, atomically; creates the directory."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.time() if now is None else now:.3f}\n"
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(stamp)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class Heartbeat:
    """``touch`` at most once per ``min_interval_s``: cheap enough to call on every loop turn."""

    def __init__(self, path: str | os.PathLike[str], min_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self._last = float("-inf")

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.min_interval_s:
            touch(self.path)
            self._last = now


async def beat_while_running(path: str | os.PathLike[str], interval_s: float = 10.0) -> None:
    """Touches ``path`` every ``interval_s`` for as long as the event loop runs it.

    The liveness probe's evidence that the process's event loop still turns; cancel the
    task to stop.
    """
    heartbeat = Heartbeat(path, min_interval_s=0.0)
    while True:
        heartbeat.beat()
        await asyncio.sleep(interval_s)


def age(path: str | os.PathLike[str], now: float | None = None) -> float:
    """Seconds since the time recorded in ``path``; raises ``OSError``/``ValueError`` when unreadable."""
    recorded = float(Path(path).read_text().strip())
    return (time.time() if now is None else now) - recorded


def check(path: str | os.PathLike[str], max_age_s: float, now: float | None = None) -> tuple[bool, str]:
    """(fresh, reason): fresh when ``path`` records a time at most ``max_age_s`` seconds old."""
    try:
        seconds = age(path, now)
    except FileNotFoundError:
        return False, f"{path}: no heartbeat yet"
    except (OSError, ValueError) as error:
        return False, f"{path}: unreadable heartbeat ({error})"
    if seconds > max_age_s:
        return False, f"{path}: last heartbeat {seconds:.1f}s ago (more than {max_age_s:g}s)"
    return True, f"{path}: last heartbeat {max(seconds, 0.0):.1f}s ago"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.heartbeat", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="exit 0 when the heartbeat file is fresh, 1 otherwise")
    check_parser.add_argument("path")
    check_parser.add_argument("--max-age", type=float, default=60.0, metavar="SECONDS",
                              help="oldest acceptable heartbeat, in seconds (default 60)")
    check_parser.add_argument("--quiet", action="store_true", help="print nothing when fresh")
    touch_parser = commands.add_parser("touch", help="record the current time (for tests and by hand)")
    touch_parser.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "touch":
        touch(args.path)
        return 0
    fresh, reason = check(args.path, args.max_age)
    if not fresh:
        print(reason, file=sys.stderr)
        return 1
    if not args.quiet:
        print(reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())

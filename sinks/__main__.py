"""`python -m sinks`: run the PostgreSQL sink with ``Settings.from_env()`` until SIGTERM/SIGINT.

Exits 0 on a requested stop, 1 when the sink hits something no retry can fix (a failed
migration): its offsets stay uncommitted, so nothing is lost. A row PostgreSQL refuses is
dead-lettered and counted on ``/metrics``, and the sink goes on.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from sinks.exceptions import SinkError
from sinks.postgres import run_sink
from streams.settings import Settings


def main() -> int:
    """Runs the sink until it is stopped; the exit status (0 or 1) as the module docstring says."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    try:
        asyncio.run(run_sink(settings))
    except SinkError as error:
        logging.getLogger("sinks").critical("postgres sink stopped: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m streams <command>`: the pipeline's stream processor and its tools.

- ``worker [faust worker options]``: run the stream processor. Creates the topics when
  missing (and refuses ones with another partition count) before the worker joins the
  consumer group.
- ``replay``: rebuild the table from the inputs log and re-drive the sink (workers stopped).
- ``diff``: replay the recorded inputs through this code and policy, list every decision
  that differs; touches nothing (not even a missing topic).

The command line goes to Faust, which dispatches the command.
"""

from __future__ import annotations

import asyncio
import sys

from streams.worker.app import build_pipeline
from streams.worker.collector import freeze_startup_heap, tune_thresholds
from streams.ops.commands import add_diff_command, add_replay_command
from streams.settings import Settings
from streams.topics import ensure_topics


def main() -> None:
    settings = Settings.from_env()
    worker = "worker" in sys.argv[1:]
    if worker:
        asyncio.run(ensure_topics(settings))
        tune_thresholds()  # short, rare collector pauses (streams.worker.collector)
    app = build_pipeline(settings).app
    if worker:
        @app.task
        async def freeze_once_ready() -> None:
            """Exempts the started worker's objects from garbage collection once its first recovery is done."""
            await app.tables.recovery.completed.wait()
            freeze_startup_heap()
    add_replay_command(app, settings)
    add_diff_command(app, settings)
    app.main()


if __name__ == "__main__":
    main()

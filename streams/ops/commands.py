"""``python -m streams replay`` and ``python -m streams diff``: the tools as commands of the Faust app.

Faust dispatches the command line (``app.main()``); these add the two tools to the app the
worker runs, so they read the same settings. They are registered by ``streams.__main__``,
the composition root, so the worker's wiring never imports the tools.
"""

from __future__ import annotations

import sys
from typing import Any

import faust

from streams.settings import Settings


def add_replay_command(app: faust.App, settings: Settings) -> None:
    """Adds ``replay``: rebuild the table from the inputs log and re-drive the sink (workers stopped)."""
    from faust.cli import option

    @app.command(
        option("--from-offset", type=int, default=None,
               help="Replay every partition from this offset (default: the log start)."),
        option("--from-timestamp", type=int, default=None,
               help="Replay from the first input at or after this epoch-ms time."),
        option("--truncate-sink", is_flag=True, default=False,
               help="Empty monitoring.positions and monitoring.position_events before re-driving the sink."),
        option("--force", is_flag=True, default=False,
               help="Skip the check that no worker of the group is running."),
        option("--allow-partial", is_flag=True, default=False,
               help="Allow --truncate-sink when the replay does not start at offset 0 of the log."),
        option("--no-progress", is_flag=True, default=False, help="No progress bar."),
    )
    async def replay(self: Any, from_offset: int | None, from_timestamp: int | None, truncate_sink: bool,
                     force: bool, allow_partial: bool, no_progress: bool) -> None:
        """Rebuild the table from position-inputs and re-drive the sink (stop the workers first)."""
        from streams.ops.replay import ReplayRefused
        from streams.ops.replay import replay as run_replay

        try:
            summary = await run_replay(settings, from_offset=from_offset, from_timestamp_ms=from_timestamp,
                                       truncate_sink=truncate_sink, force=force, progress=not no_progress,
                                       allow_partial_truncate=allow_partial)
        except ReplayRefused as refusal:
            raise SystemExit(f"replay refused: {refusal}") from None
        self.say(summary.render())


def add_diff_command(app: faust.App, settings: Settings) -> None:
    """Adds ``diff``: replay the recorded inputs through this code and policy, list what differs."""
    from faust.cli import option

    @app.command(
        option("--from-offset", type=int, default=0, help="Compare inputs from this offset of each partition."),
        option("--to-offset", type=int, default=None, help="Compare inputs up to this offset (inclusive)."),
        option("--policy", "policy_file", type=str, default=None,
               help="JSON file of policy fields to change in the policy recorded in each input."),
        option("--set", "assignments", multiple=True, default=(),
               help="Policy field to change, FIELD=VALUE (repeatable), e.g. --set default_stop_loss_pct=3."),
        option("--json", "json_file", type=str, default=None, help="Also write every difference to this JSON file."),
        option("--no-progress", is_flag=True, default=False, help="No progress bar."),
    )
    async def diff(self: Any, from_offset: int, to_offset: int | None, policy_file: str | None,
                   assignments: tuple[str, ...], json_file: str | None, no_progress: bool) -> None:
        """Replay the recorded inputs through this code and policy; list every decision that differs (exit 1 if any)."""
        from pathlib import Path

        from streams.ops.diff import DiffError, diff_decisions, load_policy_file, policy_overrides, write_json

        try:
            overrides = load_policy_file(Path(policy_file)) if policy_file else {}
            for assignment in assignments:
                name, equals, value = assignment.partition("=")
                if not equals:
                    raise DiffError(f"--set takes FIELD=VALUE, got {assignment!r}")
                overrides[name.strip()] = value.strip()
            typed = policy_overrides(settings.policy(), overrides)
            result = await diff_decisions(settings, overrides=typed, from_offset=from_offset, to_offset=to_offset,
                                          progress=not no_progress)
        except DiffError as error:
            print(f"diff: {error}", file=sys.stderr)
            raise SystemExit(2) from None  # 1 means "decisions differ": a deploy gate must tell them apart
        if json_file:
            write_json(result, Path(json_file))
        self.say(result.render())
        if result.differences:
            raise SystemExit(1)


__all__ = ["add_diff_command", "add_replay_command"]

"""Which background parts of this process are failing right now, for ``/ready``.

A part that runs on its own (the exchange poller's follower of the tracked keys, the
order-attempt ledger's follower, the position poll) reports here when it fails and when it
works again; ``GET /ready`` answers 503 with the reasons while any is failing, so a failure
that would otherwise leave the worker quietly doing nothing is visible. Process-wide, like
the Prometheus registry in ``streams.telemetry.metrics``.
"""

from __future__ import annotations

import threading

__all__ = ["problems", "set_failing", "set_healthy"]

_lock = threading.Lock()
_failing: dict[str, str] = {}


def set_failing(component: str, reason: str) -> None:
    """`component` is failing, for `reason` (shown by /ready; never a secret)."""
    with _lock:
        _failing[component] = reason[:300]


def set_healthy(component: str) -> None:
    """`component` works (again)."""
    with _lock:
        _failing.pop(component, None)


def problems() -> dict[str, str]:
    """The failing components and why, by name."""
    with _lock:
        return dict(_failing)

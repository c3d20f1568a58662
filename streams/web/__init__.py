"""The worker's web server (positions views, HTML page, health, readiness) and the pipeline's metrics.

``register_web(app, settings, table)`` is called once by ``streams.worker.app.build_pipeline``;
``streams.telemetry.metrics`` holds the Prometheus metrics any module may count into. The server
module is imported only when registering, so a process that only counts (the sink, the
ingest) does not load the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings
    from streams.web.server import PositionsWebServer

__all__ = ["register_web"]


def register_web(app: Any, settings: "Settings", table: Any) -> "PositionsWebServer":
    """Puts the web server, metrics and log format on the Faust ``app`` (see ``streams.web.server.register_web``)."""
    from streams.web.server import register_web as register

    return register(app, settings, table)

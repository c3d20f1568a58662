"""The web server on a Faust app: advertised URL, Faust's own views off, its sensor, log format, boot order.

``register_web`` is called once by ``streams.worker.app.build_pipeline``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from streams.settings import Settings
from streams.web.server import PositionsWebServer, advertised_url

__all__ = ["register_web"]


def _start_with_the_web_slot(app: Any, server: PositionsWebServer) -> None:
    """Makes the boot strategy start ``server`` where Faust's own web server starts.

    ``App.BootStrategy`` is Faust's documented extension point; the subclass is made from
    the app's current strategy class so any other customisation of it is kept.
    """
    current = app.boot_strategy

    class _EarlyWebServer(type(current)):  # type: ignore[misc]
        def web_server(self) -> list:
            return [server] if self._should_enable_web() else []

    strategy = _EarlyWebServer(app)
    strategy.__dict__.update(current.__dict__)
    app.boot_strategy = strategy


def _install_faust_sensor(app: Any) -> CollectorRegistry | None:
    """Faust's Prometheus sensor, in a registry of its own (one per app: tests build several)."""
    try:
        from faust.sensors.prometheus import FaustMetrics
        from streams.telemetry.faust_monitor import CachedLabelsMonitor
    except ImportError:  # pragma: no cover - prometheus-client is a dependency
        return None
    registry = CollectorRegistry(auto_describe=True)
    # A fixed "faust" prefix rather than the app id, so dashboards do not depend on it.
    app.monitor = CachedLabelsMonitor(metrics=FaustMetrics.create(registry, "faust"))
    return registry


def register_web(app: Any, settings: Settings, table: Any) -> PositionsWebServer:
    """Puts the positions web server, metrics and log format on ``app``; call once, in ``build_pipeline``.

    - advertises ``advertised_url(settings)`` as the worker's canonical URL (what the
      assignment tells other workers; with the default bind 127.0.0.1 Faust would advertise
      the host name, which need not lead back to 127.0.0.1);
    - turns Faust's built-in web views off (also for the legacy stack, should anything
      start it);
    - installs Faust's Prometheus sensor and, with ``LOG_FORMAT=json``, JSON log lines;
    - registers the server with ``app.web_server`` and starts it with the producer.
    """
    from streams.telemetry.logging import faust_logging_config

    app.conf.web_host = advertised_url(settings).host
    app.conf.canonical_url = str(advertised_url(settings))
    for flag in ("web_tables_enabled", "web_router_enabled", "web_graph_enabled", "web_stats_enabled",
                 "web_metrics_enabled"):
        setattr(app.conf, flag, False)
    logging_config = faust_logging_config(settings.log_format)
    if logging_config is not None:
        app.conf.logging_config = logging_config
    server = PositionsWebServer(app, settings, table, faust_registry=_install_faust_sensor(app))
    app.web_server(server)
    _start_with_the_web_slot(app, server)
    return server

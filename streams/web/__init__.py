"""The worker's web server: positions views, the HTML page and timelines, metrics, health and readiness.

``register_web(app, settings, table)`` (``streams.web.faust_hooks``) is called once by
``streams.worker.app.build_pipeline``. Metrics live in ``streams.telemetry``, so a process
that only counts (the sink, the ingest) never loads the web stack.
"""

"""Structured logs: one JSON object per line when ``LOG_FORMAT=json``, plain text otherwise.

The Faust worker configures logging itself when it starts (``mode.Worker``), from the
app's ``logging_config`` setting; ``faust_logging_config`` gives it a configuration whose
only handler writes JSON lines. Processes that are not Faust workers (the sink, the
ingest) call ``configure_logging`` instead.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "faust_logging_config"]

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is kept.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time (UTC, ISO-8601), level, logger, message, extras.

    An exception's traceback goes in ``exc_info`` as text, so a record is always one line.
    Values JSON cannot hold (decimals, paths...) are written with ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                document[name] = value
        if record.exc_info:
            document["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def faust_logging_config(log_format: str) -> dict | None:
    """The ``logging_config`` for a Faust app: JSON lines on stdout for ``json``, None (Faust's own) else.

    ``merge`` keeps the root logger and level the worker sets up and replaces only its
    ``default`` handler (which otherwise writes coloured text).
    """
    if log_format != "json":
        return None
    return {
        "version": 1,
        "merge": True,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stdout"}},
    }


def configure_logging(log_format: str = "text", level: int | str = logging.INFO) -> None:
    """Sets up the root logger of a process that is not a Faust worker (text or JSON lines on stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

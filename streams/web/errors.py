"""The web server's error root."""

from __future__ import annotations

from streams.domain.exceptions import PipelineError

__all__ = ["WebError"]


class WebError(PipelineError):
    """An answer the web server cannot give in full (a peer or the database away)."""

"""The operators' tools' error root."""

from __future__ import annotations

from streams.domain.exceptions import PipelineError

__all__ = ["OpsError"]


class OpsError(PipelineError):
    """A replay or a diff that cannot be done as asked (the message says why and what to do)."""

"""The exchange edge's error root."""

from __future__ import annotations

from streams.domain.exceptions import PipelineError

__all__ = ["ExchangeError"]


class ExchangeError(PipelineError):
    """Something the exchange edge could not do: the exchange's answer, the attempt ledger, a placement."""

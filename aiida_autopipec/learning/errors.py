"""The exception of bad datasets, below every module of the core that raises it (no import cycle)."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset cannot be used for fitting; the message names the structure and the problem."""

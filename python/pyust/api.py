"""The original prototype's API: ``from pyust import api; api.enable_ust()``."""

from __future__ import annotations

from . import disable, enable

__all__ = ["disable_ust", "enable_ust"]


def enable_ust() -> None:
    """Start emitting ``python:*`` events (same as :func:`pyust.enable`)."""
    enable()


def disable_ust() -> None:
    """Stop emitting events (same as :func:`pyust.disable`)."""
    disable()

"""The original prototype's API: ``from pyust import api; api.enable_ust()``.

The same native functions as :func:`pyust.enable` and :func:`pyust.disable`
(no Python frame of pyust shows in the trace).
"""

from . import _pyust

__all__ = ["disable_ust", "enable_ust"]

#: Start emitting ``python:*`` events (same as :func:`pyust.enable`).
enable_ust = _pyust.enable
#: Stop emitting events (same as :func:`pyust.disable`).
disable_ust = _pyust.disable

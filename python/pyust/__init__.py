"""pyust: trace what a CPython program does into LTTng-UST.

Every Python function entry and exit, every call into C and every exception
becomes a ``python:*`` LTTng-UST event, recorded by any LTTng session that
enables them. ``python -m pyust --help`` shows the command line.

The API is native (``pyust._pyust``), so that no frame of pyust itself ever
shows in a trace.
"""

import os

from . import _pyust

__version__: str = _pyust.__version__

#: Start emitting ``python:*`` events, for every thread. Idempotent.
enable = _pyust.enable
#: Stop emitting events, for every thread. Idempotent.
disable = _pyust.disable
#: Whether tracing is enabled.
is_enabled = _pyust.is_enabled
#: Whether some LTTng session currently records ``python:call``.
session_active = _pyust.session_active
#: ``with pyust.tracing(): ...`` or ``@pyust.tracing()``: trace a block or a function.
tracing = _pyust.Tracing
#: How this interpreter is hooked: ``"sys.monitoring"`` (3.12+) or ``"profile"``.
backend = _pyust.backend

__all__ = [
    "__version__",
    "backend",
    "disable",
    "enable",
    "is_enabled",
    "session_active",
    "tracing",
]

# LTTng-UST's fork protocol: the child of os.fork() re-registers with the
# session daemon and keeps tracing under its own vpid.
os.register_at_fork(
    before=_pyust._before_fork,
    after_in_parent=_pyust._after_fork_parent,
    after_in_child=_pyust._after_fork_child,
)

"""`record`'s watch of the output folder's disk: a full disk or a vanished
folder stops the recording with one line, not a traceback.
"""

from __future__ import annotations

import os
import threading
import time

from .lttng import _run_lttng


class DiskWatch:
    """Stops the recording before the trace's disk is full.

    LTTng's consumer writing into a full disk leaves a trace nothing can
    read (its metadata may never be written). So while the program runs,
    this thread looks at the free space of the output's file system every
    50 ms; when what is left is less than `margin` (room for the ring
    buffers' flush and the metadata) plus four times what the last
    interval took (a fast disk fills by hundreds of MB per second), it
    stops the session (`lttng stop`): the trace ends there, complete, and
    the program runs on untraced.
    """

    INTERVAL = 0.05

    def __init__(self, lttng: str, session: str, output: str, margin: int) -> None:
        self.lttng = lttng
        self.session = session
        self.output = output
        self.margin = margin
        self.stopped_at: float | None = None
        self.free_then = 0
        self.started = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="pyust-disk", daemon=True)
        self.thread.start()

    def free(self) -> int | None:
        path = self.output
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _serve(self) -> None:
        last = self.free()
        while not self.done.wait(self.INTERVAL):
            free = self.free()
            if free is None or last is None:
                last = free
                continue
            taken, last = max(last - free, 0), free
            if free < self.margin + 4 * taken:
                self.stopped_at = time.monotonic() - self.started
                self.free_then = free
                _run_lttng(self.lttng, "stop", self.session)
                return

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)

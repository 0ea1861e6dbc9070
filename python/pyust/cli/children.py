"""`record`'s isolation: the processes a recording tracks (its program and
the program's children), through the control socket they join by.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable

from .lttng import _lttng_error, _run_lttng


class Tracker:
    """`record`'s side of process isolation.

    The session tracks no process at first (`lttng untrack --all --vpid`).
    Each process of the recorded program -- the one `record` starts and
    every child it forks -- connects to this control socket before its
    first event and waits; the tracker adds the peer's pid (from the
    kernel, SO_PEERCRED) to the session's vpid inclusion set, which
    returns once LTTng has set up that process for the session, and
    answers ``go``. So the trace holds the program and its forks, and no
    other process that emits ``python:*`` events meanwhile. Pids of
    processes that have ended leave the set, so a recycled pid is not
    recorded.
    """

    def __init__(
        self, lttng: str, session: str, on_track: Callable[[list[int]], None] | None = None
    ) -> None:
        self.lttng = lttng
        self.session = session
        self.on_track = on_track
        self.tracked: set[int] = set()
        self.refused = 0
        self.folder = tempfile.mkdtemp(prefix="pyust-record-")
        self.path = os.path.join(self.folder, "control")
        if len(os.fsencode(self.path)) > 100:  # beyond a socket address's room
            os.rmdir(self.folder)
            self.folder = tempfile.mkdtemp(prefix="pyust-record-", dir="/tmp")
            self.path = os.path.join(self.folder, "control")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._serve, name="pyust-tracker", daemon=True)
        self.thread.start()

    def close(self) -> None:
        os.write(self.wake_w, b"x")
        self.thread.join(timeout=10)
        self.listener.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _serve(self) -> None:
        while True:
            watched: list[socket.socket | int] = [self.listener, self.wake_r]
            ready, _, _ = select.select(watched, [], [], 1.0)
            if self.wake_r in ready:
                return
            self._forget_ended()
            if self.listener in ready:
                self._answer(self._pending())

    def _pending(self) -> list[tuple[socket.socket, int]]:
        """Every connection waiting now (a Pool forks its workers at once:
        one `lttng track` for all of them), with the peer's pid."""
        waiting: list[tuple[socket.socket, int]] = []
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # none left waiting (BlockingIOError), or closed
                return waiting
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            waiting.append((conn, struct.unpack("3i", creds)[0]))

    def _answer(self, waiting: list[tuple[socket.socket, int]]) -> None:
        new = sorted({pid for _, pid in waiting if pid > 0} - self.tracked)
        failure = b"no its pid is not visible to pyust record\n"
        if new:
            proc = self._lttng("track", new)
            if proc.returncode == 0:
                self.tracked.update(new)
                if self.on_track is not None:
                    self.on_track(new)
            else:
                failure = f"no lttng track failed: {_lttng_error(proc)}\n".encode()
        for conn, pid in waiting:
            if pid in self.tracked:
                reply = b"go\n"
            else:
                reply = failure
                self.refused += 1
            try:
                conn.sendall(reply)
            except OSError:
                pass  # it has gone meanwhile
            conn.close()

    def _forget_ended(self) -> None:
        ended = []
        for pid in self.tracked:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                ended.append(pid)
            except OSError:
                pass  # alive, another user's now
        if ended:
            self._lttng("untrack", ended)
            self.tracked.difference_update(ended)

    def _lttng(self, command: str, pids: list[int]) -> subprocess.CompletedProcess[str]:
        vpids = ",".join(map(str, pids))
        return _run_lttng(
            self.lttng, command, "--userspace", f"--session={self.session}", f"--vpid={vpids}"
        )

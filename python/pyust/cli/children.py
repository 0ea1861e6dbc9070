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
import time
from collections.abc import Callable

from .lttng import _lttng_error, _run_lttng

# How often the tracker untracks the processes that have ended (and, at
# least, once a second passes without a process asking).
FORGET_PERIOD = 1.0


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
        self,
        lttng: str,
        session: str,
        on_track: Callable[[list[int]], None] | None = None,
        isolate: bool = True,
        on_forget: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.lttng = lttng
        self.session = session
        self.on_track = on_track
        self.on_forget = on_forget
        # --all-processes: every process joins at once, nothing is tracked.
        self.isolate = isolate
        self.tracked: set[int] = set()
        self.refused = 0
        # Why processes were refused, or the tracker stumbled (first reason).
        self.problem = ""
        self.folder = tempfile.mkdtemp(prefix="pyust-record-")
        self.path = os.path.join(self.folder, "control")
        if len(os.fsencode(self.path)) > 100:  # beyond a socket address's room
            shutil.rmtree(self.folder)
            self.folder = tempfile.mkdtemp(prefix="pyust-record-", dir="/tmp")
            self.path = os.path.join(self.folder, "control")
        # Where a child interpreter that cannot be traced says why (_boot).
        self.untraced_path = os.path.join(self.folder, "untraced")
        self.untraced: list[str] = []
        with open(self.untraced_path, "w"):
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(self.path)
            self.listener.listen(64)
        except OSError:
            # (record says why in one line: nothing of it is left behind.)
            self.listener.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
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
        self.untraced = self._read_untraced()
        shutil.rmtree(self.folder, ignore_errors=True)

    def wait_for_children(self, timeout: float) -> None:
        """After the program: until the processes it left running (a
        forkserver, multiprocessing's resource tracker, a worker still
        exiting) have ended and been reaped, for at most `timeout` seconds.
        (record is their subreaper: see `adopt_orphans`.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = False
            for pid in self.tracked:
                try:
                    running |= os.waitpid(pid, os.WNOHANG)[0] == 0
                except ChildProcessError:  # reaped, or not ours: by kill
                    running |= _alive(pid)
            if not running:
                return
            time.sleep(0.01)

    def _read_untraced(self) -> list[str]:
        """One line per kind of child that could not be traced."""
        try:
            with open(self.untraced_path, encoding="utf-8", errors="replace") as f:
                lines = [line.rstrip("\n").split("\t", 1) for line in f]
        except OSError:
            return []
        counts: dict[str, int] = {}
        for parts in lines:
            if len(parts) == 2:
                what = f"{parts[0]} {parts[1]}"
                counts[what] = counts.get(what, 0) + 1
        return [
            f"{n} child process{'es' if n > 1 else ''} could not be traced: {what}"
            for what, n in counts.items()
        ]

    def _serve(self) -> None:
        """The thread: answers, forgets; it outlives any one error (a
        process limit, no file descriptor left): every process still gets
        an answer, and `problem` says what went wrong."""
        forgot = time.monotonic()
        while True:
            watched: list[socket.socket | int] = [self.listener, self.wake_r]
            try:
                ready, _, _ = select.select(watched, [], [], FORGET_PERIOD)
                if self.wake_r in ready:
                    return
                if self.listener in ready:
                    self._answer(self._pending())
                # Not between two forks: a process that asks meanwhile would
                # wait for the untracking (up to 0.2 s) before its answer.
                if not ready or time.monotonic() - forgot > FORGET_PERIOD:
                    self._forget_ended()
                    forgot = time.monotonic()
            except Exception as exc:  # noqa: BLE001 (the thread must go on)
                self.problem = self.problem or str(exc)
                time.sleep(0.01)

    def _pending(self) -> list[tuple[socket.socket, int]]:
        """Every connection waiting now (a Pool forks its workers at once:
        one `lttng track` for all of them), with the peer's pid."""
        waiting: list[tuple[socket.socket, int]] = []
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:  # none left waiting
                return waiting
            except OSError as exc:  # no descriptor left (EMFILE): later
                self.problem = self.problem or f"cannot accept a process: {exc.strerror}"
                time.sleep(0.01)
                return waiting
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            waiting.append((conn, struct.unpack("3i", creds)[0]))

    def _answer(self, waiting: list[tuple[socket.socket, int]]) -> None:
        new = sorted({pid for _, pid in waiting if pid > 0} - self.tracked)
        failure = b"no its pid is not visible to pyust record\n"
        if new and not self.isolate:
            self.tracked.update(new)
        elif new:
            proc = self._lttng("track", new)
            if proc.returncode == 0:
                self.tracked.update(new)
                if self.on_track is not None:
                    self.on_track(new)
            else:
                reason = f"lttng track failed: {_lttng_error(proc)}"
                self.problem = self.problem or reason
                failure = f"no {reason}\n".encode()
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
        ended = [pid for pid in self.tracked if not _alive(pid)]
        if ended:
            if self.isolate:
                self._lttng("untrack", ended)
            self.tracked.difference_update(ended)
            if self.on_forget is not None:
                self.on_forget(ended)

    def _lttng(self, command: str, pids: list[int]) -> subprocess.CompletedProcess[str]:
        vpids = ",".join(map(str, pids))
        return _run_lttng(
            self.lttng, command, "--userspace", f"--session={self.session}", f"--vpid={vpids}"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # alive (another user's now)
    return True


def adopt_orphans() -> None:
    """Makes this process the subreaper of the program's processes: those
    it leaves running when it ends become record's children, not init's,
    and record reaps them (`Tracker.wait_for_children`) as soon as they
    end. (A session destroyed while an ended process it recorded is still
    a zombie can leave `lttng destroy` waiting forever; init may take
    seconds to reap.)"""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init, as before

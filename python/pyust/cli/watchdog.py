"""`record`'s watchdog: a process of its own that cleans up after a
`record` that did not live to do it.

`record` starts it once its session exists, in a session of its own (a
signal to record's process group, a terminal closing, does not reach it),
with the read end of a pipe as its stdin; `record` holds the write end,
says on it the pid of the program once started, and ``done`` when it has
torn everything down itself. When the pipe closes without ``done`` --
`record` was killed (SIGKILL of it or of its group, the OOM killer) -- the
watchdog:

1. waits up to `PROGRAM_GRACE` for the program to end (the kernel sent it
   SIGTERM as `record` died: see `common.die_with_parent`), then kills it;
2. destroys the session (its trace stays, readable up to there) and the
   flight recorder's triggers;
3. removes `record`'s control folder;

and says so in one line on stderr (record's, if it is still open).

Run by `record` (and `attach`, which has no program to end) only, as a
script: watchdog.py LTTNG SESSION OUTPUT WHO.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

# How long the program has to end once `record` is gone.
PROGRAM_GRACE = 3.0

# Started as a script (this file): importing pyust.cli would take 40 ms of
# the CPU the program starts on; only the cleanup imports it.
SCRIPT = os.path.abspath(__file__)


class Watchdog:
    """`record`'s end of it: start, tell it the program, release it."""

    def __init__(self, lttng: str, session: str, output: str, who: str = "record") -> None:
        self.who = who
        read, self.pipe = os.pipe()
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, SCRIPT, lttng, session, output, who],
                stdin=read,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            self.proc = None  # record cleans up itself, as it would anyway
        os.close(read)

    def _tell(self, line: str) -> None:
        try:
            os.write(self.pipe, line.encode() + b"\n")
        except OSError:
            pass

    def folder(self, path: str) -> None:
        """record's control folder (removed by the watchdog)."""
        self._tell(f"folder {path}")

    def program(self, pid: int) -> None:
        self._tell(f"pid {pid}")

    def finish(self, problem: str | None) -> None:
        """After record's own teardown (`Session.finish`, which says why it
        could not destroy the session, if so): the watchdog ends without a
        word; or, when record could not run lttng (no file descriptor left),
        it destroys the session itself (a process with its own limits) and
        record waits for it."""
        if not problem:
            self._end("done", 2)
            return
        from pyust.cli.common import _say

        _say(f"pyust: {self.who} could not end the session ({problem}): its watchdog did")
        self._end("cleanup", 60)

    def _end(self, word: str, wait: float) -> None:
        if self.pipe < 0:
            return
        self._tell(word)
        os.close(self.pipe)
        self.pipe = -1
        if self.proc is not None:
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass


def _end_program(pid: int, pidfd: int | None) -> bool:
    """Waits for the program to end; kills it after the grace. Whether it
    had to be killed."""
    from pyust.cli.children import _alive

    deadline = time.monotonic() + PROGRAM_GRACE
    while time.monotonic() < deadline:
        if pidfd is None:
            if not _alive(pid):
                return False
        elif select.select([pidfd], [], [], 0.05)[0]:
            return False
        time.sleep(0.02)
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # type: ignore[attr-defined]
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    lttng, session, output, who = argv
    folder = ""
    # Nothing of the terminal's reaches here, but a stray SIGINT (a shell
    # kills a whole session) must not stop the cleanup half way.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    pid = 0
    pidfd = None
    done = asked = False
    pending = b""
    while True:
        try:
            chunk = os.read(0, 256)
        except OSError:
            chunk = b""
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line == b"done":
                done = True
            elif line == b"cleanup":
                asked = True
            elif line.startswith(b"folder "):
                folder = os.fsdecode(line[7:])
            elif line.startswith(b"pid "):
                pid = int(line[4:])
                try:
                    pidfd = os.pidfd_open(pid)  # type: ignore[attr-defined]
                except (AttributeError, OSError):
                    pidfd = None  # before 3.9, or gone already
    if done:
        return 0
    killed = not asked and pid > 0 and _end_program(pid, pidfd)
    from pyust.cli.flight import remove_triggers
    from pyust.cli.session import destroy

    destroy(lttng, session)
    remove_triggers(lttng, session)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    if asked:
        return 0
    try:
        sys.stderr.write(
            f"pyust: {who} was killed; its watchdog "
            f"{'killed the program, ' if killed else ''}destroyed session {session} "
            f"(trace in {output})\n"
        )
        sys.stderr.flush()
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    # Not this folder first on sys.path (its modules are pyust.cli's).
    if sys.path and sys.path[0] == os.path.dirname(SCRIPT):
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))

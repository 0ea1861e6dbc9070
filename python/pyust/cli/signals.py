"""`record`'s signals: what stops a recording, passed on to the program.

Ctrl-C (SIGINT), SIGTERM, and SIGHUP when the terminal goes away stop a
recording. `record` catches them (a caught signal is reset to its default
in the child at exec, an ignored one would stay ignored there), passes them
on to the traced child and, once the child has ended, always tears the
session down. On a terminal, Ctrl-C reaches the child directly (same
process group), so SIGINT is not passed on there: the child would be
interrupted twice. Elsewhere (a container's init, a pipeline) the child
gets a session of its own and every signal reaches it through `record`.
"""

from __future__ import annotations

import signal
import subprocess
from types import FrameType


class StopSignals:
    """The stop signals' handlers while a recording runs: `received` lists
    the signals in order; `child`, once started, gets them passed on."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, on_terminal: bool) -> None:
        self.on_terminal = on_terminal
        self.received: list[int] = []
        self.child: subprocess.Popen[bytes] | None = None
        self._old = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        self._old_usr1 = signal.getsignal(signal.SIGUSR1)
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.on_terminal and signum == signal.SIGINT:
            return
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def ignore(self) -> None:
        """During the teardown: a second Ctrl-C (or the hangup that follows
        a closed terminal) must not leave the session behind."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        """The handlers as they were before the recording (SIGUSR1's too)."""
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGUSR1, self._old_usr1)

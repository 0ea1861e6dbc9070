"""`record`'s signals: what stops a recording, passed on to the program.

Ctrl-C (SIGINT), SIGTERM, and SIGHUP when the terminal goes away stop a
recording. `record` catches them (a caught signal is reset to its default
in the child at exec, an ignored one would stay ignored there), passes them
on to the traced child and, once the child has ended, always tears the
session down. On a terminal, Ctrl-C reaches the child directly (same
process group), so SIGINT is not passed on there: the child would be
interrupted twice. Elsewhere (a container's init, a pipeline) the child
gets a session of its own and every signal reaches it through `record`.
The other signals that would end `record` (SIGUSR1, SIGUSR2, SIGALRM,
SIGQUIT) are passed on too: they are the program's, and a `record` dead of
one left the program running. (SIGKILL cannot be caught: the watchdog
cleans up after it.)
"""

from __future__ import annotations

import signal
import subprocess
from types import FrameType


class StopSignals:
    """The stop signals' handlers while a recording runs: `received` lists
    the signals in order; `child`, once started, gets them passed on, and
    the other signals that would end `record` (SIGUSR1 unless the flight
    recorder takes it, SIGUSR2, SIGALRM, SIGQUIT): they are the program's.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    PASSED_ON = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGQUIT)
    # What a terminal sends its whole foreground process group.
    FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT)

    def __init__(self, on_terminal: bool) -> None:
        self.on_terminal = on_terminal
        self.received: list[int] = []
        self.child: subprocess.Popen[bytes] | None = None
        self._old = {sig: signal.getsignal(sig) for sig in self.SIGNALS + self.PASSED_ON}
        for sig in self.SIGNALS + self.PASSED_ON:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum in self.SIGNALS:
            self.received.append(signum)
        if self.on_terminal and signum in self.FROM_TERMINAL:
            return
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def ignore(self) -> None:
        """During the teardown: a second Ctrl-C (or the hangup that follows
        a closed terminal) must not leave the session behind."""
        for sig in self.SIGNALS + self.PASSED_ON:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        """The stop signals' handlers as they were before the recording. The
        others stay ignored until record exits (a SIGUSR1 during --view's
        printing is no longer the program's, and must not kill record)."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._old[sig])

"""`record --flight-recorder`: a session in snapshot mode, its snapshots on
SIGUSR1, at exit and on an exception (`--snapshot-on`).
"""

from __future__ import annotations

import os
import re
import select
import threading

from .common import _say
from .lttng import _lttng_error, _run_lttng


class FlightRecorder:
    """`record --flight-recorder`'s snapshots.

    The session is a snapshot session: its ring buffers overwrite their
    oldest data and nothing reaches the disk until ``lttng snapshot
    record`` copies them into a new folder under the output folder, named
    after why it was taken: ``signal-...`` (SIGUSR1, taken by this
    object's thread), ``on-EXC-...`` (an LTTng trigger: the sessiond itself
    takes it, the moment the program raises EXC) and ``exit-...``. The
    thread also says each new folder as it appears.
    """

    def __init__(
        self, lttng: str, session: str, output: str, exc_types: list[str], mode: str
    ) -> None:
        # The event a trigger matches: in the fast mode, the one event
        # that names an exception as it is committed.
        self.exception_event = "python_fast:exception" if mode == "fast" else "python:exception"
        self.lttng = lttng
        self.session = session
        self.output = output
        self.exc_types = exc_types
        # The triggers in place, by process (None: any process).
        self.triggers: dict[int | None, str] = {}
        self.added = 0
        self.trigger_failed = False
        self.announced: set[str] = set()
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._serve, name="pyust-snapshots", daemon=True)

    @property
    def output_name(self) -> str:
        """The snapshot output's name: the trigger's snapshots carry it."""
        if len(self.exc_types) == 1 and "*" not in self.exc_types[0]:
            return "on-" + self.exc_types[0]
        return "on-exception" if self.exc_types else "snapshot"

    def start(self) -> None:
        self.thread.start()

    def request(self) -> None:
        """Asks for a snapshot; safe in a signal handler."""
        try:
            os.write(self.wake_w, b"s")
        except OSError:
            pass

    def watch(self, pids: list[int] | None) -> None:
        """`--snapshot-on`: one trigger per process (any process: None)
        that snapshots the session the first time it raises EXC."""
        if not self.exc_types:
            return
        condition = " || ".join(f'exc_type == "{t}"' for t in self.exc_types)
        each: list[int | None] = list(pids) if pids else [None]
        for pid in each:
            name = f"{self.session}-on-{self.added}"
            self.added += 1
            rule = condition if pid is None else f"({condition}) && $ctx.vpid == {pid}"
            proc = _run_lttng(
                self.lttng,
                "add-trigger",
                f"--name={name}",
                "--condition=event-rule-matches",
                "--type=user",
                f"--name={self.exception_event}",
                f"--filter={rule}",
                "--action=snapshot-session",
                self.session,
                "--rate-policy=once-after:1",
            )
            if proc.returncode == 0:
                self.triggers[pid] = name
            elif not self.trigger_failed:
                self.trigger_failed = True
                _say(f"pyust: --snapshot-on: lttng add-trigger failed: {_lttng_error(proc)}")

    def forget(self, pids: list[int]) -> None:
        """The triggers of processes that have ended go (each trigger is
        handed to every process that registers with the session daemon:
        a program forking 40 children had 41, each fork slower)."""
        for pid in pids:
            name = self.triggers.pop(pid, None)
            if name is not None:
                _run_lttng(self.lttng, "remove-trigger", name)

    def close(self) -> None:
        """Stops the thread and removes the triggers (the session stays)."""
        if self.thread.is_alive():
            os.write(self.wake_w, b"q")
            self.thread.join(timeout=30)
        os.close(self.wake_r)
        os.close(self.wake_w)
        for name in self.triggers.values():
            _run_lttng(self.lttng, "remove-trigger", name)
        self.triggers.clear()

    def snapshot(self, why: str) -> str | None:
        """Takes a snapshot now; the reason lttng gave when it cannot."""
        proc = _run_lttng(
            self.lttng, "snapshot", "record", f"--session={self.session}", f"--name={why}"
        )
        self.announce()
        return None if proc.returncode == 0 else _lttng_error(proc)

    def folders(self) -> list[str]:
        """The snapshot folders so far, oldest first (NAME-DATE-TIME-N)."""
        try:
            names = os.listdir(self.output)
        except OSError:
            return []
        found = []
        for name in names:
            m = re.fullmatch(r".+-\d{8}-\d{6}-(\d+)", name)
            if m and os.path.isdir(os.path.join(self.output, name)):
                found.append((int(m[1]), os.path.join(self.output, name)))
        return [path for _, path in sorted(found)]

    def announce(self) -> None:
        with self.lock:
            for path in self.folders():
                if path not in self.announced:
                    self.announced.add(path)
                    _say(f"pyust: snapshot written to {path}")

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.wake_r], [], [], 1.0)
            if ready:
                data = os.read(self.wake_r, 64)
                if b"q" in data:
                    return
                if b"s" in data:
                    problem = self.snapshot("signal")
                    if problem:
                        _say(f"pyust: snapshot on SIGUSR1 failed: {problem}")
            self.announce()


def remove_triggers(lttng: str, session: str) -> None:
    """Every trigger of `session`'s flight recorder (the watchdog's
    cleanup: record could not remove them)."""
    listing = _run_lttng(lttng, "list-triggers")
    for name in re.findall(r"^- name: (\S+)$", listing.stdout, re.MULTILINE):
        if name.startswith(f"{session}-on-"):
            _run_lttng(lttng, "remove-trigger", name)

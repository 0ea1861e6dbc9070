"""`record`'s LTTng session: created (to a local folder, to a relay
daemon, or in snapshot mode for the flight recorder), its channels with
the events of the mode asked for, started; stopped and destroyed, with
what went wrong during the run said in one line each."""

from __future__ import annotations

import ctypes
import subprocess
import time

from .common import _say, fail, human_size
from .diskwatch import DiskWatch
from .flight import FlightRecorder
from .lttng import (
    CHANNEL,
    DEFS_CHANNEL,
    DEFS_NUM_SUBBUF,
    DEFS_SUBBUF,
    TRACEFILES_PER_STREAM,
    _check,
    _lttng_error,
    _run_lttng,
    discarded_events,
    dropped_data,
    relay_address,
    trace_format,
)


class Session:
    """One session named `name`; `relay` when it streams to one."""

    def __init__(self, lttng: str, name: str, relay: tuple[str, int | None] | None) -> None:
        self.lttng = lttng
        self.name = name
        self.relay = relay
        self.created = False

    def run(self, *args: str, what: str = "") -> None:
        """`lttng ARGS` (they name the session), or one line and exit 2
        ("lttng WHAT failed": WHAT is ARGS' first word unless given)."""
        _check(_run_lttng(self.lttng, *args), what or args[0])

    def create(self, *options: str) -> None:
        self.run("create", self.name, *options, *trace_format(self.lttng))
        self.created = True

    def add_channel(
        self, name: str, subbuf: int, count: int, sizes: list[str], events: str
    ) -> None:
        """A channel, its events, and the contexts `report` tells processes
        and threads apart by."""
        for command, *args in (
            ("enable-channel", f"--subbuf-size={subbuf}", f"--num-subbuf={count}", *sizes, name),
            ("enable-event", f"--channel={name}", events),
            (
                "add-context",
                f"--channel={name}",
                "--type=vpid",
                "--type=vtid",
                "--type=procname",
            ),
        ):
            proc = _run_lttng(self.lttng, command, "--userspace", f"--session={self.name}", *args)
            if proc.returncode != 0 and self.relay is not None and command == "enable-channel":
                # The session daemon reaches the relay at the first channel,
                # before the program runs (a client of LTTng 2.16 may die of
                # SIGPIPE there).
                where = relay_address(self.relay)
                fail(f"no relay daemon answers at {where} ({_lttng_error(proc)})")
            _check(proc, command)

    def enable(
        self,
        mode: str,
        c_calls: bool,
        exc_types: list[str],
        subbuf: int,
        num_subbuf: int,
        limits: list[str],
        tracefile: int,
    ) -> None:
        """The events of `mode`: readable (`python:*`, or without C calls)
        or fast (batches in one channel, their definitions in another that
        no overwrite or size cap takes out)."""
        if mode == "fast":
            events = ["python_fast:batch"]
            if c_calls:
                events.append("python_fast:c_calls")
            if exc_types:
                events.append("python_fast:exception")
            defs_limits = []
            if limits:
                defs_size = max(tracefile // 8, DEFS_SUBBUF)
                defs_limits = [
                    f"--tracefile-size={defs_size}",
                    f"--tracefile-count={TRACEFILES_PER_STREAM}",
                ]
            self.add_channel(
                DEFS_CHANNEL, DEFS_SUBBUF, DEFS_NUM_SUBBUF, defs_limits, "python_fast:def"
            )
        elif c_calls:
            events = ["python:*"]
        else:
            events = ["python:call", "python:return", "python:exception"]
        self.add_channel(CHANNEL, subbuf, num_subbuf, limits, ",".join(events))

    def finish(
        self,
        recorder: FlightRecorder | None,
        watch: DiskWatch | None,
        max_size: int | None,
        output: str,
    ) -> str | None:
        """Stops and destroys the session (the flight recorder's snapshot at
        exit between the two), then says what LTTng discarded, what the
        disk did, what --max-size dropped. Why the session could not be
        destroyed (lttng could not be run), if so."""
        if not self.created:
            return None
        stop(self.lttng, self.name)
        lost = discarded_events(self.lttng, self.name) if recorder is None else 0
        if recorder is not None:
            problem = recorder.snapshot("exit")
            if problem:
                _say(f"pyust: no snapshot at exit: {problem}")
        # Stopped, its data written: the daemon's teardown need not be
        # waited for (0.5 s), except by a relay daemon's copy.
        problem = destroy(self.lttng, self.name, wait=self.relay is not None)
        if problem:
            return problem
        if lost:
            _say(f"pyust: LTTng discarded {lost} events (ring buffers full)")
        if watch is not None and watch.free() == 0:
            _say(
                f"pyust: the disk holding {output} filled up during the run: the "
                "trace may be cut short or unreadable; the program ran on"
            )
        elif watch is not None and watch.stopped_at is not None:
            _say(
                f"pyust: the disk holding {output} was almost full "
                f"({human_size(watch.free_then)} free): recording stopped "
                f"{watch.stopped_at:.1f} s into the run; the program ran on untraced"
            )
        if max_size and self.relay is None:
            gone, gone_bytes, kept = dropped_data(output)
            if gone:
                _say(
                    f"pyust: --max-size {human_size(max_size)}: the oldest {gone} "
                    f"packet(s) of the trace (about {human_size(gone_bytes)}) were "
                    f"dropped; the newest {human_size(kept)} are kept"
                )
        return None


# `lttng stop` checks every 200 ms whether the session's data is written;
# through liblttng-ctl (lttng-tools' own library) record checks every 5 ms.
STOP_POLL = 0.005


def _liblttng_ctl() -> ctypes.CDLL | None:
    try:
        ctl = ctypes.CDLL("liblttng-ctl.so.0")
        ctl.lttng_stop_tracing_no_wait.argtypes = [ctypes.c_char_p]
        ctl.lttng_data_pending.argtypes = [ctypes.c_char_p]
    except (OSError, AttributeError):
        return None
    return ctl


def stop(lttng: str, name: str) -> None:
    """`lttng stop NAME`: returns once the session's data is written."""
    ctl = _liblttng_ctl()
    if ctl is None or ctl.lttng_stop_tracing_no_wait(name.encode()) < 0:
        _run_lttng(lttng, "stop", name)  # (it says why, if it fails)
        return
    deadline = time.monotonic() + 60
    while ctl.lttng_data_pending(name.encode()) > 0 and time.monotonic() < deadline:
        time.sleep(STOP_POLL)


# How long `lttng destroy` may wait for the session's destruction to
# complete. LTTng 2.13's client sometimes never hears of it (the session
# is gone, the trace stopped and complete: `lttng stop` waited for its
# data), about 1 run in 20 when two records end at once here.
DESTROY_WAIT = 10.0


def destroy(lttng: str, name: str, wait: bool = True) -> str | None:
    """Destroys session `name` (once stopped, `wait=False` leaves the
    daemon's teardown to itself); why it could not, when lttng cannot even
    be run (no file descriptor or process left)."""
    try:
        subprocess.run(
            [lttng, "destroy", *([] if wait else ["--no-wait"]), name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=DESTROY_WAIT,
            check=False,
        )
    except OSError as exc:
        return f"cannot run lttng: {exc.strerror}"
    except subprocess.TimeoutExpired:
        # Killed by run(); a session still listed is destroyed without waiting.
        if name in _run_lttng(lttng, "list").stdout:
            _run_lttng(lttng, "destroy", "--no-wait", name)
    return None

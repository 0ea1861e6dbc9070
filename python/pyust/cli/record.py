"""`pyust record`: one session for one program (and its children), set up,
run and torn down whatever the program does.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

from .args import Parser
from .children import Tracker, adopt_orphans
from .common import (
    PARENT_ENV,
    RECORD_ENV,
    SNAPSHOT_ENV,
    Target,
    _say,
    fail,
    human_size,
    parse_count,
    parse_exception_type,
    parse_max_size,
    parse_size,
    parse_target,
)
from .diskwatch import DiskWatch
from .flight import FlightRecorder
from .lttng import (
    DEFAULT_MAX_SIZE,
    DEFAULT_MODE,
    MODES,
    NUM_SUBBUF,
    RELAY_PORT,
    TRACEFILES_PER_STREAM,
    _lttng,
    ensure_session_daemon,
    flight_buffer,
    parse_relay,
    possible_cpus,
    relay_address,
    relay_host,
    relay_problem,
    relay_url,
    size_limits,
    subbuf_size,
)
from .session import Session
from .signals import StopSignals
from .view import show
from .watchdog import Watchdog

# The smallest sub-buffer of the fast mode's channel: one full batch (4096
# bytes of records, its fields and contexts) and a packet header.
FAST_MIN_SUBBUF = 8 << 10

# How long record waits, after the program, for the processes it started
# and left running to end (their last events come before the session stops).
CHILDREN_GRACE = 2.0


def default_output(target: Target) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("pyust-traces", f"{target.label}-{stamp}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _foreground_on_terminal() -> bool:
    """Whether this process is in the foreground of a terminal (where
    Ctrl-C signals the whole process group)."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _mode(text: str) -> str:
    if text not in MODES:
        fail(f"--mode {text}: fast or readable")
    return text


def output_option(p: Parser) -> None:
    """`-o DIR` (record's and attach's)."""
    p.option(
        "-o",
        "--output",
        metavar="DIR",
        what="a folder",
        help="where the trace goes (default: a new folder\nunder ./pyust-traces/)",
    )


def parser() -> Parser:
    """`record`'s options (its part of `pyust --help`)."""
    p = Parser(
        "record",
        "the same inside a session pyust creates, starts,\n"
        "stops and destroys; prints the trace folder.\n"
        "It records the program and every Python\n"
        "process it starts, no other process",
        "unknown option for record: {}",
        "pyust record [-o DIR | --relay HOST[:PORT] [--live]] [--view]\n"
        "                    [--all-processes] [--max-size SIZE]\n"
        "                    [--mode fast|readable] [--no-c-calls]\n"
        "                    [--flight-recorder [--buffer SIZE] [--snapshot-on EXC]]\n"
        "                    [--subbuf-size SIZE] [--num-subbuf N]\n"
        "                    [-m module | script.py] [args...]",
    )
    output_option(p)
    p.option("--view", action="store_true", help="also print the trace as text")
    p.option(
        "--relay",
        metavar="HOST[:PORT]",
        what="a host, or host:port",
        type=parse_relay,
        help="stream the trace to the LTTng relay daemon\n"
        "(lttng-relayd) at HOST, control port PORT\n"
        "(default 5342; data on PORT+1) instead of a\n"
        "local folder; it lands in the relay's output\n"
        "folder under <this host's name>/pyust/",
    )
    p.option(
        "--live",
        action="store_true",
        help="with --relay: a live session, which `babeltrace2\n"
        "--input-format=lttng-live` (and live viewers)\n"
        "read while the program runs; flushed every\n"
        "second, so a relay lost during the run keeps\n"
        "a readable copy up to then",
    )
    p.option(
        "--mode",
        metavar="MODE",
        what="fast or readable",
        type=_mode,
        default=DEFAULT_MODE,
        help="readable (default): the python:* events, one\n"
        "LTTng event each, strings in every event;\n"
        "fast: the same events packed 8 bytes each per\n"
        "thread and committed in batches\n"
        "(python_fast:*), names once per id; `pyust\n"
        "view` and `report` read both",
    )
    p.option("--no-c-calls", action="store_true", help="Python frames and exceptions only")
    p.option(
        "--all-processes",
        action="store_true",
        help="also record every other process that emits\n"
        "python:* events meanwhile (programs that call\n"
        "pyust.enable(), other `pyust` runs)",
    )
    p.option(
        "--max-size",
        metavar="SIZE",
        what="a size (e.g. 500M, 2G; 0: no limit)",
        type=parse_max_size,
        help="at most SIZE of trace on disk (default: 2G;\n"
        "0: no limit): past it the oldest data goes, the\n"
        "newest is kept, and record says how much went\n"
        "(per user the program runs as)",
    )
    p.option(
        "--flight-recorder",
        action="store_true",
        help="keep the trace in memory only (ring buffers\n"
        "that overwrite the oldest data) and write a\n"
        "snapshot of the last --buffer of activity at\n"
        "exit, and whenever record or the program gets\n"
        "SIGUSR1; each snapshot is a trace folder under\n"
        "the output folder",
    )
    p.option(
        "--buffer",
        metavar="SIZE",
        what="a size (e.g. 64M)",
        type=parse_max_size,
        help="memory for the flight recorder, over all CPUs\n"
        "(default: 64M, less when /dev/shm is small)",
    )
    p.option(
        "--snapshot-on",
        metavar="EXC",
        what="an exception type (e.g. ValueError)",
        type=parse_exception_type,
        action="append",
        default=[],
        help="also snapshot the first time each process of\n"
        "the program raises the exception type EXC (as\n"
        "python:exception names it: ValueError,\n"
        "json.decoder.JSONDecodeError; `*` matches any\n"
        "text); may be repeated",
    )
    p.option(
        "--subbuf-size",
        metavar="SIZE",
        type=parse_size,
        help="ring-buffer sub-buffer size per CPU (default:\n"
        "4M, less when /dev/shm is small or --max-size\n"
        "needs it)",
    )
    p.option(
        "--num-subbuf",
        metavar="N",
        type=parse_count,
        default=NUM_SUBBUF,
        help="sub-buffers per CPU (default: 8)",
    )
    return p


def record(argv: list[str]) -> int:
    p = parser()
    options, argv = p.split_at_target(argv)
    args = p.parse(options)
    if args.help:
        print(p.format_help(), end="")
        return 0
    output: str | None = args.output
    view: bool = args.view
    subbuf: int | None = args.subbuf_size
    num_subbuf: int = args.num_subbuf
    all_processes: bool = args.all_processes
    max_size: int | None = args.max_size
    flight: bool = args.flight_recorder
    buffer: int | None = args.buffer
    exc_types: list[str] = args.snapshot_on
    mode: str = args.mode
    c_calls = not args.no_c_calls
    relay: tuple[str, int | None] | None = args.relay
    live: bool = args.live
    if live and relay is None:
        fail("--live needs --relay: a live session streams to a relay daemon")
    if relay is not None:
        for given, what in (
            (output is not None, "-o (the trace goes to the relay's output folder)"),
            (view, "--view (the trace is on the relay: `pyust view` it there)"),
            (flight, "--flight-recorder"),
        ):
            if given:
                fail(f"--relay does not go with {what}")
    if not flight and (buffer is not None or exc_types):
        fail(f"{'--buffer' if buffer is not None else '--snapshot-on'} needs --flight-recorder")
    if flight and max_size is not None:
        fail("--max-size is for traces written as they run; a flight recorder's size is --buffer")
    if flight and subbuf is not None:
        fail("--subbuf-size does not go with --flight-recorder: --buffer sets it")
    limits: list[str] = []
    tracefile = 0
    channel_subbuf = subbuf or subbuf_size()
    if flight:
        channel_subbuf = flight_buffer(buffer, num_subbuf)
    else:
        if max_size is None:
            max_size = DEFAULT_MAX_SIZE
        if max_size:
            channel_subbuf, tracefile = size_limits(max_size, subbuf)
            limits = [f"--tracefile-size={tracefile}", f"--tracefile-count={TRACEFILES_PER_STREAM}"]
    if mode == "fast" and channel_subbuf < FAST_MIN_SUBBUF:
        # A sub-buffer holds whole events: every full batch was discarded.
        chosen = (
            "--subbuf-size"
            if subbuf is not None
            else f"--buffer {human_size(buffer or 0)}"
            if flight
            else f"--max-size {human_size(max_size or 0)}"
        )
        fail(
            f"--mode fast needs sub-buffers of at least {human_size(FAST_MIN_SUBBUF)} (a batch "
            f"of records is one event of up to 4.2 KiB): {chosen} makes them "
            f"{human_size(channel_subbuf)}"
        )
    if output == "":
        fail("--output needs a folder (an empty name names none)")
    target = parse_target(argv)
    if target.script is not None and not os.path.isfile(target.script):
        fail(f"cannot open script {target.script!r}: no such file")
    if target.module is not None:
        # Only the top-level name: finding a submodule imports its package.
        top = target.module.partition(".")[0]
        if top and importlib.util.find_spec(top) is None:
            fail(f"cannot run module {target.module!r}: No module named {top!r}")
    from .. import _pyust

    problem = _pyust._no_tracing()
    if problem:  # LTTng-UST is not installed
        fail(problem)
    lttng = _lttng()
    if view and shutil.which("babeltrace2") is None:
        fail("--view needs babeltrace2 (apt-get install babeltrace2)")
    ensure_session_daemon(lttng)

    if relay is None:
        output = os.path.abspath(output or default_output(target))
        if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
            fail(f"output folder {output} exists and is not empty")
    else:
        # The path the relay writes under <its output>/<this host>/: the
        # pid keeps two runs of one script in the same second apart.
        output = f"pyust/{os.path.basename(default_output(target))}-{os.getpid()}"
        problem = relay_problem(relay)
        if problem:
            fail(f"no relay daemon answers at {relay_address(relay)} ({problem})")
    stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    # The script's name last: `pyust top` picks sessions by pattern
    # (`*-app` attaches to every host's run of app.py).
    name = f"pyust-{os.getpid()}-{stamp}-{re.sub(r'[^A-Za-z0-9_.-]', '_', target.label)[:48]}"
    session = Session(lttng, name, relay)
    # Cleans up if record is killed (SIGKILL, of it or its process group).
    watchdog = Watchdog(lttng, name, output)

    status = 1
    on_terminal = _foreground_on_terminal()
    signals = StopSignals(on_terminal)
    tracker: Tracker | None = None
    recorder: FlightRecorder | None = None
    watch: DiskWatch | None = None
    try:
        if flight:
            try:
                os.makedirs(output, exist_ok=True)
            except OSError as exc:
                fail(f"cannot make the output folder {output}: {exc.strerror}")
            recorder = FlightRecorder(lttng, name, output, exc_types, mode)
            session.create("--snapshot", "--no-output")
            session.run(
                "snapshot",
                "add-output",
                f"--session={name}",
                f"--name={recorder.output_name}",
                output,
                what="snapshot add-output",
            )
            signal.signal(signal.SIGUSR1, lambda _signum, _frame: recorder.request())
        elif relay is not None:
            session.create(f"--set-url={relay_url(relay, output)}", *(["--live"] if live else []))
        else:
            session.create(f"--output={output}")
        session.enable(mode, c_calls, exc_types, channel_subbuf, num_subbuf, limits, tracefile)
        env = dict(os.environ)
        if recorder is not None:
            # SIGUSR1 to the program comes here (see run_traced).
            env[SNAPSHOT_ENV] = str(os.getpid())
            if all_processes:
                recorder.watch(None)
        if not all_processes:
            # No process is recorded until the tracker lets it in.
            session.run("untrack", "--userspace", f"--session={name}", "--all", "--vpid")
        adopt_orphans()
        try:
            tracker = Tracker(
                lttng,
                name,
                recorder.watch if recorder and not all_processes else None,
                isolate=not all_processes,
                on_forget=recorder.forget if recorder and not all_processes else None,
            )
        except OSError as exc:
            fail(f"cannot make record's control socket: {exc}")
        watchdog.folder(tracker.folder)
        env[RECORD_ENV] = tracker.path
        session.run("start", name)
        if relay is not None and live:
            live_port = (relay[1] or RELAY_PORT) + 2  # lttng-relayd's live port: 5344
            _say(
                "pyust: live: babeltrace2 --input-format=lttng-live "
                f"net://{relay_host(relay)}:{live_port}/host/{socket.gethostname()}/{name}"
            )
        if recorder is not None:
            recorder.start()
        elif relay is None:
            # Room for every ring buffer's flush, and the metadata.
            ring = possible_cpus() * num_subbuf * channel_subbuf
            watch = DiskWatch(lttng, name, output, ring + (16 << 20))
        if signals.received:  # stopped while the session was being set up
            status = 128 + signals.received[0]
        else:
            env[PARENT_ENV] = str(os.getpid())
            signals.child = subprocess.Popen(
                [sys.executable, "-m", "pyust", "--", *target.argv],
                start_new_session=not on_terminal,
                env=env,
            )
            watchdog.program(signals.child.pid)
            status = signals.child.wait()
            if status < 0:
                status = 128 - status
            if tracker is not None:
                tracker.wait_for_children(CHILDREN_GRACE)
    finally:
        signals.ignore()
        if recorder is not None:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            recorder.close()
        if watch is not None:
            watch.close()
        if tracker is not None:
            tracker.close()
            if tracker.refused:
                _say(
                    f"pyust: {tracker.refused} process(es) of the program could not be "
                    f"recorded ({tracker.problem})"
                )
            elif tracker.problem:
                _say(f"pyust: record's tracking of the program's processes: {tracker.problem}")
            for line in tracker.untraced:
                _say(f"pyust: {line}")
        watchdog.finish(session.finish(recorder, watch, max_size, output))
        signals.restore()
    received = signals.received
    if relay is not None:
        where = relay_address(relay)
        if relay_problem(relay):
            # LTTng sends the metadata of a session that is not live when
            # it stops; a live one's goes with each second's flush.
            _say(
                f"pyust: the relay daemon at {where} stopped answering during the run: "
                "its copy of the trace ends there"
                + ("" if live else ", without the metadata to read it (--live sends it)")
                + "; the program ran on"
            )
        _say(
            f"pyust: trace streamed to the relay daemon at {where}, in its output folder "
            f"under {socket.gethostname()}/{output}"
        )
        return status
    if not os.path.isdir(output):
        # LTTng's consumer went on writing into files that are gone; the
        # program ran all the same.
        _say(f"pyust: no trace: the folder {output} was removed during the run")
        return status
    if recorder is not None:
        snapshots = recorder.folders()
        if view and snapshots and signal.SIGHUP not in received:
            sys.stdout.flush()
            show(snapshots[-1])
        _say(f"pyust: {len(snapshots)} snapshot(s) in {output}")
        return status
    if view and signal.SIGHUP not in received:  # no terminal to show it on
        sys.stdout.flush()
        show(output)
    _say(f"pyust: trace written to {output}")
    return status

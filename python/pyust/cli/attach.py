"""`pyust attach PID`: record a Python process that is already running
(CPython 3.14+), and the Python processes it starts meanwhile, then leave
it running untraced.

Through `sys.remote_exec` (PEP 768): the process runs a script of pyust's
at its next safe point, which joins `attach`'s recording (the same control
socket and vpid tracking as `record`) and turns tracing on; at the end a
second script turns it off and leaves. The process needs pyust importable.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import time

from .args import Parser
from .children import Tracker, _alive
from .common import BOOT, RECORD_ENV, _say, fail, parse_duration
from .lttng import DEFAULT_MODE, NUM_SUBBUF, _lttng, ensure_session_daemon, subbuf_size
from .record import _mode, output_option
from .session import Session
from .watchdog import Watchdog

# The script the process runs to join: {control} and {boot} are filled in.
JOIN = """\
import os as _os
_os.environ[{env!r}] = {control!r}
_paths = _os.environ.get("PYTHONPATH", "")
if {boot!r} not in _paths.split(_os.pathsep):
    _os.environ["PYTHONPATH"] = {boot!r} + (_os.pathsep + _paths if _paths else "")
try:
    import pyust as _pyust
except ImportError as _exc:
    with open({untraced!r}, "a") as _f:
        _f.write("%s\\t%s\\n" % (__import__("sys").executable, "has no pyust"))
else:
    _pyust._pyust._join_record({control!r})
    _pyust.enable()
"""

# ... and to leave: tracing off, the environment as it was.
LEAVE = """\
import os as _os
import pyust as _pyust
_pyust.disable()
_pyust._pyust._leave_record()
_os.environ.pop({env!r}, None)
_paths = [p for p in _os.environ.get("PYTHONPATH", "").split(_os.pathsep) if p != {boot!r}]
if _paths:
    _os.environ["PYTHONPATH"] = _os.pathsep.join(_paths)
else:
    _os.environ.pop("PYTHONPATH", None)
open({left!r}, "w").close()
"""

# How long the process may take to reach a safe point and join, or leave.
JOIN_WAIT = 10.0


def parser() -> Parser:
    """`attach`'s options (its part of `pyust --help`)."""
    p = Parser(
        "attach",
        "record the running Python process PID (CPython\n"
        "3.14+, through sys.remote_exec) and the Python\n"
        "processes it starts, until Ctrl-C, --duration or\n"
        "its exit; it goes on running, untraced",
        "unknown option for attach: {}",
        "pyust attach PID [-o DIR] [--duration S] [--mode fast|readable] [--no-c-calls]",
    )
    p.add_argument("pid", nargs="?", metavar="PID", help=argparse.SUPPRESS)
    output_option(p)
    p.option(
        "--duration",
        metavar="S",
        what="a duration (e.g. 10, 2.5s, 500ms)",
        help="stop after S (default: Ctrl-C, or the process's end)",
    )
    p.option(
        "--mode",
        metavar="MODE",
        what="fast or readable",
        type=_mode,
        default=DEFAULT_MODE,
        help="as for record",
    )
    p.option("--no-c-calls", action="store_true", help="Python frames and exceptions only")
    return p


def _remote_exec(pid: int, script: str) -> None:
    """`sys.remote_exec`, its refusals as one line each."""
    try:
        sys.remote_exec(pid, script)  # type: ignore[attr-defined]
    except PermissionError as exc:
        fail(
            f"cannot attach to process {pid}: {exc.strerror or exc} (run as its user with "
            "the ptrace capability, e.g. root, `docker run --cap-add SYS_PTRACE`, or "
            "/proc/sys/kernel/yama/ptrace_scope at 0)"
        )
    except ProcessLookupError:
        fail(f"no process {pid}")
    except (RuntimeError, OSError) as exc:
        text = str(exc)
        if "disable" in text.lower() or "not enabled" in text.lower():
            fail(
                f"process {pid} refuses remote debugging ({text}): it runs with "
                "PYTHON_DISABLE_REMOTE_DEBUG or -X disable_remote_debug"
            )
        fail(f"process {pid} is not a CPython {_version()} process pyust can attach to ({text})")


def _version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def attach(argv: list[str]) -> int:
    p = parser()
    args = p.parse(argv)
    if args.help:
        print(p.format_help(), end="")
        return 0
    if getattr(args, "extras", None):
        fail(f"attach takes one PID, not also {' '.join(args.extras)}")
    if args.pid is None or not args.pid.isdigit() or int(args.pid) <= 0:
        fail(f"attach needs a process id, not {args.pid!r}" if args.pid else "attach needs a PID")
    pid = int(args.pid)
    duration = parse_duration("--duration", args.duration) / 1e9 if args.duration else None
    if args.output == "":
        fail("--output needs a folder (an empty name names none)")
    if not hasattr(sys, "remote_exec"):
        fail(
            f"pyust attach needs CPython 3.14 or later (sys.remote_exec); this pyust runs on "
            f"{_version()}"
        )
    if not _alive(pid):
        fail(f"no process {pid}")
    from .. import _pyust

    problem = _pyust._no_tracing()
    if problem:
        fail(problem)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = os.path.abspath(args.output or os.path.join("pyust-traces", f"pid{pid}-{stamp}"))
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        fail(f"output folder {output} exists and is not empty")
    lttng = _lttng()
    ensure_session_daemon(lttng)

    name = f"pyust-{os.getpid()}-{stamp.replace('-', '')}-pid{pid}"
    session = Session(lttng, name, None)
    # Destroys the session if attach is killed (the process stays).
    watchdog = Watchdog(lttng, name, output, "attach")
    tracker: Tracker | None = None
    stop: list[int] = []
    old = {
        sig: signal.signal(sig, lambda s, _f: stop.append(s))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    joined = False
    try:
        session.create(f"--output={output}")
        session.enable(args.mode, not args.no_c_calls, [], subbuf_size(), NUM_SUBBUF, [], 0)
        session.run("untrack", "--userspace", f"--session={name}", "--all", "--vpid")
        tracker = Tracker(lttng, name)
        watchdog.folder(tracker.folder)
        session.run("start", name)
        fill = {
            "env": RECORD_ENV,
            "control": tracker.path,
            "boot": BOOT,
            "untraced": tracker.untraced_path,
            "left": os.path.join(tracker.folder, "left"),
        }
        join = os.path.join(tracker.folder, "join.py")
        with open(join, "w") as f:
            f.write(JOIN.format(**fill))
        os.chmod(tracker.folder, 0o755)  # the process may be another user's
        _remote_exec(pid, join)
        start = time.monotonic()
        said = False
        while not stop and _alive(pid):
            now = time.monotonic()
            if not joined and pid in tracker.tracked:
                joined = True
                _say(f"pyust: recording process {pid}; Ctrl-C stops")
                start = now
            if not joined and not said and now - start > JOIN_WAIT:
                said = True
                with open(tracker.untraced_path) as f:
                    if "has no pyust" in f.read():
                        exe = os.path.realpath(f"/proc/{pid}/exe")
                        fail(
                            f"process {pid} cannot import pyust: install it there "
                            f"({exe} -m pip install pyust)"
                        )
                _say(
                    f"pyust: process {pid} has not joined after {JOIN_WAIT:.0f} s "
                    "(it runs no Python code now: blocked in a call?); waiting on"
                )
            if duration is not None and now - start >= max(
                duration, JOIN_WAIT if not joined else 0
            ):
                break
            time.sleep(0.02)
        if joined and _alive(pid):
            leave = os.path.join(tracker.folder, "leave.py")
            with open(leave, "w") as f:
                f.write(LEAVE.format(**fill))
            _remote_exec(pid, leave)
            deadline = time.monotonic() + JOIN_WAIT
            while not os.path.exists(fill["left"]) and _alive(pid):
                if time.monotonic() > deadline:
                    _say(f"pyust: process {pid} has not left yet: it will at its next safe point")
                    break
                time.sleep(0.01)
    finally:
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
        if tracker is not None:
            tracker.close()
            for line in tracker.untraced:
                _say(f"pyust: {line}")
        watchdog.finish(session.finish(None, None, None, output))
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if not joined:
        _say(f"pyust: process {pid} never joined: the trace is empty")
    _say(f"pyust: trace written to {output}")
    return 0

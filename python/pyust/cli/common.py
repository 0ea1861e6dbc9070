"""What every subcommand shares: bad input as one line and exit status 2
(`UsageError`, `fail`), sizes, counts and durations on the command line,
and the traced program itself (loading a script or module, running it
traced, its exit status).
"""

from __future__ import annotations

import os
import re
import sys
import types
from typing import NoReturn


def parse_exception_type(text: str) -> str:
    """`--snapshot-on`: an exception type name, dotted, `*` wildcards."""
    if not re.fullmatch(r"[A-Za-z_*][A-Za-z0-9_.*]*", text):
        fail(f"--snapshot-on needs an exception type name (e.g. ValueError), not {text!r}")
    return text


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# The environment variable that hands `record`'s control socket to the
# program it runs (see Tracker).
RECORD_ENV = "PYUST_RECORD"

# ... and, under --flight-recorder, record's pid, to which the program
# passes SIGUSR1 on.
SNAPSHOT_ENV = "PYUST_SNAPSHOT"

# `record`'s pid, for the program it starts (only): the program ends when
# record dies (SIGTERM from the kernel, PR_SET_PDEATHSIG).
PARENT_ENV = "PYUST_RECORD_PARENT"
SIGTERM = 15  # (Linux; the `signal` module would be imported into the program)


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


# Running the target in this interpreter


class Target:
    """What to run: a script path or a module name, and its argv."""

    def __init__(self, module: str | None, script: str | None, args: list[str]):
        self.module = module
        self.script = script
        self.args = args

    @property
    def argv(self) -> list[str]:
        if self.module is not None:
            return ["-m", self.module, *self.args]
        assert self.script is not None
        return [self.script, *self.args]

    @property
    def label(self) -> str:
        name = self.module or os.path.basename(self.script or "script")
        if name.endswith(".py"):
            name = name[: -len(".py")]
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "script"


def parse_target(args: list[str]) -> Target:
    """``[-m module | script.py] [args...]``, after pyust's own options."""
    if not args:
        fail("no script given (usage: pyust [-m module | script.py] [args...])")
    if args[0] == "-m":
        if len(args) < 2:
            fail("-m needs a module name")
        return Target(args[1], None, args[2:])
    if args[0].startswith("-m") and len(args[0]) > 2:
        return Target(args[0][2:], None, args[1:])
    return Target(None, args[0], args[1:])


def _main_module(path: str | None) -> types.ModuleType:
    """A fresh ``__main__`` module, as the interpreter makes for a script."""
    import builtins

    main = types.ModuleType("__main__")
    # The builtins module, as `python script.py` gives (in an imported
    # module such as this one, `__builtins__` is its dict instead).
    main.__dict__["__builtins__"] = builtins
    if path is not None:
        main.__file__ = path
        main.__cached__ = None  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    return main


def load_target(target: Target) -> tuple[types.CodeType, dict[str, object]]:
    """Compile the target and set up sys.argv, sys.path and ``__main__``."""
    if target.module is not None:
        import runpy

        # runpy's own lookup, as `python -m` does (packages run __main__).
        try:
            mod_name, spec, code = runpy._get_module_details(target.module)  # type: ignore[attr-defined]
        except BaseException as exc:  # ImportError, or runpy's _Error
            fail(f"cannot run module {target.module!r}: {exc}")
        sys.argv = [spec.origin or target.module, *target.args]
        sys.path.insert(0, os.getcwd())
        main = _main_module(spec.origin)
        main.__spec__ = spec
        main.__loader__ = spec.loader
        main.__package__ = spec.parent
        return code, main.__dict__

    assert target.script is not None
    path = os.path.abspath(target.script)
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        fail(f"cannot open script {target.script!r}: {exc.strerror}")
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        # The script's own fault: shown as Python would show it, exit 1.
        import traceback

        traceback.print_exception(type(exc), exc, None)
        raise SystemExit(1) from None
    sys.argv = [target.script, *target.args]
    sys.path[0] = os.path.dirname(path)
    main = _main_module(path)
    main.__loader__ = None
    main.__package__ = None
    main.__spec__ = None
    return code, main.__dict__


def _print_exception(exc: BaseException) -> None:
    """The traceback Python prints, without pyust's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
        tb = tb.tb_next
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def exit_status(exc: SystemExit) -> int:
    """The exit status the interpreter gives for ``SystemExit(code)``."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if code >= 0 else code % 256
    print(code, file=sys.stderr)
    return 1


BOOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_boot")


def arm_children() -> None:
    """The Python interpreters the program starts (spawn, forkserver,
    subprocess, exec) import `_boot/sitecustomize.py` first, through
    PYTHONPATH, which joins them to the recording."""
    paths = os.environ.get("PYTHONPATH", "")
    if BOOT not in paths.split(os.pathsep):
        os.environ["PYTHONPATH"] = BOOT + (os.pathsep + paths if paths else "")


def run_traced(target: Target) -> int:
    """``pyust script.py``: run the target traced in this interpreter."""
    from .. import _pyust

    code, namespace = load_target(target)
    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit() and not _pyust._die_with_parent(SIGTERM, int(parent)):
        return 128 + SIGTERM  # record died before the program started
    # Started by `pyust record`: wait until it records this process; the
    # Python processes the program starts join it too (see _boot).
    control = os.environ.get(RECORD_ENV)
    if control:
        _pyust._join_record(control)
        arm_children()
    snapshot_pid = os.environ.pop(SNAPSHOT_ENV, "")
    if snapshot_pid.isdigit():
        _pyust._forward_snapshot_signal(int(snapshot_pid))
    # (Without LTTng-UST, _pyust.run says that instead, in one line.)
    if not _pyust.session_active() and not _pyust._no_tracing():
        print(
            "pyust: no LTTng session is recording python:* events; running the script "
            "anyway (see `pyust record`, or `lttng enable-event -u 'python:*'`)",
            file=sys.stderr,
        )
    try:
        _pyust.run(code, namespace)
    except SystemExit as exc:
        return exit_status(exc)
    except KeyboardInterrupt as exc:
        _print_exception(exc)
        return 130
    except BaseException as exc:
        _print_exception(exc)
        return 1
    return 0


def parse_size(text: str) -> int:
    """A size in bytes: 4096, 64k, 4M (powers of two, as LTTng wants)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    if not m:
        fail(f"not a size: {text!r} (e.g. 4096, 64k, 4M)")
    size = int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()]
    if size < 4096 or size & (size - 1):
        fail(f"sub-buffer size must be a power of two of at least 4096: {text!r}")
    return size


def parse_max_size(text: str) -> int:
    """`--max-size`: bytes (4096, 500M, 2G, 1.5G), 0 for no limit."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)(?:i?[bB])?", text)
    if not m:
        fail(f"not a size: {text!r} (e.g. 500M, 2G; 0: no limit)")
    return int(float(m[1]) * (1 << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m[2].lower()]))


def parse_count(text: str) -> int:
    if not text.isdigit() or int(text) < 2 or int(text) & (int(text) - 1):
        fail(f"sub-buffer count must be a power of two of at least 2: {text!r}")
    return int(text)


def _say(line: str) -> None:
    """One line on stderr, which may be a terminal that has gone away."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        # The terminal hung up: what is left in the buffers goes nowhere,
        # rather than failing the flush at exit (status 120).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)


def trace_folder(path: str) -> str:
    """`path`, once it is a readable folder (else one line, status 2)."""
    if not os.path.isdir(path):
        fail(f"{path} is not a trace folder")
    if not os.access(path, os.R_OK | os.X_OK):
        fail(f"cannot read {path}")
    return path


READERS = ("pyust", "babeltrace2")


def require_trace(path: str) -> None:
    """That the folder `path` holds a trace (a `metadata` file somewhere
    under it) and PYUST_REPORT_READER, when set, is one of `READERS`; else
    one line and status 2."""
    reader = os.environ.get("PYUST_REPORT_READER", "")
    if reader and reader not in READERS:
        fail(f"PYUST_REPORT_READER is {' or '.join(READERS)}, not {reader!r}")
    for _root, _dirs, files in os.walk(path):
        if "metadata" in files:
            return
    fail(f"{path}: no CTF trace there (no metadata file)")


def _int_option(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        fail(f"{name} needs a whole number, not {value!r}")
    if number < 0:
        fail(f"{name} cannot be negative")
    return number


def parse_duration(name: str, text: str) -> int:
    """A duration in nanoseconds: 2.5 (seconds), 2.5s, 10ms, 50us, 300ns."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s)?", text.strip())
    if not m:
        fail(f"{name} needs a duration (e.g. 1ms, 50us, 2.5s), not {text!r}")
    scale = {
        "ns": 1,
        "us": 1_000,
        "µs": 1_000,
        "ms": 1_000_000,
        "s": 1_000_000_000,
        None: 1_000_000_000,
    }
    return round(float(m[1]) * scale[m[2]])

"""The ``pyust`` command (also ``python -m pyust``).

    pyust [-m module | script.py] [args...]                  trace into active sessions
    pyust record [-o DIR] [--view] [--all-processes] [-m module | script.py] [args...]
    pyust view DIR
    pyust report DIR [--sort KEY] [--limit N] [--pid P] [--tid T]
                     [--flamegraph SVG] [--folded TXT] [--perfetto FILE]
                     [--perfetto-json FILE] [--min-duration D] [--from T]
                     [--to T] [--max-slices N]

Bad input gets one line on stderr and exit status 2; the traced program's
own failures keep their usual traceback and exit status.
"""

from __future__ import annotations

import datetime
import glob
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import NoReturn

USAGE = """\
usage: pyust [-m module | script.py] [args...]
       pyust record [-o DIR | --relay HOST[:PORT] [--live]] [--view]
                    [--all-processes] [--max-size SIZE]
                    [--mode fast|readable] [--no-c-calls]
                    [--flight-recorder [--buffer SIZE] [--snapshot-on EXC]]
                    [--subbuf-size SIZE] [--num-subbuf N]
                    [-m module | script.py] [args...]
       pyust top [--relay HOST[:PORT]] [--once] [--interval S] [--limit N]
                 [SESSION]
       pyust view DIR
       pyust report DIR [--sort tottime|cumtime|calls] [--limit N]
                        [--pid P] [--tid T] [--host H] [--flamegraph out.svg]
                        [--folded out.txt] [--perfetto out.pftrace]
                        [--perfetto-json out.json] [--min-duration D]
                        [--from T] [--to T] [--max-slices N]

Trace a Python program into LTTng-UST (events python:call, python:return,
python:c_call, python:c_return, python:exception).

  pyust script.py ARGS       run the script traced; events go to the LTTng
                             sessions that enable python:* (as `lttng
                             create; lttng enable-event -u 'python:*';
                             lttng start` sets up)
  pyust -m module ARGS       the same for a module, as `python -m module`
  pyust record ...           the same inside a session pyust creates, starts,
                             stops and destroys; prints the trace folder.
                             It records the program and the children it
                             forks, no other process
      -o, --output DIR       where the trace goes (default: a new folder
                             under ./pyust-traces/)
      --view                 also print the trace as text
      --relay HOST[:PORT]    stream the trace to the LTTng relay daemon
                             (lttng-relayd) at HOST, control port PORT
                             (default 5342; data on PORT+1) instead of a
                             local folder; it lands in the relay's output
                             folder under <this host's name>/pyust/
      --live                 with --relay: a live session, which `babeltrace2
                             --input-format=lttng-live` (and live viewers)
                             read while the program runs; flushed every
                             second, so a relay lost during the run keeps
                             a readable copy up to then
      --mode MODE            readable (default): the python:* events, one
                             LTTng event each, strings in every event;
                             fast: the same events packed 8 bytes each per
                             thread and committed in batches
                             (python_fast:*), names once per id; `pyust
                             view` and `report` read both
      --no-c-calls           Python frames and exceptions only
      --all-processes        also record every other process that emits
                             python:* events meanwhile (programs that call
                             pyust.enable(), other `pyust` runs)
      --max-size SIZE        at most SIZE of trace on disk (default: 2G;
                             0: no limit): past it the oldest data goes, the
                             newest is kept, and record says how much went
                             (per user the program runs as)
      --flight-recorder      keep the trace in memory only (ring buffers
                             that overwrite the oldest data) and write a
                             snapshot of the last --buffer of activity at
                             exit, and whenever record or the program gets
                             SIGUSR1; each snapshot is a trace folder under
                             the output folder
      --buffer SIZE          memory for the flight recorder, over all CPUs
                             (default: 64M, less when /dev/shm is small)
      --snapshot-on EXC      also snapshot the first time each process of
                             the program raises the exception type EXC (as
                             python:exception names it: ValueError,
                             json.decoder.JSONDecodeError; `*` matches any
                             text); may be repeated
      --subbuf-size SIZE     ring-buffer sub-buffer size per CPU (default:
                             4M, less when /dev/shm is small or --max-size
                             needs it)
      --num-subbuf N         sub-buffers per CPU (default: 8)
  pyust top [SESSION]        a live table of the hottest functions of live
                             sessions (`record --relay HOST --live`): self
                             time and calls per function, host and process,
                             over the last interval and since attached, and
                             what each process runs now; until the sessions
                             end, or Ctrl-C
      --relay HOST[:PORT]    the relay daemon (default localhost; control
                             port PORT, default 5342; it serves live
                             viewers on PORT+2)
      SESSION                a session name, HOST/NAME, or a pattern (`*`,
                             `*-app` for every host's run of app.py) for
                             several, read together; without it: the relay's
                             only live session, or the list of them
      --interval S           seconds between tables (default 1); with it, or
                             when stdout is not a terminal, tables follow
                             one another as plain text
      --once                 print one table (of the first interval that
                             saw events) and exit
      --limit N              function rows per table (default 20; 0: all)
  pyust view DIR             print a trace folder as text
  pyust report DIR           where the time went: calls, self (tottime) and
                             total (cumtime) time per function, over all
                             processes and threads of the trace (of every
                             host, in a relay's output folder: the table
                             lists each host's processes, and the flame
                             graph and timelines name them host/process)
      --sort KEY             tottime (default), cumtime or calls
      --limit N              rows shown (default 30; 0: all)
      --pid P, --tid T       only this process / thread
      --host H               only host H's processes
      --flamegraph SVG       write an interactive flame graph
      --folded TXT           write folded stacks (process;thread;frames ns)
      --perfetto FILE        write a timeline for ui.perfetto.dev in
                             Perfetto's protobuf format (one track per
                             thread; several times smaller than JSON)
      --perfetto-json FILE   the timeline as trace-event JSON (also for
                             chrome://tracing)
      --min-duration D       timelines leave out slices shorter than D
                             (e.g. 100us, 1ms); --from T, --to T: only
                             the slices in that window, T from the first
                             event (e.g. 2.5s); --max-slices N: at most N
                             slices. The table says what each left out
  --                         ends pyust's options (a script named `record`)
  -h, --help                 this help;  --version  pyust's version
"""

# The channel `pyust record` creates: large sub-buffers so bursts of calls
# fit; when they overflow LTTng discards events and `record` says how many.
CHANNEL = "pyust"
# The fast mode's definitions (python_fast:def) have a channel of their
# own, so that the records' ring buffers (or --max-size's rotation, or a
# flight recorder's overwriting) never take them out from under the
# records that use them.
DEFS_CHANNEL = "pyust_defs"
DEFS_SUBBUF = 256 * 1024
DEFS_NUM_SUBBUF = 4
MODES = ("fast", "readable")
DEFAULT_MODE = "readable"
NUM_SUBBUF = 8
MAX_SUBBUF = 4 << 20
MIN_SUBBUF = 64 << 10


def subbuf_size() -> int:
    """The largest sub-buffer size (up to 4 MiB) whose per-CPU ring buffers
    take at most half of /dev/shm's free space, where LTTng-UST keeps them
    (containers often have only 64 MiB there)."""
    budget = shm_budget()
    if budget is None:
        return MAX_SUBBUF
    cpus = os.cpu_count() or 1
    size = MAX_SUBBUF
    while size > MIN_SUBBUF and cpus * NUM_SUBBUF * size > budget:
        size //= 2
    return size


# `record --max-size`: each stream's data (one per CPU) goes to this many
# trace files of a fixed size; when the last is full LTTng deletes the
# oldest and starts a new one (`--tracefile-size` / `--tracefile-count`).
DEFAULT_MAX_SIZE = 2 << 30
TRACEFILES_PER_STREAM = 4
PAGE = 4096


def possible_cpus() -> int:
    """How many per-CPU streams a channel has: LTTng makes one per possible
    CPU (/sys/devices/system/cpu/possible, e.g. "0-3")."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
        count = 0
        for part in text.split(","):
            first, _, last = part.partition("-")
            count += int(last or first) - int(first) + 1
        return max(count, 1)
    except (OSError, ValueError):
        return os.cpu_count() or 1


def size_limits(max_size: int, subbuf: int | None) -> tuple[int, int]:
    """(sub-buffer size, trace file size) for at most `max_size` bytes of
    trace over all streams; the sub-buffer shrinks to fit a trace file
    unless the user chose it."""
    streams = possible_cpus()
    tracefile = max_size // streams // TRACEFILES_PER_STREAM
    tracefile -= tracefile % PAGE
    smallest = streams * TRACEFILES_PER_STREAM * PAGE
    if tracefile < PAGE:
        fail(
            f"--max-size {human_size(max_size)} is too small for {streams} CPU stream(s): "
            f"at least {human_size(smallest)}"
        )
    if subbuf is not None:
        if subbuf > tracefile:
            fail(
                f"--max-size {human_size(max_size)} leaves {human_size(tracefile)} per trace "
                f"file, less than --subbuf-size {human_size(subbuf)}: raise one or lower the other"
            )
        return subbuf, tracefile
    size = subbuf_size()
    while size > tracefile and size > PAGE:
        size //= 2
    return size, tracefile


# `record --flight-recorder`: a snapshot session. Its ring buffers (per
# user, per CPU, in /dev/shm) overwrite their oldest sub-buffer when full,
# nothing is written to disk until a snapshot copies them out.
DEFAULT_BUFFER = 64 << 20


def shm_budget() -> int | None:
    """Half of /dev/shm's free space, where LTTng-UST keeps ring buffers."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize // 2


def flight_buffer(buffer: int | None, num_subbuf: int) -> int:
    """The sub-buffer size for `--buffer` bytes over all CPU streams."""
    streams = possible_cpus()
    budget = shm_budget()
    wanted = DEFAULT_BUFFER if buffer is None else buffer
    if buffer is None and budget is not None:
        wanted = min(wanted, budget)
    elif budget is not None and buffer is not None and buffer > budget:
        fail(
            f"--buffer {human_size(buffer)} does not fit in /dev/shm "
            f"({human_size(budget * 2)} free; LTTng keeps its ring buffers there)"
        )
    size = MAX_SUBBUF << 4
    while size > PAGE and streams * num_subbuf * size > wanted:
        size //= 2
    if streams * num_subbuf * size > wanted:
        fail(
            f"--buffer {human_size(wanted)} is too small for {streams} CPU stream(s) of "
            f"{num_subbuf} sub-buffers: at least {human_size(streams * num_subbuf * PAGE)}"
        )
    return size


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


def dropped_data(output: str) -> tuple[int, int, int]:
    """What `--max-size` dropped: (older packets gone, their estimated
    bytes, bytes kept), from the trace's packet indexes (LTTng's CTF index
    files: big-endian, one entry per packet with its size and the stream's
    packet sequence number, which starts at 0)."""
    streams: dict[str, list[tuple[int, int]]] = {}
    for index in glob.glob(os.path.join(output, "**", "index", "*.idx"), recursive=True):
        name = os.path.basename(index)[: -len(".idx")]
        # channel_cpu_n: the n-th trace file of stream channel_cpu.
        stream = os.path.join(os.path.dirname(index), name.rsplit("_", 1)[0])
        try:
            with open(index, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if len(data) < 16:
            continue
        magic, major, _minor, entry = struct.unpack(">IIII", data[:16])
        if magic != 0xC1F1DCC1 or major != 1 or entry < 72:
            continue
        for at in range(16, len(data) - entry + 1, entry):
            fields = struct.unpack(">9Q", data[at : at + 72])
            streams.setdefault(stream, []).append((fields[8], fields[1] // 8))
    dropped = dropped_bytes = kept = 0
    for packets in streams.values():
        size = sum(b for _, b in packets)
        kept += size
        gone = max(seq for seq, _ in packets) + 1 - len(packets)
        if gone > 0:
            dropped += gone
            dropped_bytes += gone * size // len(packets)
    return dropped, dropped_bytes, kept


# The environment variable that hands `record`'s control socket to the
# program it runs (see Tracker).
RECORD_ENV = "PYUST_RECORD"
# ... and, under --flight-recorder, record's pid, to which the program
# passes SIGUSR1 on.
SNAPSHOT_ENV = "PYUST_SNAPSHOT"


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


# --------------------------------------------------------------------------
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


def run_traced(target: Target) -> int:
    """``pyust script.py``: run the target traced in this interpreter."""
    from . import _pyust

    code, namespace = load_target(target)
    # Started by `pyust record`: wait until it records this process. The
    # variable goes: the program's own subprocesses are not record's.
    control = os.environ.pop(RECORD_ENV, None)
    if control:
        _pyust._join_record(control)
    snapshot_pid = os.environ.pop(SNAPSHOT_ENV, "")
    if snapshot_pid.isdigit():
        _pyust._forward_snapshot_signal(int(snapshot_pid))
    # (Without LTTng-UST, _pyust.run says that instead, in one line.)
    if not _pyust.session_active() and not _pyust._no_tracing:
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


# --------------------------------------------------------------------------
# `pyust record`: a session of our own around a child interpreter


def _lttng() -> str:
    lttng = shutil.which("lttng")
    if lttng is None:
        fail("`record` needs the lttng command: install lttng-tools (apt-get install lttng-tools)")
    return lttng


def _run_lttng(lttng: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lttng, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )


def _lttng_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The last line lttng printed about its failure."""
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    return detail[-1] if detail else f"exit {proc.returncode}"


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        fail(f"lttng {what} failed: {_lttng_error(proc)}")


def ensure_session_daemon(lttng: str) -> None:
    """Reach the user's session daemon, or start one."""
    if _run_lttng(lttng, "list").returncode == 0:
        return
    sessiond = shutil.which("lttng-sessiond")
    if sessiond is None:
        fail("no LTTng session daemon runs and lttng-sessiond is not installed")
    proc = subprocess.run(
        [sessiond, "--daemonize"], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode != 0 or _run_lttng(lttng, "list").returncode != 0:
        detail = proc.stderr.strip().splitlines()
        fail(f"cannot start lttng-sessiond{': ' + detail[-1] if detail else ''}")


def trace_format(lttng: str) -> list[str]:
    """`lttng create` options for a CTF 1.8 trace: LTTng 2.15 and later
    write CTF 2 by default, which `pyust report`'s own reader leaves to
    libbabeltrace2 (several times slower)."""
    m = re.search(r"\b(\d+)\.(\d+)\.", _run_lttng(lttng, "--version").stdout)
    if m and (int(m[1]), int(m[2])) >= (2, 15):
        return ["--trace-format=ctf-1.8"]
    return []


RELAY_PORT = 5342  # lttng-relayd's control port; data on the next one


def parse_relay(value: str) -> tuple[str, int | None]:
    """`--relay HOST[:PORT]` (an IPv6 address in brackets: [::1]:5342)."""
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                fail(f"--relay {value}: HOST or HOST:PORT")
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not host or (port is not None and not (port.isdigit() and 0 < int(port) < 65535)):
        fail(f"--relay {value}: HOST or HOST:PORT (a port from 1 to 65534)")
    return host, None if port is None else int(port)


def relay_host(relay: tuple[str, int | None]) -> str:
    """The relay's host as a URL writes it (an IPv6 address in brackets)."""
    host = relay[0]
    return f"[{host}]" if ":" in host else host


def relay_address(relay: tuple[str, int | None]) -> str:
    return f"{relay_host(relay)}:{relay[1] or RELAY_PORT}"


def relay_url(relay: tuple[str, int | None], path: str) -> str:
    """lttng's net:// URL: control port, data port, the trace's path."""
    port = relay[1]
    ports = "" if port is None else f":{port}:{port + 1}"
    return f"net://{relay_host(relay)}{ports}/{path}"


def relay_problem(relay: tuple[str, int | None]) -> str | None:
    """Why nothing accepts connections on the relay's control port, if so."""
    host, port = relay
    try:
        socket.create_connection((host, port or RELAY_PORT), timeout=3).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def default_output(target: Target) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("pyust-traces", f"{target.label}-{stamp}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def discarded_events(lttng: str, session: str) -> int:
    """Events LTTng discarded in the session's channel (full ring buffers)."""
    proc = _run_lttng(lttng, "--mi", "xml", "list", session)
    if proc.returncode != 0:
        return 0
    try:
        root = ET.fromstring(proc.stdout)
    except ET.ParseError:
        return 0
    total = 0
    for elem in root.iter():
        if elem.tag.rsplit("}", 1)[-1] == "discarded_events" and (elem.text or "").isdigit():
            total += int(elem.text or "0")
    return total


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
            ready, _, _ = select.select([self.listener, self.wake_r], [], [], 1.0)
            if self.wake_r in ready:
                return
            self._forget_ended()
            if self.listener in ready:
                self._answer(self._pending())

    def _pending(self) -> list[tuple[socket.socket, int]]:
        """Every connection waiting now (a Pool forks its workers at once:
        one `lttng track` for all of them), with the peer's pid."""
        waiting = []
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


class DiskWatch:
    """Stops the recording before the trace's disk is full.

    LTTng's consumer writing into a full disk leaves a trace nothing can
    read (its metadata may never be written). So while the program runs,
    this thread looks at the free space of the output's file system every
    50 ms; when what is left is less than `margin` (room for the ring
    buffers' flush and the metadata) plus four times what the last
    interval took (a fast disk fills by hundreds of MB per second), it
    stops the session (`lttng stop`): the trace ends there, complete, and
    the program runs on untraced.
    """

    INTERVAL = 0.05

    def __init__(self, lttng: str, session: str, output: str, margin: int) -> None:
        self.lttng = lttng
        self.session = session
        self.output = output
        self.margin = margin
        self.stopped_at: float | None = None
        self.free_then = 0
        self.started = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="pyust-disk", daemon=True)
        self.thread.start()

    def free(self) -> int | None:
        path = self.output
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _serve(self) -> None:
        last = self.free()
        while not self.done.wait(self.INTERVAL):
            free = self.free()
            if free is None or last is None:
                last = free
                continue
            taken, last = max(last - free, 0), free
            if free < self.margin + 4 * taken:
                self.stopped_at = time.monotonic() - self.started
                self.free_then = free
                _run_lttng(self.lttng, "stop", self.session)
                return

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)


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
        self.triggers: list[str] = []
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
        for pid in pids or [None]:
            name = f"{self.session}-on-{len(self.triggers)}"
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
                self.triggers.append(name)
            elif not self.trigger_failed:
                self.trigger_failed = True
                _say(f"pyust: --snapshot-on: lttng add-trigger failed: {_lttng_error(proc)}")

    def close(self) -> None:
        """Stops the thread and removes the triggers (the session stays)."""
        if self.thread.is_alive():
            os.write(self.wake_w, b"q")
            self.thread.join(timeout=30)
        os.close(self.wake_r)
        os.close(self.wake_w)
        for name in self.triggers:
            _run_lttng(self.lttng, "remove-trigger", name)

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


def _foreground_on_terminal() -> bool:
    """Whether this process is in the foreground of a terminal (where
    Ctrl-C signals the whole process group)."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _option_value(argv: list[str], what: str) -> tuple[str, list[str]]:
    """The value of the option argv[0] (``--opt VALUE`` or ``--opt=VALUE``)
    and the arguments after it."""
    name, eq, value = argv[0].partition("=")
    if eq:
        return value, argv[1:]
    if len(argv) < 2:
        fail(f"{name} needs {what}")
    return argv[1], argv[2:]


def record(argv: list[str]) -> int:
    output: str | None = None
    view = False
    subbuf: int | None = None
    num_subbuf = NUM_SUBBUF
    all_processes = False
    max_size: int | None = None
    flight = False
    buffer: int | None = None
    exc_types: list[str] = []
    mode = DEFAULT_MODE
    c_calls = True
    relay: tuple[str, int | None] | None = None
    live = False
    while argv:
        arg = argv[0]
        name = arg.partition("=")[0] if arg.startswith("--") else arg
        if name in ("-o", "--output"):
            output, argv = _option_value(argv, "a folder")
        elif arg == "--view":
            view, argv = True, argv[1:]
        elif name == "--relay":
            value, argv = _option_value(argv, "a host, or host:port")
            relay = parse_relay(value)
        elif arg == "--live":
            live, argv = True, argv[1:]
        elif arg == "--all-processes":
            all_processes, argv = True, argv[1:]
        elif name == "--max-size":
            value, argv = _option_value(argv, "a size (e.g. 500M, 2G; 0: no limit)")
            max_size = parse_max_size(value)
        elif arg == "--flight-recorder":
            flight, argv = True, argv[1:]
        elif name == "--mode":
            mode, argv = _option_value(argv, "fast or readable")
            if mode not in MODES:
                fail(f"--mode {mode}: fast or readable")
        elif arg == "--no-c-calls":
            c_calls, argv = False, argv[1:]
        elif name == "--buffer":
            value, argv = _option_value(argv, "a size (e.g. 64M)")
            buffer = parse_max_size(value)
        elif name == "--snapshot-on":
            value, argv = _option_value(argv, "an exception type (e.g. ValueError)")
            exc_types.append(parse_exception_type(value))
        elif name == "--subbuf-size":
            value, argv = _option_value(argv, "a value")
            subbuf = parse_size(value)
        elif name == "--num-subbuf":
            value, argv = _option_value(argv, "a value")
            num_subbuf = parse_count(value)
        elif arg == "--":
            argv = argv[1:]
            break
        elif arg in ("-h", "--help"):
            print(USAGE)
            return 0
        elif arg.startswith("-") and not arg.startswith("-m"):
            fail(f"unknown option for record: {arg}")
        else:
            break
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
    channel_subbuf = subbuf or subbuf_size()
    if flight:
        channel_subbuf = flight_buffer(buffer, num_subbuf)
    else:
        if max_size is None:
            max_size = DEFAULT_MAX_SIZE
        if max_size:
            channel_subbuf, tracefile = size_limits(max_size, subbuf)
            limits = [f"--tracefile-size={tracefile}", f"--tracefile-count={TRACEFILES_PER_STREAM}"]
    target = parse_target(argv)
    if target.script is not None and not os.path.isfile(target.script):
        fail(f"cannot open script {target.script!r}: no such file")
    from . import _pyust

    if _pyust._no_tracing:  # LTTng-UST is not installed
        fail(_pyust._no_tracing)
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
    session = f"pyust-{os.getpid()}-{stamp}-{re.sub(r'[^A-Za-z0-9_.-]', '_', target.label)[:48]}"

    created = False
    status = 1
    # Signals that stop a recording: Ctrl-C (SIGINT), SIGTERM, and SIGHUP
    # when the terminal goes away. This process catches them (a caught
    # signal is reset to its default in the child at exec, an ignored one
    # would stay ignored there), passes them on to the traced child and,
    # once the child has ended, always tears the session down. On a
    # terminal, Ctrl-C reaches the child directly (same process group), so
    # SIGINT is not passed on there: the child would be interrupted twice.
    # Elsewhere (a container's init, a pipeline) the child gets a session
    # of its own and every signal reaches it through this process.
    on_terminal = _foreground_on_terminal()
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old_handlers = {sig: signal.getsignal(sig) for sig in stop_signals}
    received: list[int] = []
    child: subprocess.Popen[bytes] | None = None
    tracker: Tracker | None = None
    recorder: FlightRecorder | None = None
    watch: DiskWatch | None = None
    old_usr1 = signal.getsignal(signal.SIGUSR1)

    def on_stop_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        if on_terminal and signum == signal.SIGINT:
            return
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for sig in stop_signals:
        signal.signal(sig, on_stop_signal)
    try:
        if flight:
            try:
                os.makedirs(output, exist_ok=True)
            except OSError as exc:
                fail(f"cannot make the output folder {output}: {exc.strerror}")
            recorder = FlightRecorder(lttng, session, output, exc_types, mode)
            _check(
                _run_lttng(
                    lttng, "create", session, "--snapshot", "--no-output", *trace_format(lttng)
                ),
                "create",
            )
            created = True
            _check(
                _run_lttng(
                    lttng,
                    "snapshot",
                    "add-output",
                    f"--session={session}",
                    f"--name={recorder.output_name}",
                    output,
                ),
                "snapshot add-output",
            )
            signal.signal(signal.SIGUSR1, lambda _signum, _frame: recorder.request())
        elif relay is not None:
            _check(
                _run_lttng(
                    lttng,
                    "create",
                    session,
                    f"--set-url={relay_url(relay, output)}",
                    *(["--live"] if live else []),
                    *trace_format(lttng),
                ),
                "create",
            )
            created = True
        else:
            _check(
                _run_lttng(lttng, "create", session, f"--output={output}", *trace_format(lttng)),
                "create",
            )
            created = True

        def add_channel(name: str, subbuf: int, count: int, sizes: list[str], events: str) -> None:
            """A channel of the session, its events, and the contexts
            `report` tells processes and threads apart by."""
            for command, *args in (
                (
                    "enable-channel",
                    f"--subbuf-size={subbuf}",
                    f"--num-subbuf={count}",
                    *sizes,
                    name,
                ),
                ("enable-event", f"--channel={name}", events),
                (
                    "add-context",
                    f"--channel={name}",
                    "--type=vpid",
                    "--type=vtid",
                    "--type=procname",
                ),
            ):
                proc = _run_lttng(lttng, command, "--userspace", f"--session={session}", *args)
                if proc.returncode != 0 and relay is not None and command == "enable-channel":
                    # The session daemon reaches the relay at the first
                    # channel, before the program runs (a client of
                    # LTTng 2.16 may die of SIGPIPE there).
                    where = relay_address(relay)
                    fail(f"no relay daemon answers at {where} ({_lttng_error(proc)})")
                _check(proc, command)

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
            add_channel(DEFS_CHANNEL, DEFS_SUBBUF, DEFS_NUM_SUBBUF, defs_limits, "python_fast:def")
        elif c_calls:
            events = ["python:*"]
        else:
            events = ["python:call", "python:return", "python:exception"]
        add_channel(CHANNEL, channel_subbuf, num_subbuf, limits, ",".join(events))
        env = dict(os.environ)
        if recorder is not None:
            # SIGUSR1 to the program comes here (see run_traced).
            env[SNAPSHOT_ENV] = str(os.getpid())
            if all_processes:
                recorder.watch(None)
        if not all_processes:
            # No process is recorded until the tracker lets it in.
            _check(
                _run_lttng(
                    lttng, "untrack", "--userspace", f"--session={session}", "--all", "--vpid"
                ),
                "untrack",
            )
            try:
                tracker = Tracker(lttng, session, recorder.watch if recorder else None)
            except OSError as exc:
                fail(f"cannot make record's control socket: {exc}")
            env[RECORD_ENV] = tracker.path
        _check(_run_lttng(lttng, "start", session), "start")
        if relay is not None and live:
            live_port = (relay[1] or RELAY_PORT) + 2  # lttng-relayd's live port: 5344
            _say(
                "pyust: live: babeltrace2 --input-format=lttng-live "
                f"net://{relay_host(relay)}:{live_port}/host/{socket.gethostname()}/{session}"
            )
        if recorder is not None:
            recorder.start()
        elif relay is None:
            # Room for every ring buffer's flush, and the metadata.
            ring = possible_cpus() * num_subbuf * channel_subbuf
            watch = DiskWatch(lttng, session, output, ring + (16 << 20))
        if received:  # stopped while the session was being set up
            status = 128 + received[0]
        else:
            child = subprocess.Popen(
                [sys.executable, "-m", "pyust", "--", *target.argv],
                start_new_session=not on_terminal,
                env=env,
            )
            status = child.wait()
            if status < 0:
                status = 128 - status
    finally:
        # A second Ctrl-C (or the hangup that follows a closed terminal)
        # must not leave the session behind.
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        if recorder is not None:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            recorder.close()
        if watch is not None:
            watch.close()
        if tracker is not None:
            tracker.close()
            if tracker.refused:
                _say(f"pyust: {tracker.refused} process(es) of the program could not be recorded")
        if created:
            _run_lttng(lttng, "stop", session)
            lost = discarded_events(lttng, session) if recorder is None else 0
            if recorder is not None:
                problem = recorder.snapshot("exit")
                if problem:
                    _say(f"pyust: no snapshot at exit: {problem}")
            _run_lttng(lttng, "destroy", session)
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
            if max_size and relay is None:
                gone, gone_bytes, kept = dropped_data(output)
                if gone:
                    _say(
                        f"pyust: --max-size {human_size(max_size)}: the oldest {gone} "
                        f"packet(s) of the trace (about {human_size(gone_bytes)}) were "
                        f"dropped; the newest {human_size(kept)} are kept"
                    )
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGUSR1, old_usr1)
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


# --------------------------------------------------------------------------
# `pyust view`


def holds_fast_events(path: str) -> bool:
    """Whether a trace folder's metadata declares the fast mode's batches."""
    for root, dirs, files in os.walk(path):
        dirs.sort()
        if "metadata" in files:
            try:
                with open(os.path.join(root, "metadata"), "rb") as f:
                    if b"python_fast:batch" in f.read():
                        return True
            except OSError:
                pass
            dirs.clear()
    return False


def show(path: str) -> None:
    if holds_fast_events(path):
        # The batches are unpacked by pyust itself, into the same text.
        from . import _pyust

        try:
            _pyust._view(path)
        except OSError as exc:
            fail(f"cannot read {path}: {exc}")
        return
    babeltrace = shutil.which("babeltrace2")
    if babeltrace is None:
        fail("viewing a trace needs babeltrace2 (apt-get install babeltrace2)")
    for root, _dirs, files in os.walk(path):
        if "metadata" in files and os.path.getsize(os.path.join(root, "metadata")) == 0:
            # (babeltrace2 aborts on it.)
            fail(
                f"{root}: the metadata file is empty (the trace was cut short before "
                "its metadata was written): nothing in it can be read"
            )
    # The text goes straight to stdout (traces can be large); babeltrace2's
    # own diagnostics are replaced by one line.
    proc = subprocess.run(
        [babeltrace, path], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    if proc.returncode != 0:
        fail(f"babeltrace2 cannot read {path} (not an LTTng trace folder?)")


def view(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv and argv[0] == "--":
        argv = argv[1:]
    if len(argv) != 1:
        fail("usage: pyust view DIR")
    show(trace_folder(argv[0]))
    return 0


def trace_folder(path: str) -> str:
    """`path`, once it is a readable folder (else one line, status 2)."""
    if not os.path.isdir(path):
        fail(f"{path} is not a trace folder")
    if not os.access(path, os.R_OK | os.X_OK):
        fail(f"cannot read {path}")
    return path


# --------------------------------------------------------------------------
# `pyust report`

REPORT_OUTPUTS = ("--flamegraph", "--folded", "--perfetto", "--perfetto-json")
TIMELINE_LIMITS = ("--min-duration", "--from", "--to", "--max-slices")


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


def report(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    options: dict[str, str] = {}
    paths: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            paths.extend(argv[i + 1 :])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in (
                "--sort",
                "--limit",
                "--pid",
                "--tid",
                "--host",
                *REPORT_OUTPUTS,
                *TIMELINE_LIMITS,
            ):
                fail(f"unknown report option: {name} (see pyust --help)")
            if not eq:
                i += 1
                if i == len(argv):
                    fail(f"{name} needs a value")
                value = argv[i]
            options[name] = value
        else:
            paths.append(arg)
        i += 1
    if len(paths) != 1:
        fail("usage: pyust report DIR [options] (see pyust --help)")
    path = trace_folder(paths[0])
    sort = options.get("--sort", "tottime")
    if sort not in ("tottime", "cumtime", "calls"):
        fail(f"--sort is tottime, cumtime or calls, not {sort!r}")
    limit = _int_option("--limit", options.get("--limit", "30"))
    pid = _int_option("--pid", options["--pid"]) if "--pid" in options else None
    tid = _int_option("--tid", options["--tid"]) if "--tid" in options else None
    host = options.get("--host")
    if host is not None and not host:
        fail("--host needs a host name (as the trace's table lists them)")
    outputs = {}
    for name in REPORT_OUTPUTS:
        if name in options:
            out = options[name]
            parent = os.path.dirname(os.path.abspath(out))
            if not os.path.isdir(parent):
                fail(f"{name}: no folder {parent}")
            outputs[name[2:].replace("-", "_")] = out
    limits: dict[str, int] = {}
    for name in TIMELINE_LIMITS:
        if name in options:
            if "perfetto" not in outputs and "perfetto_json" not in outputs:
                fail(f"{name} bounds the timeline: give --perfetto FILE or --perfetto-json FILE")
            if name == "--max-slices":
                limits["max_slices"] = _int_option(name, options[name])
            else:
                key = {"--min-duration": "min_duration", "--from": "start", "--to": "end"}[name]
                limits[key] = parse_duration(name, options[name])
    if "start" in limits and "end" in limits and limits["end"] <= limits["start"]:
        fail("--to must come after --from")
    from . import _pyust

    try:
        table = _pyust._report(path, sort, limit, pid, tid, host, **outputs, **limits)
    except OSError as exc:  # the trace cannot be read, or an output written
        print(f"pyust: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outputs were removed
        print("pyust: interrupted", file=sys.stderr)
        return 130
    sys.stdout.write(table)
    sys.stdout.flush()
    for name, out in outputs.items():
        print(f"pyust: {name.replace('_', '-')} written to {out}", file=sys.stderr)
    return 0


def top(argv: list[str]) -> int:
    import fnmatch

    relay: tuple[str, int | None] = ("localhost", None)
    once = False
    interval: float | None = None
    limit = 20
    patterns: list[str] = []
    while argv:
        arg = argv[0]
        name = arg.partition("=")[0] if arg.startswith("--") else arg
        if arg in ("-h", "--help"):
            print(USAGE)
            return 0
        if name == "--relay":
            value, argv = _option_value(argv, "a host, or host:port")
            relay = parse_relay(value)
        elif arg == "--once":
            once, argv = True, argv[1:]
        elif name == "--interval":
            value, argv = _option_value(argv, "seconds (e.g. 1, 0.5)")
            try:
                interval = float(value)
            except ValueError:
                interval = -1.0
            if not 0.1 <= interval <= 3600:
                fail(f"--interval {value}: seconds, from 0.1 to 3600")
        elif name == "--limit":
            value, argv = _option_value(argv, "a number of rows")
            limit = _int_option("--limit", value)
        elif arg == "--":
            patterns.extend(argv[1:])
            break
        elif arg.startswith("-"):
            fail(f"unknown option for top: {arg} (see pyust --help)")
        else:
            patterns.append(arg)
            argv = argv[1:]
    if len(patterns) > 1:
        fail("top takes one SESSION (a pattern matches several: '*-app')")
    live_port = (relay[1] or RELAY_PORT) + 2
    where = f"{relay_host(relay)}:{live_port}"
    try:
        socket.create_connection((relay[0], live_port), timeout=3).close()
    except OSError as exc:
        fail(f"no relay daemon serves live viewers at {where} ({exc.strerror or exc})")
    from . import _pyust

    try:
        sessions = _pyust._live_sessions(f"net://{where}")
    except OSError as exc:
        fail(f"cannot list the live sessions at {where}: {exc}")

    def label(session: tuple[str, str, str, int, int]) -> str:
        return f"{session[1]}/{session[2]}"

    if patterns:
        chosen = [
            s
            for s in sessions
            if fnmatch.fnmatchcase(s[2], patterns[0]) or fnmatch.fnmatchcase(label(s), patterns[0])
        ]
        if not chosen:
            known = ", ".join(label(s) for s in sessions) or "none"
            fail(f"no live session {patterns[0]!r} at {where} (its live sessions: {known})")
    elif not sessions:
        fail(
            f"no live session at {where} "
            f"(`pyust record --relay {relay_address(relay)} --live` makes one)"
        )
    elif len(sessions) > 1:
        for s in sessions:
            print(f"{label(s)}  ({s[3]} stream(s), {s[4]} viewer(s))")
        sys.stdout.flush()
        fail(f"{len(sessions)} live sessions at {where}: name one (HOST/NAME, or a pattern)")
    else:
        chosen = sessions
    title = label(chosen[0]) if len(chosen) == 1 else f"{len(chosen)} sessions"
    redraw = interval is None and not once and sys.stdout.isatty()
    sys.stdout.flush()
    # Ctrl-C is how one leaves: make sure it arrives, even when this process
    # started with SIGINT ignored (launched from a background job, which
    # Python then leaves ignored).
    old_sigint = signal.getsignal(signal.SIGINT)
    if old_sigint in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        end = _pyust._top(
            [s[0] for s in chosen],
            f"{title} at {where}",
            interval or 1.0,
            once,
            limit,
            redraw,
        )
    except OSError as exc:
        print(f"pyust: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the usual way to leave a live view
        return 0
    finally:
        signal.signal(signal.SIGINT, old_sigint if old_sigint is not None else signal.SIG_DFL)
    if end == "ended":
        print(
            "pyust top: the session ended" if len(chosen) == 1 else "pyust top: the sessions ended",
            file=sys.stderr,
        )
    return 0


# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        if args and args[0] == "--version":
            from . import __version__

            print(f"pyust {__version__}")
            return 0
        if args and args[0] == "record":
            return record(args[1:])
        if args and args[0] == "view":
            return view(args[1:])
        if args and args[0] == "report":
            return report(args[1:])
        if args and args[0] == "top":
            return top(args[1:])
        if args and args[0] == "--":
            args = args[1:]
        elif args and args[0].startswith("-") and not args[0].startswith("-m"):
            fail(f"unknown option: {args[0]} (see pyust --help)")
        return run_traced(parse_target(args))
    except UsageError as exc:
        print(f"pyust: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1

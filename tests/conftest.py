"""Test helpers: real LTTng sessions, real traces, parsed babeltrace2 text.

Every test that records creates its own uniquely named session writing to
its own folder, and keeps only the events of the process it started (by
vpid), so other activity on the machine cannot pollute it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "scenarios"
PYUST_DIR = Path(__import__("pyust").__file__).resolve().parent

# Modules whose subject does not depend on the interpreter (the trace
# readers, the timelines, record's relay streaming, record's lifetime):
# `cargo xtask ci` runs them on a few interpreters only (3.8, 3.14t, 3.15:
# before and after CPython's fork warning), saying why in PYUST_SKIP_SHARED.
SHARED_MODULES = ("test_reader.py", "test_timeline.py", "test_relay.py", "test_lifetime.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = os.environ.get("PYUST_SKIP_SHARED")
    if not reason:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.path.name in SHARED_MODULES:
            item.add_marker(skip)


LINE_RE = re.compile(
    r"^\[(?P<time>[^\]]+)\] \((?P<delta>[^)]+)\) (?P<host>\S+) "
    r"(?P<event>[A-Za-z0-9_]+:[A-Za-z0-9_]+): (?P<rest>.*)$"
)
FIELD_RE = re.compile(r'(\w+) = ("(?:[^"\\]|\\.)*"|-?\d+)')
_counter = itertools.count()

# For scripts under test: memory_kib(), what a leak would grow. On a
# build with the GIL, the process's anonymous memory (LTTng's ring buffers
# are shared memory, whose pages count in RSS as they are first written).
# On a free-threaded build, whose allocator (mimalloc) keeps pages it
# freed, RSS grows for a while with no leak: there it is what glibc's heap
# has in use, where pyust's own allocations (names, caches) live.
MEMORY = """
import ctypes as _ctypes
import sysconfig as _sysconfig


class _MallInfo2(_ctypes.Structure):
    _fields_ = [(_n, _ctypes.c_size_t) for _n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    ).split()]


def memory_kib():
    if _sysconfig.get_config_var("Py_GIL_DISABLED"):
        libc = _ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        return (info.uordblks + info.hblkhd) // 1024
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
"""


@dataclass
class Event:
    name: str  # without the provider: "call", "return", ...
    vpid: int
    vtid: int
    fields: dict[str, object] = field(default_factory=dict)

    def __getitem__(self, key: str) -> object:
        return self.fields[key]

    def short(self) -> str:
        if self.name in ("call", "c_call"):
            return f"{self.name} {self.fields['co_qualname']}"
        if self.name == "exception":
            return f"exception {self.fields['exc_type']}"
        return self.name


def _value(raw: str) -> object:
    if raw.startswith('"'):
        # babeltrace2 escapes quotes, backslashes, control characters and
        # '?' (C trigraphs) the C way.
        body = re.sub(r"\\\?", "?", raw[1:-1])
        return bytes(body, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    return int(raw)


def parse_trace(text: str) -> list[Event]:
    """Every python:* event of babeltrace2's text, with its fields."""
    events = []
    for line in text.splitlines():
        m = LINE_RE.match(line)
        if not m or not m["event"].startswith("python:"):
            continue
        values = {k: _value(v) for k, v in FIELD_RE.findall(m["rest"])}
        vpid = int(values.pop("vpid", -1))  # type: ignore[call-overload]
        vtid = int(values.pop("vtid", -1))  # type: ignore[call-overload]
        values.pop("cpu_id", None)
        values.pop("procname", None)
        events.append(Event(m["event"].split(":", 1)[1], vpid, vtid, values))
    return events


def babeltrace(path: Path) -> str:
    proc = subprocess.run(["babeltrace2", str(path)], capture_output=True, text=True, check=True)
    return proc.stdout


def lttng(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["lttng", *args], capture_output=True, text=True, check=check)


# A script that prints "ready" and sleeps until it is stopped.
SLEEPER = (
    "import time\n"
    "def nap():\n"
    "    while True:\n"
    "        time.sleep(0.05)\n"
    "print('ready', flush=True)\n"
    "nap()\n"
)


def pyust_sessions() -> list[str]:
    """Sessions of `pyust record` still there (the tests' own are
    pyust-test-*)."""
    out = lttng("list").stdout
    return [line for line in out.splitlines() if "pyust-" in line and "pyust-test-" not in line]


def ctf18() -> list[str]:
    """`lttng create` options for a CTF 1.8 trace (LTTng 2.15+ writes CTF 2
    unless asked), as `pyust record` passes them."""
    version = re.search(r"\b(\d+)\.(\d+)\.", lttng("--version").stdout)
    if version and (int(version[1]), int(version[2])) >= (2, 15):
        return ["--trace-format=ctf-1.8"]
    return []


def check_nesting(events: list[Event], complete: bool = True) -> None:
    """call/return and c_call/c_return nest like parentheses on each thread
    (and, when `complete`, every one is closed)."""
    stacks: dict[int, list[str]] = {}
    for ev in events:
        stack = stacks.setdefault(ev.vtid, [])
        if ev.name in ("call", "c_call"):
            stack.append(ev.name)
        elif ev.name in ("return", "c_return"):
            opener = "call" if ev.name == "return" else "c_call"
            assert stack, f"{ev.name} with nothing open on thread {ev.vtid}"
            assert stack.pop() == opener, f"{ev.name} closes a {opener} mismatch"
    for tid, stack in stacks.items():
        assert not complete or not stack, f"thread {tid} left {stack} open"


def check_no_pyust_frames(events: list[Event]) -> None:
    for ev in events:
        if ev.name == "call":
            path = str(ev["co_filename"])
            assert not path.startswith(str(PYUST_DIR)), f"pyust frame in trace: {ev}"
        if ev.name == "c_call":
            assert "_pyust" not in str(ev["co_qualname"]), f"pyust C call in trace: {ev}"


@dataclass
class Session:
    name: str
    output: Path
    stopped: bool = False

    def stop(self) -> list[Event]:
        if not self.stopped:
            lttng("stop", self.name)
            self.stopped = True
        return parse_trace(babeltrace(self.output))

    def events_of(self, pid: int) -> list[Event]:
        return [e for e in self.stop() if e.vpid == pid]


@pytest.fixture(scope="session")
def sessiond() -> None:
    if shutil.which("lttng") is None or shutil.which("babeltrace2") is None:
        pytest.fail("lttng-tools and babeltrace2 must be installed (see .ci/run)")
    if lttng("list", check=False).returncode != 0:
        subprocess.run(["lttng-sessiond", "--daemonize"], check=True)
        lttng("list")


def make_session(
    tmp_path: Path, events: str = "python:*", filter_expr: str | None = None
) -> Session:
    name = f"pyust-test-{os.getpid()}-{next(_counter)}"
    output = tmp_path / "trace"
    lttng("create", name, f"--output={output}")
    try:
        # Room for the larger tests' bursts: 8 x 1 MiB per CPU.
        lttng(
            "enable-channel",
            "--userspace",
            f"--session={name}",
            "--subbuf-size=1M",
            "--num-subbuf=8",
            "c",
        )
        args = ["enable-event", "--userspace", f"--session={name}", "--channel=c", events]
        if filter_expr:
            args.append(f"--filter={filter_expr}")
        lttng(*args)
        lttng(
            "add-context",
            "--userspace",
            f"--session={name}",
            "--channel=c",
            "--type=vpid",
            "--type=vtid",
        )
        lttng("start", name)
    except BaseException:
        lttng("destroy", name, check=False)
        raise
    return Session(name, output)


@pytest.fixture
def session(sessiond: None, tmp_path: Path) -> Iterator[Session]:
    s = make_session(tmp_path)
    try:
        yield s
    finally:
        lttng("destroy", s.name, check=False)


def run_python(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with `args`, capturing text output."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _run_under(
    session: Session, argv: list[str], timeout: float, env: dict[str, str] | None = None
):
    """Run `argv` (in `env`, else this environment) while `session`
    records; the finished process, its pid and its events."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    out, err = proc.communicate(timeout=timeout)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done, proc.pid, session.events_of(proc.pid)


def run_traced(
    session: Session, script: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[Event]]:
    """`python -m pyust script args` under `session`; its events only."""
    done, _, events = _run_under(session, [sys.executable, "-m", "pyust", str(script), *args], 120)
    return done, events


def run_plain(
    session: Session,
    script: Path,
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
):
    """`python script args` (no launcher: the script uses the API) under
    `session`, in `env` if given; the finished process, its pid and its
    events."""
    return _run_under(session, [sys.executable, str(script), *args], timeout, env)


def write_script(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


class Terminal:
    """`pyust record` run as a person runs it: in the foreground of a real
    pseudo-terminal whose session it leads (as a login shell's job)."""

    def __init__(self, argv: list[str]) -> None:
        import fcntl
        import pty
        import termios

        self.master, slave = pty.openpty()
        # A window size and TERM, as a terminal emulator sets them.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))

        def take_terminal() -> None:  # in the child, after setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,
            env={**os.environ, "TERM": os.environ.get("TERM") or "xterm"},
        )
        os.close(slave)
        self.output = b""

    def read_until(self, text: bytes, timeout: float = 60) -> None:
        import select

        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} on the terminal: {self.output!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: every slave side is closed
                    chunk = b""
                assert chunk, f"terminal closed before {text!r}: {self.output!r}"
                self.output += chunk

    def finish(self, timeout: float = 60) -> int:
        """Reads the terminal until the program ends; its exit status."""
        import select

        deadline = time.monotonic() + timeout
        while self.proc.poll() is None or select.select([self.master], [], [], 0)[0]:
            assert time.monotonic() < deadline, f"still running: {self.output!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    break
                self.output += chunk
        os.close(self.master)
        return self.proc.wait(timeout=timeout)

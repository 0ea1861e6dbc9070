"""`pyust attach PID`: a running Python process (CPython 3.14+, through
sys.remote_exec) is recorded without a restart, and left running untraced
with its own sys.monitoring tool still working; bad targets get one line
and exit status 2."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import parse_trace, pyust_sessions, run_python, write_script

NEEDS_314 = pytest.mark.skipif(
    not hasattr(sys, "remote_exec"),
    reason="pyust attach needs CPython 3.14+ (sys.remote_exec): cargo xtask ci runs these "
    "on 3.14, 3.14t and 3.15",
)

# A server-like loop with a sys.monitoring tool of its own (PROFILER_ID),
# which counts its function starts; it reports, when told to stop, that
# count since the last detach and its environment.
LOOP = """\
import os, sys, time

mon = sys.monitoring
mon.use_tool_id(mon.PROFILER_ID, "own-tool")
starts = [0]
def on_start(code, offset):
    starts[0] += 1
mon.register_callback(mon.PROFILER_ID, mon.events.PY_START, on_start)
mon.set_events(mon.PROFILER_ID, mon.events.PY_START)

def tick(i):
    return i

here = sys.argv[1]
open(os.path.join(here, "ready"), "w").close()
i = 0
while not os.path.exists(os.path.join(here, "stop")):
    if os.path.exists(os.path.join(here, "reset")):
        os.unlink(os.path.join(here, "reset"))
        starts[0] = 0
    tick(i)
    i += 1
    time.sleep(0.001)
with open(os.path.join(here, "report"), "w") as f:
    f.write(f"{starts[0]} {os.environ.get('PYUST_RECORD')} {os.environ.get('PYTHONPATH')}")
"""


def start_loop(tmp_path: Path) -> subprocess.Popen[bytes]:
    script = write_script(tmp_path, "loop.py", LOOP)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def attach(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pyust", "attach", *args, timeout=120)


@NEEDS_314
def test_attach_records_a_running_process_twice_and_leaves_it_untraced(
    sessiond: None, tmp_path: Path
) -> None:
    loop = start_loop(tmp_path)
    try:
        for n in (1, 2):
            out = tmp_path / f"trace{n}"
            done = attach(str(loop.pid), "--duration", "1", "-o", str(out))
            assert done.returncode == 0, done.stderr
            assert f"pyust: recording process {loop.pid}; Ctrl-C stops" in done.stderr
            events = parse_trace(run_python("-m", "pyust", "view", str(out)).stdout)
            ticks = [e for e in events if e.name == "call" and e["co_name"] == "tick"]
            # About 900 in the second (1 ms apart); within the first 0.5 s at least.
            assert len(ticks) > 200, done.stderr
            assert {e.vpid for e in events} == {loop.pid}
            assert pyust_sessions() == []
        # Detached: its own tool still counts, the environment is its own.
        (tmp_path / "reset").touch()
        time.sleep(0.3)
        (tmp_path / "stop").touch()
        assert loop.wait(timeout=30) == 0
        starts, record_env, pythonpath = (tmp_path / "report").read_text().split(" ")
        assert int(starts) > 50
        assert record_env == "None" and pythonpath == "None"
    finally:
        (tmp_path / "stop").touch()
        loop.wait(timeout=30)


@NEEDS_314
def test_attach_ends_with_the_process(sessiond: None, tmp_path: Path) -> None:
    loop = start_loop(tmp_path)
    out = tmp_path / "trace"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "attach", str(loop.pid), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not glob.glob(str(out / "**" / "metadata"), recursive=True):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    (tmp_path / "stop").touch()
    assert loop.wait(timeout=30) == 0
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    calls = [e for e in parse_trace(run_python("-m", "pyust", "view", str(out)).stdout)]
    assert any(e.name == "call" and e["co_name"] == "tick" for e in calls)
    assert pyust_sessions() == []


def _bad(*args: str) -> str:
    done = attach(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyust: "), done.stderr
    assert pyust_sessions() == []
    return lines[0]


@pytest.mark.skipif(hasattr(sys, "remote_exec"), reason="CPython 3.14+ has sys.remote_exec")
def test_attach_before_314_is_one_line() -> None:
    assert "needs CPython 3.14 or later" in _bad(str(os.getpid()))


@NEEDS_314
def test_attach_to_a_bad_target_is_one_line(sessiond: None, tmp_path: Path) -> None:
    assert _bad("999999999") == "pyust: no process 999999999"
    assert "needs a process id" in _bad("abc")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert "is not a CPython" in _bad(str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    older = [
        path
        for path in glob.glob("/root/.pyenv/versions/3.1[0-3]*/bin/python3")
        + ["/usr/bin/python3.13", "/usr/bin/python3.12", "/usr/bin/python3.11"]
        if os.path.exists(path)
    ]
    if older:
        old = subprocess.Popen([older[0], "-c", "import time; time.sleep(60)"])
        try:
            assert "is not a CPython" in _bad(str(old.pid))
        finally:
            old.kill()
            old.wait()


@NEEDS_314
def test_attach_killed_leaves_no_session(sessiond: None, tmp_path: Path) -> None:
    # SIGKILL of attach: its watchdog destroys the session; the process
    # runs on, its trace up to then readable.
    loop = start_loop(tmp_path)
    out = tmp_path / "trace"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyust", "attach", str(loop.pid), "-o", str(out)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        assert proc.stderr.readline() == f"pyust: recording process {loop.pid}; Ctrl-C stops\n"
        time.sleep(0.3)
        proc.kill()
        rest = proc.stderr.read()  # until the watchdog has cleaned up
        proc.wait()
        assert rest.startswith("pyust: attach was killed; its watchdog destroyed session "), rest
        assert pyust_sessions() == []
        assert loop.poll() is None
        view = run_python("-m", "pyust", "view", str(out))
        assert view.returncode == 0, view.stderr
        assert 'co_name = "tick"' in view.stdout
    finally:
        (tmp_path / "stop").touch()
        loop.wait(timeout=30)

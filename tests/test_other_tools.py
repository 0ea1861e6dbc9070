"""A traced program's own tools keep working: coverage.py, debuggers and
profilers that use the interpreter's one profile and trace function per
thread (3.8-3.11), whatever the order in which they and pyust start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import (
    Session,
    check_nesting,
    lttng,
    make_session,
    run_plain,
    run_python,
    run_traced,
    write_script,
)

WORK = """\
def branchy(n):
    if n > 2:
        return "big"
    try:
        raise ValueError(n)
    except ValueError:
        return "small"


def gen(n):
    for i in range(n):
        yield i * 2


def unused():
    return 1


def run():
    out = [branchy(i) for i in range(5)]
    out.append(sum(gen(4)))
    return out
"""

# Measures work.py with coverage.py's API; with WAIT, waits for the file
# WAIT names before the workload (the test starts a session meanwhile).
PROGRAM = """\
import json, os, sys, time
import coverage

cov = coverage.Coverage(data_file=None, branch=True, include=["*/work.py"])
cov.start()
wait = os.environ.get("WAIT")
if wait:
    print("started", flush=True)
    while not os.path.exists(wait):
        time.sleep(0.01)
    time.sleep(0.3)  # the watcher arms within 20 ms
import work
work.run()
cov.stop()
data = cov.get_data()
(path,) = [f for f in data.measured_files() if f.endswith("work.py")]
print(json.dumps({"lines": sorted(data.lines(path)), "arcs": sorted(data.arcs(path))}))
print("tracer", sys.gettrace() is None)
"""


def _coverage_of(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("{"))
    return json.loads(line)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    pytest.importorskip("coverage")
    write_script(tmp_path, "work.py", WORK)
    return write_script(tmp_path, "prog.py", PROGRAM)


def _untraced(program: Path) -> dict:
    return _coverage_of(run_python(str(program)))


def test_coverage_same_with_session_before(session: Session, program: Path) -> None:
    # The session records before the program starts: pyust is armed first,
    # coverage starts its tracer under it.
    expected = _untraced(program)
    proc, events = run_traced(session, program)
    assert _coverage_of(proc) == expected
    qualnames = [e["co_qualname"] for e in events if e.name == "call"]
    assert qualnames.count("branchy") == 5, qualnames
    check_nesting(events, complete=False)


def test_coverage_same_with_session_after(sessiond: None, program: Path, tmp_path: Path) -> None:
    # Coverage's tracer runs first; a session starts while the program runs
    # and pyust arms then, in front of it.
    expected = _untraced(program)
    flag = tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", str(program)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WAIT": str(flag)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    s = make_session(tmp_path)
    try:
        time.sleep(0.1)
        flag.write_text("")
        out, err = proc.communicate(timeout=120)
        events = [e for e in s.stop() if e.vpid == proc.pid]
    finally:
        lttng("destroy", s.name, check=False)
    assert _coverage_of(subprocess.CompletedProcess(proc.args, proc.returncode, out, err)) == (
        expected
    )
    # pyust recorded the workload all the same.
    qualnames = [e["co_qualname"] for e in events if e.name == "call"]
    assert qualnames.count("branchy") == 5, qualnames
    if sys.version_info >= (3, 9):
        # (3.8 arms at enable(), before coverage starts, whose trace
        # function then replaces pyust's: no exception events from there;
        # and frames running when the session starts return in it.)
        assert any(e.name == "exception" and e["exc_type"] == "ValueError" for e in events)
        check_nesting(events, complete=False)


SETTRACE = """\
import sys, threading, pyust

seen = []
def tracer(frame, event, arg):
    seen.append((threading.current_thread().name, event))
    return None

def work():
    return 1

# A trace function for new threads, then pyust: new threads keep theirs.
threading.settrace(tracer)
pyust.enable()
t = threading.Thread(target=work, name="worker")
t.start(); t.join()
assert ("worker", "call") in seen, seen
threading.settrace(None)

# This thread's own trace function, installed before pyust arms: kept
# (sys.gettrace() still returns it), called, and there after disable().
pyust.disable()
sys.settrace(tracer)
seen.clear()
pyust.enable()
assert sys.gettrace() is tracer
work()
assert ("MainThread", "call") in seen, seen
pyust.disable()
assert sys.gettrace() is tracer, sys.gettrace()
sys.settrace(None)

# Installed after pyust armed: disable() leaves it alone.
pyust.enable()
sys.settrace(tracer)
pyust.disable()
assert sys.gettrace() is tracer, sys.gettrace()
sys.settrace(None)

# A profiler of the program's, installed before pyust arms, keeps working.
import cProfile, pstats, io
p = cProfile.Profile()
p.enable()
pyust.enable()
for _ in range(3):
    work()
pyust.disable()
p.disable()
s = io.StringIO()
pstats.Stats(p, stream=s).print_stats()
assert "work" in s.getvalue(), s.getvalue()
print("ok")
"""


def test_other_trace_and_profile_functions_are_kept(session: Session, tmp_path: Path) -> None:
    script = write_script(tmp_path, "settrace.py", SETTRACE)
    proc, _, events = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    # pyust recorded the work beside them: once on the worker thread, and
    # on the main thread under its trace function and under cProfile.
    work = [e for e in events if e.name == "call" and e["co_name"] == "work"]
    on_main = [e for e in work if e.vtid == e.vpid]
    assert (len(work), len(on_main)) == (5, 4), [(e.vpid, e.vtid) for e in work]


def test_debugger_steps_through_a_traced_program(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "debugged.py",
        textwrap.dedent(
            """
            def add(a, b):
                total = a + b
                return total
            breakpoint()
            print(add(2, 3))
            """
        ),
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "pyust", str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONBREAKPOINT": "pdb.set_trace"},
    )
    out, err = child.communicate("step\nstep\nnext\np total\ncontinue\n", timeout=120)
    assert child.returncode == 0, err
    assert "(Pdb) 5" in out, out
    assert out.rstrip().endswith("5")
    # Traced all the while: add's call and return, and print's C call after.
    events = session.events_of(child.pid)
    calls = [e.short() for e in events if e.name in ("call", "c_call") and e.vtid == e.vpid]
    assert calls.count("call add") == 1 and "c_call builtins.print" in calls, calls

"""The Python API (SPEC section 2), run in child interpreters under a session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Session, check_nesting, check_no_pyust_frames, run_python, write_script


def run_script(session: Session, tmp_path: Path, source: str):
    """Run `source` with plain `python` (the API does the tracing)."""
    script = write_script(tmp_path, "prog.py", source)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out, session.events_of(proc.pid), script


def calls(events, script: Path) -> list[str]:
    return [
        str(e["co_qualname"])
        for e in events
        if e.name == "call" and e["co_filename"] == str(script)
    ]


def test_enable_disable_and_state(session: Session, tmp_path: Path) -> None:
    out, events, script = run_script(
        session,
        tmp_path,
        "import pyust\n"
        "def before(): pass\n"
        "def during(): len([])\n"
        "def after(): pass\n"
        "print(pyust.is_enabled(), pyust.session_active())\n"
        "before()\n"
        "pyust.enable(); pyust.enable()\n"
        "during()\n"
        "print(pyust.is_enabled())\n"
        "pyust.disable(); pyust.disable()\n"
        "after()\n"
        "print(pyust.is_enabled())\n",
    )
    assert out.split() == ["False", "True", "True", "False"]
    assert calls(events, script) == ["during"]
    assert [e.short() for e in events] == [
        "call during",
        "c_call builtins.len",
        "c_return",
        "return",
        "c_call builtins.print",
        "c_return",
    ]
    check_no_pyust_frames(events)


def test_tracing_context_manager_and_decorator(session: Session, tmp_path: Path) -> None:
    out, events, script = run_script(
        session,
        tmp_path,
        "import pyust\n"
        "def inside(): pass\n"
        "def outside(): pass\n"
        "with pyust.tracing():\n"
        "    inside()\n"
        "outside()\n"
        "@pyust.tracing()\n"
        "def decorated(x):\n"
        "    '''doc'''\n"
        "    inside()\n"
        "    return x * 2\n"
        "class C:\n"
        "    @pyust.tracing()\n"
        "    def method(self):\n"
        "        return self\n"
        "print(decorated(21), decorated.__name__, decorated.__doc__, pyust.is_enabled())\n"
        "c = C()\n"
        "print(c.method() is c)\n",
    )
    assert out.split() == ["42", "decorated", "doc", "False", "True"]
    assert calls(events, script) == ["inside", "decorated", "inside", "C.method"]
    check_nesting(events)
    check_no_pyust_frames(events)


def test_prototype_api(session: Session, tmp_path: Path) -> None:
    _, events, script = run_script(
        session,
        tmp_path,
        "from pyust import api\ndef f(): pass\napi.enable_ust()\nf()\napi.disable_ust()\nf()\n",
    )
    assert calls(events, script) == ["f"]
    check_no_pyust_frames(events)


def test_threads_started_after_enable(session: Session, tmp_path: Path) -> None:
    _, events, script = run_script(
        session,
        tmp_path,
        "import threading, pyust\n"
        "def work(): pass\n"
        "pyust.enable()\n"
        "ts = [threading.Thread(target=work) for _ in range(3)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
        "pyust.disable()\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n",
    )
    work = [e for e in events if e.name == "call" and e["co_qualname"] == "work"]
    assert len(work) == 3
    assert len({e.vtid for e in work}) == 3
    check_nesting(events)


def test_fork_child_traces_under_its_own_vpid(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "forks.py",
        "import os, pyust\n"
        "def in_parent(): pass\n"
        "def in_child(): pass\n"
        "pyust.enable()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    in_child()\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "in_parent()\n"
        "print(pid)\n",
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    child = int(proc.stdout.strip())
    all_events = session.stop()
    parent_calls = calls([e for e in all_events if e.vpid != child], script)
    child_calls = calls([e for e in all_events if e.vpid == child], script)
    assert "in_parent" in parent_calls
    assert child_calls == ["in_child"]


def test_session_active_and_tracepoints(session: Session) -> None:
    # False without a session is checked where no other session on the
    # machine can interfere: test_faults.test_no_session_daemon.
    proc = run_python(
        "-c", "import pyust; print(pyust.session_active(), pyust._pyust._tracepoints)"
    )
    assert proc.stdout.split() == ["True", "5"]


def test_idle_until_a_session_listens(sessiond: None, tmp_path: Path) -> None:
    """enable() with no session recording: nothing is installed. A session
    that starts later arms the hook (the watcher polls every 20 ms); one
    that stops disarms it."""
    from conftest import lttng, make_session

    ready = tmp_path / "ready"
    go = tmp_path / "go"
    stopped = tmp_path / "stopped"
    script = write_script(
        tmp_path,
        "idle.py",
        f"""
import os, sys, time, pyust
from pyust import _pyust
def marker():
    pass
def wait_for(cond, what):
    deadline = time.time() + 30
    while not cond():
        if time.time() > deadline:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.001)
pyust.enable()
print(pyust.is_enabled(), _pyust._armed(), sys.getprofile(), flush=True)
open({str(ready)!r}, "w").close()
wait_for(lambda: pyust.session_active(), "a session")
seen = time.perf_counter()
wait_for(_pyust._armed, "arming")
print("armed after", round((time.perf_counter() - seen) * 1000), "ms", flush=True)
for _ in range(3):
    marker()
open({str(go)!r}, "w").close()
wait_for(lambda: os.path.exists({str(stopped)!r}), "the session to stop")
wait_for(lambda: not _pyust._armed(), "disarming")
print("disarmed", pyust.is_enabled(), flush=True)
""",
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    import time

    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    s = make_session(tmp_path)
    try:
        while not go.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        events = s.stop()
        lttng("destroy", s.name)
        stopped.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        lttng("destroy", s.name, check=False)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "True False None"
    assert lines[1].startswith("armed after ")
    assert lines[2] == "disarmed True"
    mine = [e for e in events if e.vpid == proc.pid]
    assert [e["co_qualname"] for e in mine if e.name == "call"].count("marker") == 3

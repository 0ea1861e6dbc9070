"""The Python API (SPEC section 2), run in child interpreters under a session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from conftest import (
    Session,
    check_nesting,
    check_no_pyust_frames,
    lttng,
    make_session,
    run_plain,
    run_python,
    write_script,
)


def run_script(session: Session, tmp_path: Path, source: str):
    """Run `source` with plain `python` (the API does the tracing)."""
    script = write_script(tmp_path, "prog.py", source)
    proc, _, events = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, events, script


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


def test_backend() -> None:
    proc = run_python("-c", "import pyust; print(pyust.backend())")
    expected = "sys.monitoring" if sys.version_info >= (3, 12) else "profile"
    assert proc.stdout.strip() == expected


def test_session_active_and_tracepoints(session: Session) -> None:
    # False without a session is checked where no other session on the
    # machine can interfere: test_faults.test_no_session_daemon.
    proc = run_python(
        "-c", "import pyust; print(pyust.session_active(), pyust._pyust._tracepoints)"
    )
    assert proc.stdout.split() == ["True", "9"]


def test_exception_events_enabled_in_a_running_session(sessiond: None, tmp_path: Path) -> None:
    """A session recording calls only, then python:exception as well: the
    exception hook (3.8-3.11: a trace function, installed only while that
    event is recorded) reaches the running program."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = write_script(
        tmp_path,
        "late.py",
        f"""
import os, sys, time, pyust
def fail():
    raise ValueError("x")
def attempt():
    try:
        fail()
    except ValueError:
        pass
pyust.enable()
attempt()
open({str(ready)!r}, "w").close()
deadline = time.time() + 60
while not os.path.exists({str(go)!r}):
    if time.time() > deadline:
        sys.exit("timed out")
    time.sleep(0.001)
time.sleep(0.5)  # 25 periods of the watcher, which re-arms within one
attempt()
""",
    )
    session = make_session(tmp_path, events="python:call,python:return")
    try:
        proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        lttng("enable-event", "-u", f"--session={session.name}", "--channel=c", "python:exception")
        go.touch()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        events = session.events_of(proc.pid)
    finally:
        lttng("destroy", session.name, check=False)
    check_nesting(events)
    mine = [
        e.short()
        for e in events
        if (e.name == "exception" and e["co_qualname"] in ("fail", "attempt"))
        or (e.name == "call" and e["co_filename"] == str(script))
    ]
    first = mine.index("call attempt")
    second = mine.index("call attempt", first + 1)
    assert mine[first:second] == ["call attempt", "call fail"]
    assert mine[second:] == [
        "call attempt",
        "call fail",
        "exception ValueError",
        "exception ValueError",
    ]


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="a free-threaded CPython only"
)
def test_free_threaded_build_keeps_the_gil_off(session: Session, tmp_path: Path) -> None:
    # Without PYTHON_GIL=0 (which would force it off): a module that does
    # not declare itself safe turns the GIL back on at import, and warns
    # (an error here).
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    script = write_script(
        tmp_path,
        "ft.py",
        "import sys, threading, pyust\n"
        "def work():\n"
        "    return sum(range(10))\n"
        "pyust.enable()\n"
        "ts = [threading.Thread(target=work) for _ in range(4)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
        "pyust.disable()\n"
        "print(sys._is_gil_enabled())\n",
    )
    proc, _, events = run_plain(session, script, timeout=60, env={**env, "PYTHONWARNINGS": "error"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert proc.stderr == ""
    work = [e for e in events if e.name == "call" and e["co_name"] == "work"]
    assert len(work) == 4 and len({e.vtid for e in work}) == 4


def test_without_the_provider(tmp_path: Path) -> None:
    """The package with its tracepoint provider missing (what a machine
    without LTTng-UST looks like to pyust: the provider's dlopen fails):
    import works, nothing can be traced, the first `enable()` says so in
    one line, `python -m pyust` runs the script and `pyust record` exits 2.
    The wheels' check (`cargo xtask wheels --check`) runs the same in a
    container that has no LTTng at all."""
    import pyust

    package = Path(pyust.__file__).parent
    copy = tmp_path / "site" / "pyust"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("_pyust_tp-*", "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(copy.parent)}
    script = write_script(tmp_path, "hello.py", "print('hello')")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60
        )

    proc = run(
        "-c",
        "import pyust; print(pyust.__file__, pyust.session_active(), pyust._pyust._tracepoints);"
        "pyust.enable(); pyust.enable(); pyust.disable(); print(pyust._pyust._armed())",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(copy / "__init__.py"), "False", "9", "False"]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pyust: nothing is traced: the tracepoint provider did not load (")
    assert "_pyust_tp-" in lines[0]

    proc = run("-m", "pyust", str(script))
    assert (proc.returncode, proc.stdout) == (0, "hello\n")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("pyust: nothing is traced")

    proc = run("-m", "pyust", "record", "-o", str(tmp_path / "trace"), str(script))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("pyust: nothing is traced")
    assert not (tmp_path / "trace").exists()

"""`pyust record --mode fast` (the `python_fast` provider): events packed
per thread and committed in batches, names sent once per id. Checked
against the readable mode on the same deterministic programs: `pyust view`
of a fast trace gives, per thread, exactly the events the readable mode
records, field for field."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import (
    SCENARIOS,
    Event,
    babeltrace,
    check_nesting,
    lttng,
    parse_trace,
    pyust_sessions,
    run_python,
    write_script,
)


def record(tmp_path: Path, name: str, script: Path, *options: str) -> Path:
    out = tmp_path / name
    proc = run_python("-m", "pyust", "record", "-o", str(out), *options, str(script), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return out


def view(folder: Path) -> list[Event]:
    proc = run_python("-m", "pyust", "view", str(folder))
    assert proc.returncode == 0, proc.stderr
    return parse_trace(proc.stdout)


def per_thread(events: list[Event]) -> list[list[tuple[str, list[tuple[str, object]]]]]:
    """Each thread's events (name and fields), threads in order of their
    first event, processes told apart by order too (pids differ per run)."""
    threads: dict[tuple[int, int], list[tuple[str, list[tuple[str, object]]]]] = {}
    for e in events:
        threads.setdefault((e.vpid, e.vtid), []).append((e.name, sorted(e.fields.items())))
    return list(threads.values())


SCENARIO_NAMES = sorted(p.name for p in SCENARIOS.glob("*.py"))


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_fast_mode_gives_the_readable_events(sessiond: None, tmp_path: Path, scenario: str) -> None:
    script = tmp_path / scenario
    script.write_text((SCENARIOS / scenario).read_text())
    readable = record(tmp_path, "readable", script, "--mode", "readable")
    fast = record(tmp_path, "fast", script, "--mode", "fast")
    expected = parse_trace(babeltrace(readable))
    got = view(fast)
    assert got, "no events in the fast trace"
    check_nesting(got)
    assert per_thread(got) == per_thread(expected)
    # The fast trace holds no python:* event of its own: all were batched.
    assert " python:" not in babeltrace(fast)


def procnames(text: str) -> dict[str, set[str]]:
    """Each function's calls' procname (the emitting thread's, as LTTng
    records it), from babeltrace2's or `pyust view`'s text."""
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.search(r'procname = "([^"]*)".* co_name = "([^"]*)"', line)
        if m and "python:call:" in line:
            names.setdefault(m[2], set()).add(m[1])
    return names


def test_an_idle_threads_events_keep_its_name(sessiond: None, tmp_path: Path) -> None:
    # An idle thread's batch is committed by pyust's flusher thread: its
    # events were named `pyust-flusher` in view, report, top and the
    # flame graph instead of the program's thread's name.
    script = write_script(
        tmp_path,
        "idle.py",
        "import threading, time\n"
        "def early():\n    pass\n"
        "def late():\n    pass\n"
        "def worker():\n    early()\n    time.sleep(0.4)\n    late()\n"
        "early()\n"
        "t = threading.Thread(target=worker)\nt.start()\n"
        "time.sleep(0.4)\n"  # the flusher commits both threads' batches meanwhile
        "late()\nt.join()\n",
    )
    readable = procnames(babeltrace(record(tmp_path, "readable", script, "--mode", "readable")))
    fast_trace = record(tmp_path, "fast", script, "--mode", "fast")
    fast = procnames(run_python("-m", "pyust", "view", str(fast_trace)).stdout)
    assert readable["early"] and fast == readable, (fast, readable)


SHARED_CODE = """
code = compile("def shared():\\n    pass\\n", "<plugin>", "exec")
funcs = []
for i in range(40):  # one code object, 40 module dicts, 4 module names
    namespace = {"__name__": f"plugin{i % 4}"}
    exec(code, namespace)
    funcs.append(namespace["shared"])
for _ in range(10):
    for f in funcs:
        f()
"""


def test_a_code_under_many_globals_keeps_its_ids(sessiond: None, tmp_path: Path) -> None:
    # A function object per module dict, all of one code object: past 16
    # dicts, each call took a new id and wrote a definition (400 calls:
    # about 380 definitions).
    script = write_script(tmp_path, "plugins.py", SHARED_CODE)
    readable = record(tmp_path, "readable", script, "--mode", "readable")
    fast = record(tmp_path, "fast", script, "--mode", "fast")
    assert per_thread(view(fast)) == per_thread(parse_trace(babeltrace(readable)))
    defs = [
        line
        for line in babeltrace(fast).splitlines()
        if "python_fast:def" in line and 'co_name = "shared"' in line
    ]
    ids = {re.search(r"\bid = (\d+)", line)[1] for line in defs}  # type: ignore[index]
    assert len(ids) == 4 and len(defs) <= 40, (len(ids), len(defs))


def test_threads_fork_and_exceptions(sessiond: None, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "mix.py",
        textwrap.dedent(
            """
        import os, threading

        def leaf(i):
            if i % 7 == 0:
                try:
                    raise KeyError(i)
                except KeyError:
                    pass
            return len(str(i))

        def work(n):
            return sum(leaf(i) for i in range(n))

        threads = [threading.Thread(target=work, args=(3000,)) for _ in range(3)]
        for t in threads:
            t.start()
        work(500)
        for t in threads:
            t.join()
        # Forked once the threads are done: what the child's at-fork hooks
        # do depends on the threads' states.
        pid = os.fork()
        if pid == 0:
            work(700)
            os._exit(0)
        os.waitpid(pid, 0)
        """
        ),
    )
    readable = per_thread(parse_trace(babeltrace(record(tmp_path, "r", script))))
    fast_trace = record(tmp_path, "f", script, "--mode", "fast")
    fast = view(fast_trace)
    check_nesting(fast, complete=False)  # the child's os._exit never returns
    got = per_thread(fast)

    def deterministic(thread: list) -> list:
        # The threads' start, join and at-fork cleanup depend on timing:
        # the script's own calls and the exceptions do not.
        return [(n, f) for n, f in thread if n == "exception" or ("module", "__main__") in f]

    # Thread order may differ between runs: compare as multisets.
    assert sorted(repr(deterministic(t)) for t in got) == sorted(
        repr(deterministic(t)) for t in readable
    )
    assert len(got) == 5  # 4 threads and the forked child
    exit_call = ("c_call", [("co_name", "_exit"), ("co_qualname", "posix._exit")])
    child = [t for t in got if exit_call in t]
    assert len(child) == 1, "the child's records up to os._exit are in the trace"
    report = run_python("-m", "pyust", "report", str(fast_trace), "--limit", "0")
    assert report.returncode == 0, report.stderr
    assert "fast mode:" in report.stdout
    assert "no definition" not in report.stdout
    calls = re.search(r"^\s+(\d+)\s.*__main__\.leaf \(", report.stdout, re.M)
    assert calls and int(calls[1]) == 3 * 3000 + 500 + 700


def test_size_and_c_calls_off(sessiond: None, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "fib.py",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib(18)\nlen('x')\n",
    )
    readable = record(tmp_path, "r", script)
    fast = record(tmp_path, "f", script, "--mode", "fast")
    python_only = record(tmp_path, "p", script, "--mode", "fast", "--no-c-calls")
    events = parse_trace(babeltrace(readable))

    def size(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    per_event = size(fast) / len(events)
    # 8 bytes a record, plus LTTng's packet headers and the definitions.
    assert per_event <= 12, per_event
    assert size(fast) * 3 < size(readable)
    only = view(python_only)
    assert {e.name for e in only} == {"call", "return"}
    assert [e.fields for e in only if e.name == "call"] == [
        e.fields for e in view(fast) if e.name == "call"
    ]
    no_c = record(tmp_path, "rn", script, "--no-c-calls")
    assert {e.name for e in parse_trace(babeltrace(no_c))} == {"call", "return"}


def test_session_started_while_the_program_runs(sessiond: None, tmp_path: Path) -> None:
    """Definitions go out again every second: a session that starts late
    resolves every id after at most one epoch."""
    ready = tmp_path / "ready"
    script = write_script(
        tmp_path,
        "late.py",
        f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import pyust

def f():
    return g()

def g():
    return 1

pyust.enable()
end = time.time() + 60
open({str(ready)!r}, "w").close()
while time.time() < end and not os.path.exists({str(tmp_path / "stop")!r}):
    f()
    time.sleep(0.0005)
pyust.disable()
""",
    )
    name = f"pyust-test-late-{os.getpid()}"
    out = tmp_path / "trace"
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.2)  # the program's ids were all defined before
        lttng("create", name, f"--output={out}")
        lttng("enable-event", "-u", "-s", name, "python_fast:*")
        lttng("add-context", "-u", "-s", name, "-t", "vpid", "-t", "vtid")
        lttng("track", "-u", "-s", name, "--vpid", str(proc.pid))
        lttng("start", name)
        time.sleep(2.2)
        lttng("stop", name)
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=60)
        lttng("destroy", name, check=False)
    events = [e for e in view(out) if e.name == "call"]
    assert len(events) > 200
    named = [e for e in events if e["co_name"] != "?"]
    assert {"f", "g"} <= {e["co_name"] for e in named}
    # Unnamed only before the first epoch ended (at most 1 s of 2.2 s).
    assert len(named) > len(events) / 2
    first_named = events.index(named[0])
    assert all(e["co_name"] != "?" for e in events[first_named:])


def test_snapshot_on_exception_in_fast_mode(sessiond: None, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "boom.py",
        textwrap.dedent(
            """
            import time

            def careful():
                try:
                    {}["missing"]
                except KeyError:
                    pass

            def failing():
                raise ValueError("boom")

            for _ in range(50):
                careful()
            try:
                failing()
            except ValueError:
                pass
            time.sleep(1)
            """
        ),
    )
    out = tmp_path / "flight"
    proc = run_python(
        "-m",
        "pyust",
        "record",
        "-o",
        str(out),
        "--mode",
        "fast",
        "--flight-recorder",
        "--snapshot-on",
        "ValueError",
        str(script),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    on_value = [p for p in out.iterdir() if p.name.startswith("on-ValueError")]
    assert len(on_value) == 1, proc.stderr
    events = view(on_value[0])
    raised = [e for e in events if e.name == "exception" and e["exc_type"] == "ValueError"]
    assert raised and raised[0]["co_qualname"] == "failing"
    assert pyust_sessions() == []


TICKS_THEN_WAIT = """
import sys, time

def tick():
    pass

def last():
    pass

for _ in range(200):
    tick()
last()
open(sys.argv[1], "w").close()
time.sleep(60)
"""


def _record_until_ticked(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], Path]:
    """record --mode fast of TICKS_THEN_WAIT, once the program has ticked
    (in `env`, with PYUST_TEST_NO_FLUSHER: no batch is committed but by
    its thread or a signal's handler); the recording and its folder."""
    script = write_script(tmp_path, "term.py", TICKS_THEN_WAIT)
    out, flag = tmp_path / "trace", tmp_path / "done"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", "--mode", "fast", "-o", str(out)]
        + [str(script), str(flag)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYUST_TEST_NO_FLUSHER": "1", **env},
    )
    deadline = time.time() + 60
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.05)
    return proc, out


def test_sigterm_keeps_the_last_records(sessiond: None, tmp_path: Path) -> None:
    """A program ended by SIGTERM runs no exit hook: pyust's handler
    commits its batches before it dies of the signal. Without the flusher
    thread (a test hook), nothing else commits them: the signal's timing
    cannot make the test pass without the handler."""
    proc, out = _record_until_ticked(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    calls = [e["co_name"] for e in view(out) if e.name == "call"]
    assert calls.count("tick") == 200, err
    assert "last" in calls
    assert pyust_sessions() == []


def test_a_second_sigterm_does_not_cut_the_commit_short(sessiond: None, tmp_path: Path) -> None:
    """SIGTERM twice (a supervisor's retry): a second one while the first's
    handler committed the batches ran the handler again, which could not
    take the lock the first held and killed the process, the commit undone.
    The commit is made to last 300 ms (a test hook), the second signal
    sent 100 ms in."""
    proc, out = _record_until_ticked(tmp_path, PYUST_TEST_DYING_PAUSE_MS="300")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    calls = [e["co_name"] for e in view(out) if e.name == "call"]
    assert calls.count("tick") == 200, err
    assert pyust_sessions() == []


def test_bad_mode(tmp_path: Path) -> None:
    script = write_script(tmp_path, "x.py", "pass\n")
    proc = run_python("-m", "pyust", "record", "--mode", "quick", str(script))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["pyust: --mode quick: fast or readable"]

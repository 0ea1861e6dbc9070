"""`pyust record` records its own program and that program's forked
children, and no other process emitting python:* events meanwhile
(`--all-processes` records them all)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import (
    Event,
    Session,
    babeltrace,
    check_nesting,
    lttng,
    parse_trace,
    write_script,
)

# Two runs meet twice: both have started before either works, and neither
# stops (destroying its session) before the other has done its work.
RENDEZVOUS = """\
import os, sys, time

def meet(here, who, peer, step):
    open(os.path.join(here, who + "-" + step), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(here, peer + "-" + step)):
        if time.monotonic() > deadline:
            sys.exit(peer + " never reached " + step)
        time.sleep(0.005)
"""

SOLO = (
    RENDEZVOUS
    + """
def {me}_work(n):
    return sum(range(n))

meet(sys.argv[1], "{me}", "{other}", "start")
for i in range(50):
    {me}_work(i)
meet(sys.argv[1], "{me}", "{other}", "done")
"""
)

FORKING = (
    RENDEZVOUS
    + """
import multiprocessing

CONTEXT = multiprocessing.get_context("fork")
# The first two tasks wait for each other: both workers run tasks (else
# one could do them all and the other be terminated before it starts).
BOTH = CONTEXT.Barrier(2)

def {me}_square(x):
    if x < 2:
        BOTH.wait(timeout=60)
    return x * x

def {me}_first_in_child():
    return os.getpid()

def {me}_after_fork():
    return os.getpid()

# Runs right after pyust's own after-fork hook (and maybe threading's).
os.register_at_fork(after_in_child={me}_after_fork)

if __name__ == "__main__":
    meet(sys.argv[1], "{me}", "{other}", "start")
    with CONTEXT.Pool(2) as pool:
        squares = pool.map({me}_square, range(20), chunksize=1)
        assert squares == [x * x for x in range(20)]
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            {me}_first_in_child()
            os._exit(0)
        os.waitpid(pid, 0)
    meet(sys.argv[1], "{me}", "{other}", "done")
"""
)


def record(tmp_path: Path, script: Path, *args: str, options: tuple[str, ...] = ()):
    """Start `pyust record` of `script`; the process and its trace folder."""
    out = tmp_path / f"trace-{script.stem}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", *options, "-o", str(out), str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return proc, out


def finish(proc: subprocess.Popen[str], out: Path) -> list[Event]:
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr + stdout
    assert "could not be recorded" not in stderr
    return parse_trace(babeltrace(out))


def names(events: list[Event]) -> Counter[str]:
    return Counter(str(e["co_name"]) for e in events if e.name == "call")


def run_pair(tmp_path: Path, source: str) -> tuple[list[Event], list[Event]]:
    """Record `source` as alpha and as beta at the same time."""
    runs = []
    for me, other in (("alpha", "beta"), ("beta", "alpha")):
        text = source.replace("{me}", me).replace("{other}", other)
        script = write_script(tmp_path, f"{me}.py", text)
        runs.append(record(tmp_path, script, str(tmp_path)))
    alpha, beta = (finish(proc, out) for proc, out in runs)
    return alpha, beta


def test_two_concurrent_records_hold_only_their_own_program(sessiond: None, tmp_path: Path) -> None:
    alpha, beta = run_pair(tmp_path, SOLO)
    for events, me, other in ((alpha, "alpha", "beta"), (beta, "beta", "alpha")):
        calls = names(events)
        assert calls[f"{me}_work"] == 50
        assert calls[f"{other}_work"] == 0
        assert len({e.vpid for e in events}) == 1, "another process in the trace"
        check_nesting(events)


def test_forked_workers_are_in_their_own_trace_only(sessiond: None, tmp_path: Path) -> None:
    alpha, beta = run_pair(tmp_path, FORKING)
    for events, me, other in ((alpha, "alpha", "beta"), (beta, "beta", "alpha")):
        calls = names(events)
        assert not any(name.startswith(other) for name in calls), f"{other} in {me}'s trace"
        # Every task ran in a worker, and every worker is in the trace.
        assert calls[f"{me}_square"] == 20
        by_pid: dict[int, list[Event]] = {}
        for e in events:
            by_pid.setdefault(e.vpid, []).append(e)
        main = events[0].vpid
        squares = {e.vpid for e in events if e.name == "call" and e["co_name"] == f"{me}_square"}
        assert main not in squares and len(squares) == 2
        # The main process, 2 Pool workers, 3 os.fork() children.
        assert len(by_pid) == 6, sorted(by_pid)
        # A forked child is tracked before its first event: its trace
        # starts with the first code it runs after pyust's after-fork hook
        # (threading's hook, when registered after pyust's, or the script's).
        for pid, evs in by_pid.items():
            if pid != main:
                assert evs[0].name == "call", evs[0]
                assert evs[0]["co_name"] in ("_after_fork", f"{me}_after_fork"), evs[0]
                assert calls[f"{me}_after_fork"] and any(
                    e.name == "call" and e["co_name"] == f"{me}_after_fork" for e in evs
                )
        children = [
            pid
            for pid, evs in by_pid.items()
            if any(e.name == "call" and e["co_name"] == f"{me}_first_in_child" for e in evs)
        ]
        assert len(children) == 3
        for pid in children:
            check_nesting(by_pid[pid], complete=False)
        check_nesting(by_pid[main])


OUTSIDER = """\
import os, sys, time
import pyust

def outsider_work():
    return 1

pyust.enable()
deadline = time.monotonic() + 60
# Armed: some session records python:* (the test's own).
while not pyust._pyust._armed() and time.monotonic() < deadline:
    time.sleep(0.005)
open(sys.argv[1], "w").close()
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    outsider_work()
    time.sleep(0.002)
"""

INSIDE = """\
import time

def inside_work():
    return 2

for _ in range(30):
    inside_work()
    time.sleep(0.01)
"""


@pytest.mark.parametrize("all_processes", [False, True], ids=["isolated", "all-processes"])
def test_a_process_that_enables_pyust_outside_record(
    session: Session, tmp_path: Path, all_processes: bool
) -> None:
    outsider_script = write_script(tmp_path, "outsider.py", OUTSIDER)
    inside = write_script(tmp_path, "inside.py", INSIDE)
    armed, stop = tmp_path / "armed", tmp_path / "stop"
    outsider = subprocess.Popen(
        [sys.executable, str(outsider_script), str(armed), str(stop)], stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not armed.exists():
            assert outsider.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        options = ("--all-processes",) if all_processes else ()
        proc, out = record(tmp_path, inside, options=options)
        recorded = finish(proc, out)
    finally:
        stop.touch()
        outsider.wait(timeout=60)
    # The outsider emitted all along (the test's session has it)...
    assert names(session.events_of(outsider.pid))["outsider_work"] > 0
    # ... and record's trace holds it only when asked to.
    calls = names(recorded)
    assert calls["inside_work"] == 30
    if all_processes:
        assert calls["outsider_work"] > 0
        assert outsider.pid in {e.vpid for e in recorded}
    else:
        assert calls["outsider_work"] == 0
        assert outsider.pid not in {e.vpid for e in recorded}


def test_record_leaves_no_session_and_no_control_socket(sessiond: None, tmp_path: Path) -> None:
    import glob
    import tempfile

    before = set(glob.glob(f"{tempfile.gettempdir()}/pyust-record-*"))
    script = write_script(tmp_path, "solo.py", "def f():\n    return 1\nf()\n")
    proc, out = record(tmp_path, script)
    events = finish(proc, out)
    assert names(events)["f"] == 1
    assert set(glob.glob(f"{tempfile.gettempdir()}/pyust-record-*")) == before
    assert f"pyust-{proc.pid}-" not in lttng("list").stdout

"""`pyust record` records every Python process its program starts: the
workers of a multiprocessing Pool on each start method (fork, spawn,
forkserver), `subprocess` and `python -m` children, an `os.execv` of the
interpreter, children of children; and each keeps its events to its end
(a worker killed with SIGKILL keeps what it emitted). A child whose
interpreter has no pyust is named at the end, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Event, parse_trace, pyust_sessions, run_python, write_script

MODES = ("readable", "fast")


def record(
    tmp_path: Path, name: str, script: Path, *args: str, mode: str = "readable", c_calls=True
):
    """`pyust record` of `script`; its stdout and its events (`pyust view`,
    which reads both modes)."""
    out = tmp_path / name
    options = ["--mode", mode, *([] if c_calls else ["--no-c-calls"]), "-o", str(out)]
    done = run_python("-m", "pyust", "record", *options, str(script), *args, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "could not be" not in done.stderr, done.stderr
    view = run_python("-m", "pyust", "view", str(out))
    assert view.returncode == 0, view.stderr
    return done.stdout, parse_trace(view.stdout)


def calls(events: list[Event]) -> Counter[str]:
    return Counter(str(e["co_name"]) for e in events if e.name == "call")


def pids_calling(events: list[Event], name: str, module: str | None = None) -> set[int]:
    return {
        e.vpid
        for e in events
        if e.name == "call" and e["co_name"] == name and (module is None or e["module"] == module)
    }


# Both workers wait for each other first, as a program that needs both
# would: a spawned worker starts an interpreter, and untraced the map can
# end before the second one has started (about 1 run in 2 here); a forked
# one starts 10-20 ms later than untraced (its tracking), and on 3.8 the
# first often does all 20 tasks meanwhile. Each pool prints its workers.
POOL = """\
import multiprocessing, sys

def square(x):
    return x * x

def started(both):
    if both is not None:
        both.wait(timeout=60)

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        both = context.Barrier(2)
        with context.Pool(2, initializer=started, initargs=(both,)) as pool:
            assert pool.map(square, range(20)) == [x * x for x in range(20)]
            print(*(worker.pid for worker in pool._pool), flush=True)
"""

# Pools per start method and mode, in each of two `pyust record` runs at
# once: ten pools in the readable mode, four in the fast mode without C
# calls (where os._exit, which ends each fork worker, is no C call seen).
# Where `cargo xtask ci` runs the shared tests on other interpreters only
# (PYUST_SKIP_SHARED says which), four and two, to stay within its time.
POOLS = {"readable": 5, "fast": 2}
if os.environ.get("PYUST_SKIP_SHARED"):
    POOLS = {"readable": 2, "fast": 1}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_pool_worker_on_every_start_method(
    sessiond: None, tmp_path: Path, method: str, mode: str
) -> None:
    import multiprocessing

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    script = write_script(tmp_path, "pool.py", POOL)

    def one(run: int) -> tuple[str, list[Event]]:
        return record(
            tmp_path,
            f"trace-{run}",
            script,
            method,
            str(POOLS[mode]),
            mode=mode,
            c_calls=mode == "readable",
        )

    with ThreadPoolExecutor(2) as runs:
        for stdout, events in runs.map(one, range(2)):
            pools = [set(map(int, line.split())) for line in stdout.splitlines()]
            assert len(pools) == POOLS[mode]
            squares = Counter(
                e.vpid for e in events if e.name == "call" and e["co_name"] == "square"
            )
            workers = pids_calling(events, "worker", "multiprocessing.pool")
            for pids in pools:
                # Every call, and both workers have their events (each its
                # worker loop).
                assert sum(squares[pid] for pid in pids) == 20, (pids, squares)
                assert pids <= workers, (pids, workers)
            # The program, its workers, spawn's resource tracker, the
            # forkserver: nothing else.
            extra = {e.vpid for e in events} - set().union(*pools)
            assert len(extra) <= (1 if method == "fork" else 3), extra
            if method == "forkserver":
                assert len(pids_calling(events, "main", "multiprocessing.forkserver")) == 1
    assert pyust_sessions() == []


GENERATIONS = """\
import os, subprocess, sys

def generation(n):
    return n

n = int(sys.argv[1])
generation(n)
if n < 2:
    subprocess.run([sys.executable, __file__, str(n + 1)], check=True)
else:
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, "-m", "child_module"], check=True, cwd=here)
    os.execv(sys.executable, [sys.executable, "-c", "def after_exec():\\n    pass\\nafter_exec()"])
"""


@pytest.mark.parametrize("mode", MODES)
def test_subprocess_generations_python_m_and_exec(
    sessiond: None, tmp_path: Path, mode: str
) -> None:
    write_script(
        tmp_path, "child_module.py", "def in_module_child():\n    pass\nin_module_child()\n"
    )
    script = write_script(tmp_path, "generations.py", GENERATIONS)
    _, events = record(tmp_path, "trace", script, "0", mode=mode)
    by_pid: dict[int, Counter[str]] = {}
    for e in events:
        if e.name == "call":
            by_pid.setdefault(e.vpid, Counter())[str(e["co_name"])] += 1
    generations = [pid for pid, c in by_pid.items() if c["generation"]]
    # Three processes, each its own <module> of the script and one call.
    assert len(generations) == 3, by_pid
    for pid in generations:
        assert by_pid[pid]["generation"] == 1
        assert any(
            e.vpid == pid and e["co_name"] == "<module>" and e["co_filename"] == str(script)
            for e in events
            if e.name == "call"
        )
    (module_child,) = pids_calling(events, "in_module_child")
    assert module_child not in generations
    # The exec'd interpreter is the third generation's process, its events
    # after that generation's (fast mode: committed before the exec).
    (after_exec,) = pids_calling(events, "after_exec")
    assert after_exec in generations
    order = [e["co_name"] for e in events if e.vpid == after_exec and e.name == "call"]
    assert order.index("generation") < order.index("after_exec")
    assert pyust_sessions() == []


KILLED = """\
import os, signal, sys, time

def before_kill(i):
    return i

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    for i in range(300):
        before_kill(i)
    os.write(w, b"x")
    time.sleep(60)
    os._exit(0)
os.read(r, 1)
# Past the fast mode's flush period (100 ms): its records are committed.
time.sleep(float(sys.argv[1]))
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_child_keeps_what_it_emitted(sessiond: None, tmp_path: Path, mode: str) -> None:
    script = write_script(tmp_path, "killed.py", KILLED)
    # Readable: each event is in LTTng's buffers as it is emitted, the kill
    # may come at once; fast: after the flusher's period.
    _, events = record(tmp_path, "trace", script, "0" if mode == "readable" else "0.3", mode=mode)
    assert calls(events)["before_kill"] == 300


OUTSIDE = """\
import subprocess, sys

def parent_work():
    return 1

parent_work()
subprocess.run([sys.argv[1], "-c", "def child_work():\\n    pass\\nchild_work()"], check=True)
"""


def test_a_child_without_pyust_is_named(sessiond: None, tmp_path: Path) -> None:
    # Another environment of this Python, without pyust.
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bare = str(venv / "bin" / "python")
    script = write_script(tmp_path, "outside.py", OUTSIDE)
    out = tmp_path / "trace"
    done = run_python("-m", "pyust", "record", "-o", str(out), str(script), bare)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "could not be traced" in line]
    assert lines == [f"pyust: 1 child process could not be traced: {bare} has no pyust"], (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    names = calls(parse_trace(run_python("-m", "pyust", "view", str(out)).stdout))
    assert names["parent_work"] == 1 and names["child_work"] == 0


def test_the_program_sees_its_own_environment_and_path(sessiond: None, tmp_path: Path) -> None:
    # A child's sys.path does not hold pyust's boot folder, and its
    # sitecustomize (the interpreter's own) still runs.
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import builtins\nbuiltins.OWN_SITECUSTOMIZE = True\n")
    probe = (
        "import builtins, sys\n"
        "assert getattr(builtins, 'OWN_SITECUSTOMIZE', False), 'own sitecustomize did not run'\n"
        "assert not [p for p in sys.path if p.endswith('_boot')], sys.path\n"
        "def probed():\n    pass\nprobed()\n"
    )
    script = write_script(
        tmp_path,
        "probe.py",
        "import os, subprocess, sys\n"
        f"env = dict(os.environ, PYTHONPATH=os.environ['PYTHONPATH'] + os.pathsep + {str(own)!r})\n"
        f"subprocess.run([sys.executable, '-c', {probe!r}], check=True, env=env)\n",
    )
    _, events = record(tmp_path, "trace", script)
    assert calls(events)["probed"] == 1


def test_no_child_waits_when_record_is_gone(tmp_path: Path) -> None:
    # A process that outlives record (its socket gone) starts untraced, at once.
    env = dict(os.environ, PYUST_RECORD=str(tmp_path / "gone" / "control"))
    env["PYTHONPATH"] = str(Path(__import__("pyust").__file__).parent / "_boot")
    done = run_python("-c", "import sys; print('pyust' in sys.modules)", env=env, timeout=20)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert done.stderr == ""

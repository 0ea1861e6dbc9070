"""Robustness: LTTng faults, hostile code, threads, fork, subprocess, leaks.

Fault tests that need a session daemon of their own run in private mount
and PID namespaces (`unshare --mount --pid`) where /var/run/lttng, /dev/shm
and LTTNG_HOME are fresh: the machine's daemon is neither seen nor touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import (
    MEMORY,
    SCENARIOS,
    Session,
    babeltrace,
    check_nesting,
    check_no_pyust_frames,
    lttng,
    make_session,
    parse_trace,
    run_plain,
    run_python,
    run_traced,
    write_script,
)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    return probe.returncode == 0


needs_root_ns = pytest.mark.skipif(
    not _can_unshare(),
    reason="needs root and unshare(1) with private mount and PID namespaces (not in a container)",
)


def in_private_lttng(
    tmp_path: Path, body: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the shell `body` where no LTTng daemon of this machine is reachable."""
    home = tmp_path / "lttng-home"
    home.mkdir()
    script = textwrap.dedent(
        f"""
        set -e
        mkdir -p /var/run/lttng
        mount -t tmpfs tmpfs /var/run/lttng
        mount -t tmpfs tmpfs /dev/shm
        export LTTNG_HOME={home}
        export PY={sys.executable}
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        # Private mount and PID namespaces: the daemons started (and killed)
        # here are the only ones `pkill` can see.
        [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --- LTTng faults --------------------------------------------------------------


@needs_root_ns
def test_no_session_daemon(tmp_path: Path) -> None:
    proc = in_private_lttng(
        tmp_path,
        f"""
        $PY -c "import pyust; print(pyust.session_active())"
        $PY -m pyust {SCENARIOS / "foo.py"}
        echo "status=$?"
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "status=0"]
    assert proc.stderr.splitlines() == [
        "pyust: no LTTng session is recording python:* events; running the script anyway "
        "(see `pyust record`, or `lttng enable-event -u 'python:*'`)"
    ]


@needs_root_ns
def test_session_daemon_killed_mid_run(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "long.py",
        "import os, time\n"
        "def work(n):\n    return sum(range(n))\n"
        "open(os.environ['READY'], 'w').close()\n"
        "deadline = time.time() + 1.5\n"
        "while time.time() < deadline:\n    work(100)\n"
        "print('finished')\n",
    )
    ready = tmp_path / "ready"
    proc = in_private_lttng(
        tmp_path,
        f"""
        lttng-sessiond --daemonize
        lttng create s --output={tmp_path / "trace"} >/dev/null
        lttng enable-event -u 'python:*' >/dev/null
        lttng start >/dev/null
        READY={ready} $PY -m pyust {script} &
        child=$!
        while [ ! -e {ready} ]; do sleep 0.05; done
        sleep 0.3
        pkill -9 -x lttng-sessiond || true
        pkill -9 -x lttng-consumerd || true
        wait $child
        echo "status=$?"
        """,
    )
    assert "finished" in proc.stdout, proc.stderr
    assert "status=0" in proc.stdout


@needs_root_ns
@pytest.mark.skipif(
    sys.version_info < (3, 9), reason="3.8 cannot arm other threads: armed at enable() for good"
)
def test_idle_until_a_session_listens(tmp_path: Path) -> None:
    """enable() with no session recording: nothing is installed. A session
    that starts later arms the hook (the watcher polls every 20 ms); one
    that stops disarms it. (Its own daemon: no other session can arm it.)"""
    ready, go, stopped = tmp_path / "ready", tmp_path / "go", tmp_path / "stopped"
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
wait_for(_pyust._armed, "arming")
for _ in range(3):
    marker()
open({str(go)!r}, "w").close()
wait_for(lambda: os.path.exists({str(stopped)!r}), "the session to stop")
wait_for(lambda: not _pyust._armed(), "disarming")
print("disarmed", pyust.is_enabled(), flush=True)
""",
    )
    trace = tmp_path / "trace"
    proc = in_private_lttng(
        tmp_path,
        f"""
        lttng-sessiond --daemonize
        $PY {script} > {tmp_path / "out.txt"} 2>&1 &
        child=$!
        while [ ! -e {ready} ]; do sleep 0.01; done
        lttng create s --output={trace} >/dev/null
        lttng enable-event -u 'python:*' >/dev/null
        lttng add-context -u -t vpid >/dev/null
        lttng start >/dev/null
        while [ ! -e {go} ]; do sleep 0.01; done
        lttng stop >/dev/null
        lttng destroy >/dev/null
        touch {stopped}
        wait $child
        echo "status=$?"
        """,
    )
    out = (tmp_path / "out.txt").read_text()
    assert "status=0" in proc.stdout, out + proc.stderr
    assert out.splitlines() == ["True False None", "disarmed True"]
    events = parse_trace(babeltrace(trace))
    assert [e["co_qualname"] for e in events if e.name == "call"].count("marker") == 3


def test_all_user_space_events_enabled(sessiond: None, tmp_path: Path) -> None:
    """`enable-event -u -a` includes LTTng's statedump and lib events (the
    prototype deadlocked on those): no deadlock, the trace is complete."""
    name = f"pyust-test-all-{os.getpid()}"
    out = tmp_path / "trace"
    lttng("create", name, f"--output={out}")
    try:
        lttng("enable-event", "-u", "-a", f"--session={name}")
        lttng("add-context", "-u", "-t", "vpid", "-t", "vtid", f"--session={name}")
        lttng("start", name)
        script = write_script(
            tmp_path,
            "mixed.py",
            "import os, threading, ctypes.util\n"
            "def f():\n    return 1\n"
            "t = threading.Thread(target=f); t.start(); t.join()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    f()\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "ctypes.util.find_library('c')\n",
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "pyust", str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = child.communicate(timeout=120)
        proc = subprocess.CompletedProcess(child.args, child.returncode, "", err)
        lttng("stop", name)
        text = babeltrace(out)
    finally:
        lttng("destroy", name, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "lttng_ust_statedump:" in text
    events = [e for e in parse_trace(text) if e.vpid == child.pid]
    assert events[0].short() == "call <module>"
    check_nesting(events)


def test_ring_buffer_overflow_discards_and_reports(sessiond: None, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "flood.py",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib(22)\nprint('done')\n",
    )
    out = tmp_path / "t"
    proc = run_python(
        "-m",
        "pyust",
        "record",
        "--subbuf-size",
        "4096",
        "--num-subbuf",
        "2",
        "-o",
        str(out),
        str(script),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    lines = [line for line in proc.stderr.splitlines() if "discarded" in line]
    assert len(lines) == 1, proc.stderr
    lost = int(lines[0].split("discarded ")[1].split()[0])
    assert lost > 0
    recorded = parse_trace(babeltrace(out))
    # fib(22) makes 57313 calls: 114626 call/return events in all.
    assert 0 < len(recorded) < 114626
    assert len(recorded) + lost >= 114626


@pytest.mark.parametrize("value", ["12", "4097", "x", "1k"])
def test_record_rejects_bad_buffer_sizes(value: str) -> None:
    proc = run_python("-m", "pyust", "record", "--subbuf-size", value, str(SCENARIOS / "foo.py"))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1


# --- hostile code -----------------------------------------------------------------


def test_hostile_code(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "hostile.py",
        textwrap.dedent(
            """
            import sys
            long_name = "n" * 100_000
            def f():
                return 1
            f.__code__ = f.__code__.replace(co_name=long_name)
            f()
            exec(compile("def g():\\n    return 2\\ng()\\n", "<string>", "exec"), {})
            namespace = {"__builtins__": __builtins__}
            exec("def h():\\n    return 3\\nh()\\n", namespace)
            def deep(n):
                return deep(n + 1)
            try:
                deep(0)
            except RecursionError:
                print("recursion limit")
            """
        ),
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "recursion limit"
    assert proc.stderr == ""
    check_nesting(events)
    calls = {str(e["co_name"]): e for e in events if e.name == "call"}
    assert "n" * 100_000 in calls
    assert calls["g"]["co_filename"] == "<string>"
    assert calls["g"]["module"] == ""  # globals without __name__
    assert calls["h"]["module"] == ""
    assert any(e.name == "exception" and e["exc_type"] == "RecursionError" for e in events)


def test_enabled_deep_disabled_elsewhere(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "deep.py",
        textwrap.dedent(
            """
            import pyust
            def leaf():
                pass
            def stop():
                leaf()
                pyust.disable()
            def start(n):
                if n:
                    return start(n - 1)
                pyust.enable()
                leaf()
            def outer():
                start(50)
                leaf()
                stop()
                leaf()
            outer()
            """
        ),
    )
    proc, _, events = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    shorts = [e.short() for e in events]
    # What ran after enable(): leaf, the 51 returns of start() are frames
    # that began before and are left out; outer's leaf and stop are traced.
    assert shorts[:2] == ["call leaf", "return"]
    assert shorts.count("return") <= shorts.count("call leaf") + shorts.count("call stop")
    assert "call stop" in shorts
    check_no_pyust_frames(events)
    stack = 0
    for e in events:
        stack += {"call": 1, "return": -1}.get(e.name, 0)
        assert stack >= 0, "a return without its call"


# --- threads, fork, subprocess -------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 9), reason="3.8 cannot arm another thread")
def test_threads_running_at_enable_are_traced(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "running.py",
        textwrap.dedent(
            """
            import threading, pyust
            go = threading.Event()
            def tick():
                pass
            def loop():
                go.wait()
                tick()
            t = threading.Thread(target=loop)
            t.start()
            pyust.enable()
            go.set()
            t.join()
            pyust.disable()
            """
        ),
    )
    proc, _, events = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    ticks = [e for e in events if e.name == "call" and e["co_qualname"] == "tick"]
    assert len(ticks) == 1
    assert ticks[0].vtid != events[0].vtid or len({e.vtid for e in events}) > 1


def test_concurrent_enable_disable(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "toggle.py",
        textwrap.dedent(
            """
            import threading, pyust
            def f():
                return 1
            def worker():
                for i in range(300):
                    if i % 2:
                        pyust.enable()
                    else:
                        pyust.disable()
                    f()
            ts = [threading.Thread(target=worker) for _ in range(8)]
            for t in ts: t.start()
            for t in ts: t.join()
            pyust.disable()
            print("ok", pyust.is_enabled())
            """
        ),
    )
    proc, _, events = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "False"]
    # Per thread, never a return without its call.
    depth: dict[int, int] = {}
    for e in events:
        if e.name in ("call", "return"):
            depth[e.vtid] = depth.get(e.vtid, 0) + (1 if e.name == "call" else -1)
            assert depth[e.vtid] >= 0


def test_asyncio_nests_per_thread(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "aio.py",
        textwrap.dedent(
            """
            import asyncio
            async def step(n):
                await asyncio.sleep(0)
                if n == 2:
                    raise ValueError(n)
                return n
            async def main():
                results = await asyncio.gather(*(step(n) for n in range(4)), return_exceptions=True)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, sum, [1, 2])
                return results
            print(asyncio.run(main()))
            """
        ),
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 1, ValueError(2), 3]"
    check_nesting(events)
    steps = [e for e in events if e.name == "call" and e["co_qualname"] == "step"]
    # Each coroutine starts, suspends at sleep(0) and resumes: two calls.
    assert len(steps) == 8
    raised = [e for e in events if e.name == "exception" and e["co_qualname"] == "step"]
    assert [e["exc_type"] for e in raised] == ["ValueError"]


def test_multiprocessing_fork_children(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "mp.py",
        textwrap.dedent(
            """
            import multiprocessing, os, pyust
            def child_work(q):
                q.put(os.getpid())
            if __name__ == "__main__":
                ctx = multiprocessing.get_context("fork")
                pyust.enable()
                q = ctx.Queue()
                ps = [ctx.Process(target=child_work, args=(q,)) for _ in range(2)]
                for p in ps: p.start()
                pids = sorted(q.get(timeout=30) for _ in ps)
                for p in ps: p.join()
                pyust.disable()
                print(*pids)
            """
        ),
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    children = [int(p) for p in proc.stdout.split()]
    events = session.stop()
    for pid in children:
        calls = [e["co_qualname"] for e in events if e.vpid == pid and e.name == "call"]
        assert "child_work" in calls, f"child {pid} not traced"


def test_subprocess_children_never_crash(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "sub.py",
        textwrap.dedent(
            """
            import os, subprocess, sys
            cmd = [sys.executable, "-c", "print('child')"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            assert out.stdout == "child\\n", out
            out = subprocess.run(["true"], preexec_fn=lambda: None)
            assert out.returncode == 0
            pid = os.fork()
            if pid == 0:
                os.execv("/bin/true", ["true"])
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
            print("ok")
            """
        ),
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    check_nesting(events)


def test_programs_own_profilers_keep_working(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "ownprof.py",
        textwrap.dedent(
            """
            import sys, threading, cProfile, pstats, io
            seen = []
            def prof(frame, event, arg):
                seen.append(event)
            def f():
                return 1
            sys.setprofile(prof)
            f()
            sys.setprofile(None)
            assert "call" in seen, seen
            assert sys.getprofile() is None
            threading.getprofile() if hasattr(threading, "getprofile") else None
            p = cProfile.Profile()
            p.runcall(f)
            s = io.StringIO()
            pstats.Stats(p, stream=s).print_stats()
            assert "f" in s.getvalue()
            print("ok")
            """
        ),
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --- stress and leaks ---------------------------------------------------------------


def test_stress_balanced_and_no_leak(sessiond: None, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "stress.py",
        MEMORY
        + textwrap.dedent(
            """
            import threading, pyust, resource
            def fib(n):
                return n if n < 2 else fib(n - 1) + fib(n - 2)
            def work():
                for _ in range(5):
                    fib(6)
                    try:
                        {}["k"]
                    except KeyError:
                        pass
            def cycle():
                pyust.enable()
                ts = [threading.Thread(target=work) for _ in range(4)]
                for t in ts: t.start()
                for t in ts: t.join()
                pyust.disable()
            for _ in range(10):
                cycle()
            before = memory_kib()
            for _ in range(100):
                cycle()
            print(memory_kib() - before)
            """
        ),
    )
    s = make_session(tmp_path)
    try:
        proc, _, events = run_plain(s, script, timeout=300)
    finally:
        lttng("destroy", s.name, check=False)
    assert proc.returncode == 0, proc.stderr
    growth_kib = int(proc.stdout.strip())
    assert growth_kib < 4096, f"memory grew by {growth_kib} KiB over 100 enable/disable cycles"
    workers = {e.vtid for e in events} - {events[0].vtid}
    assert len(workers) >= 4
    check_nesting([e for e in events if e.vtid in workers])


# 30 s where threads truly run at once (a free-threaded build), 5 s else.
STRESS_SECONDS = 30 if sysconfig.get_config_var("Py_GIL_DISABLED") else 5


def test_threads_call_raise_and_make_code_while_tracing_toggles(
    sessiond: None, tmp_path: Path
) -> None:
    # 8 threads call, raise and make code objects while another enables
    # and disables tracing: each thread's trace nests, nothing crashes,
    # nothing leaks (what the per-code and per-function caches must bear
    # when callbacks run at once).
    script = write_script(
        tmp_path,
        "toggle.py",
        MEMORY
        + textwrap.dedent(
            """
            import gc, sys, threading, time
            import pyust

            seconds = float(sys.argv[1])
            stop = threading.Event()
            made, errors = [0] * 8, []

            def fib(n):
                return n if n < 2 else fib(n - 1) + fib(n - 2)

            def raiser(n):
                raise ValueError(n)

            # One code object (`shared`) run by every thread under globals
            # of its own: the module name cached on it changes all the time.
            SHARED = compile("def shared():\\n    pass\\nshared()\\n", "<shared>", "exec")

            def worker(k):
                n = 0
                try:
                    while not stop.is_set():
                        fib(5)
                        try:
                            raiser(n)
                        except ValueError:
                            pass
                        source = f"def made_{k}_{n}(x):\\n    return len(str(x))\\n"
                        ns = {}
                        exec(compile(source, f"<made {k}>", "exec"), ns)
                        ns[f"made_{k}_{n}"](n)
                        exec(SHARED, {"__name__": f"m{k}"})
                        sorted([3, 1, 2])
                        n += 1
                        made[k] = n
                        time.sleep(0.02)  # bounds the trace: ~1 MB/s
                except BaseException as e:
                    errors.append(repr(e))

            def toggler():
                while not stop.is_set():
                    pyust.disable()
                    time.sleep(0.005)
                    pyust.enable()
                    time.sleep(0.02)

            # Enabled before the workers start (3.8 hooks no thread already
            # running), then toggled.
            pyust.enable()

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            threads.append(threading.Thread(target=toggler))
            for t in threads:
                t.start()
            time.sleep(seconds / 3)
            gc.collect()
            before = memory_kib()
            time.sleep(seconds * 2 / 3)
            stop.set()
            for t in threads:
                t.join()
            gc.collect()
            print(memory_kib() - before, sum(made), *errors)
            """
        ),
    )
    s = make_session(tmp_path)
    try:
        proc, _, events = run_plain(s, script, str(STRESS_SECONDS), timeout=STRESS_SECONDS + 240)
    finally:
        lttng("destroy", s.name, check=False)
    assert proc.returncode == 0, proc.stderr
    growth_kib, made, *errors = proc.stdout.split()
    assert not errors
    assert int(growth_kib) < 2048, f"memory grew by {growth_kib} KiB"
    workers = {}
    for e in events:
        if e.name == "call" and str(e["co_name"]).startswith("made_"):
            workers.setdefault(e.vtid, set()).add(str(e["co_name"]).split("_")[1])
    # Every worker was traced, each under its own thread.
    assert len(workers) == 8 and all(len(ks) == 1 for ks in workers.values()), workers
    workers_of = {tid: next(iter(ks)) for tid, ks in workers.items()}
    # Each thread's `shared` frames name its own module.
    for e in events:
        if e.name == "call" and e["co_name"] == "shared":
            k = workers_of[e.vtid]
            assert e["module"] == f"m{k}", (e.vtid, e.fields)
    made_calls = sum(
        1 for e in events if e.name == "call" and str(e["co_name"]).startswith("made_")
    )
    assert 0 < made_calls <= int(made)
    raised = [e for e in events if e.name == "exception" and e["co_qualname"] == "raiser"]
    assert raised and all(e["exc_type"] == "ValueError" for e in raised)
    # Nothing is closed that was not opened, on any thread; the frames
    # open at a disable() stay open (nesting restarts at each enable()).
    check_nesting(events, complete=False)

"""Robustness under concurrency: threads, fork, subprocess, asyncio, the
program's own profilers, and stress with tracing toggled (no leak).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import (
    MEMORY,
    Session,
    check_nesting,
    lttng,
    make_session,
    run_plain,
    run_traced,
    write_script,
)

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
            ids = [threading.get_native_id()]
            def tick():
                pass
            def loop():
                ids.append(threading.get_native_id())
                go.wait()
                tick()
            t = threading.Thread(target=loop)
            t.start()
            while len(ids) < 2:
                pass
            pyust.enable()
            go.set()
            t.join()
            pyust.disable()
            print(*ids)
            """
        ),
    )
    proc, _, events = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    main, worker = map(int, proc.stdout.split())
    # The thread was already waiting when tracing began: its tick is its own.
    ticks = [e for e in events if e.name == "call" and e["co_qualname"] == "tick"]
    assert [e.vtid for e in ticks] == [worker] and worker != main


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
    # What pyust saw of the program's own calls and profile switches.
    seen = [
        e.short()
        for e in events
        if (e.name == "call" and e["module"] == "__main__")
        or (e.name == "c_call" and "profile" in str(e["co_qualname"]))
    ]
    if sys.version_info >= (3, 12):
        # A sys.monitoring tool beside the program's profilers: all of it.
        assert seen == [
            "call <module>",
            "c_call sys.setprofile",
            "call f",
            "c_call sys.setprofile",
            "c_call sys.getprofile",
            "call f",
        ]
        check_nesting(events)
    else:
        # The program's profile function replaces pyust's on its thread
        # (the README's limits): the trace of that thread stops there.
        assert seen == ["call <module>", "c_call sys.setprofile"]
        check_nesting(events, complete=False)


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

"""`pyust record --flight-recorder` (SPEC section 7): a snapshot session,
nothing on disk while the program runs, snapshots at exit, on SIGUSR1 and
on an exception (an LTTng trigger), each a trace folder `report` reads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import (
    SLEEPER,
    babeltrace,
    check_nesting,
    lttng,
    parse_trace,
    pyust_sessions,
    run_python,
    write_script,
)

# Helpers the scripts share: wait for record to write the n-th snapshot.
WAIT = """
import os, time

def snapshots(folder):
    return sorted(os.listdir(folder), key=lambda name: int(name.rsplit("-", 1)[1]))

def wait_for(folder, count):
    deadline = time.time() + 30
    while len(snapshots(folder)) < count:
        if time.time() > deadline:
            raise SystemExit(f"no snapshot {count}: {snapshots(folder)}")
        time.sleep(0.05)
    time.sleep(0.5)  # let the sessiond finish writing it
"""


def snapshot_folders(out_dir: Path) -> list[Path]:
    found = [p for p in out_dir.iterdir() if re.fullmatch(r".+-\d{8}-\d{6}-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def names(folder: Path) -> list[str]:
    return [str(e["co_name"]) for e in parse_trace(babeltrace(folder)) if e.name == "call"]


def leftovers() -> list[str]:
    """pyust sessions and triggers that outlived their record."""
    sessions = pyust_sessions()
    triggers = [
        line for line in lttng("list-triggers").stdout.splitlines() if "name: pyust-" in line
    ]
    return sessions + triggers


def record(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pyust", "record", *args, cwd=cwd)


def test_snapshot_at_exit_keeps_the_last_buffer_and_writes_nothing_before(
    sessiond: None, tmp_path: Path
) -> None:
    script = write_script(
        tmp_path,
        "busy.py",
        textwrap.dedent(
            """
            import os, sys
            def first():
                pass
            def fib(n):
                return n if n < 2 else fib(n - 1) + fib(n - 2)
            def last():
                pass
            first()
            for _ in range(8):
                fib(20)  # about 170 000 calls: far more than 1 MiB of events
            print(sorted(os.listdir(sys.argv[1])))  # what is on disk meanwhile
            last()
            """
        ),
    )
    out_dir = tmp_path / "fr"
    proc = record(
        "-o", str(out_dir), "--flight-recorder", "--buffer", "1M", str(script), str(out_dir)
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"  # nothing written while it ran
    (snap,) = snapshot_folders(out_dir)
    assert snap.name.startswith("exit-")
    assert proc.stderr.splitlines() == [
        f"pyust: snapshot written to {snap}",
        f"pyust: 1 snapshot(s) in {out_dir}",
    ]
    # The last 1 MiB: the end of the run, not its beginning.
    seen = names(snap)
    assert "last" in seen and "fib" in seen and "first" not in seen
    data = sum(p.stat().st_size for p in snap.rglob("*") if p.is_file() and "index" not in p.parts)
    assert data <= (1 << 20) + (64 << 10), data
    report = run_python("-m", "pyust", "report", str(snap))
    assert report.returncode == 0, report.stderr
    assert "__main__.fib" in report.stdout
    assert leftovers() == []


def test_sigusr1_to_the_program_or_to_record_takes_a_snapshot(
    sessiond: None, tmp_path: Path
) -> None:
    script = write_script(
        tmp_path,
        "signals.py",
        WAIT
        + textwrap.dedent(
            """
            import signal, sys
            out = sys.argv[1]
            def before():
                pass
            def between():
                pass
            def after():
                pass
            before()
            os.kill(os.getpid(), signal.SIGUSR1)  # the program itself
            wait_for(out, 1)
            between()
            os.kill(os.getppid(), signal.SIGUSR1)  # pyust record
            wait_for(out, 2)
            after()
            print("still running")
            """
        ),
    )
    out_dir = tmp_path / "fr"
    proc = record("-o", str(out_dir), "--flight-recorder", str(script), str(out_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "still running\n"
    snaps = snapshot_folders(out_dir)
    assert [s.name.split("-")[0] for s in snaps] == ["signal", "signal", "exit"]
    first, second, last = (names(s) for s in snaps)
    assert "before" in first and "between" not in first
    assert "between" in second and "after" not in second
    assert "after" in last
    # No Python handler ran for the signal: nothing of pyust in the trace.
    events = parse_trace(babeltrace(snaps[-1]))
    assert not [e for e in events if "pyust" in str(e.fields.get("module", ""))]
    assert leftovers() == []


def test_snapshot_on_an_exception_once_per_process(sessiond: None, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "raises.py",
        WAIT
        + textwrap.dedent(
            """
            import subprocess, sys
            out = sys.argv[1]
            def quiet():
                pass
            def boom():
                raise ValueError("boom")
            def after():
                pass
            def other():
                raise KeyError("not watched")
            for _ in range(100):
                quiet()
            try:
                other()
            except KeyError:
                pass
            # A process that is not the program's (started without record's
            # variables, as from elsewhere) raises it too: no snapshot.
            ours = ("PYUST_RECORD", "PYTHONPATH")
            outside = {k: v for k, v in os.environ.items() if k not in ours}
            subprocess.run(
                [sys.executable, "-c", "import pyust; pyust.enable(); int('x')"],
                capture_output=True,
                env=outside,
            )
            try:
                boom()
            except ValueError:
                pass
            wait_for(out, 1)
            after()
            try:
                boom()  # the first time only
            except ValueError:
                pass
            pid = os.fork()
            if pid == 0:  # a new process of the program: its own first time
                try:
                    boom()
                except ValueError:
                    pass
                wait_for(out, 2)
                os._exit(0)
            os.waitpid(pid, 0)
            print(len(snapshots(out)))
            """
        ),
    )
    out_dir = tmp_path / "fr"
    proc = record(
        "-o", str(out_dir), "--flight-recorder", "--snapshot-on", "ValueError",
        str(script), str(out_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2\n"
    snaps = snapshot_folders(out_dir)
    assert [s.name.rsplit("-", 3)[0] for s in snaps] == ["on-ValueError", "on-ValueError", "exit"]
    events = parse_trace(babeltrace(snaps[0]))
    # The sessiond takes it a moment after the raise: the snapshot ends
    # with the ValueError, or a little after it (not as late as `after`).
    raised = [(e["exc_type"], e["co_qualname"]) for e in events if e.name == "exception"]
    assert ("ValueError", "boom") in raised and ("KeyError", "other") in raised
    assert "quiet" in names(snaps[0]) and "after" not in names(snaps[0])
    # The child's snapshot holds the child's ValueError.
    child = parse_trace(babeltrace(snaps[1]))
    pids = {e.vpid for e in child if e.name == "exception" and e["exc_type"] == "ValueError"}
    assert len(pids) == 2, pids
    assert leftovers() == []


def test_interrupted_program_still_gets_its_exit_snapshot(sessiond: None, tmp_path: Path) -> None:
    script = write_script(tmp_path, "sleeper.py", SLEEPER)
    out_dir = tmp_path / "fr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", "-o", str(out_dir), "--flight-recorder",
         str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (snap,) = snapshot_folders(out_dir)
    events = parse_trace(babeltrace(snap))
    check_nesting(events)
    assert any(e.name == "exception" and e["exc_type"] == "KeyboardInterrupt" for e in events)
    assert leftovers() == []

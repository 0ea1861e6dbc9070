"""`record` and the program it runs tied together whatever happens to
either (issue: record survives every fault): signals to record, to the
program or to both, record's own resources running out, pyust's threads
and CPython's fork warning. Each test checks the three promises: the
program's exit status and output are what they are untraced, the trace
up to the fault is readable, and no session, process or temp file is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    SLEEPER,
    Terminal,
    babeltrace,
    check_nesting,
    lttng,
    parse_trace,
    pyust_sessions,
    run_python,
    write_script,
)

FORKS = """
import os, sys, threading, time, warnings
before = list(warnings.filters)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

fork()
print("filters as before:", warnings.filters == before, flush=True)
if sys.argv[1:] == ["with-a-thread"]:
    threading.Thread(target=time.sleep, args=(0.5,)).start()
    fork()
"""


def test_importing_pyust_starts_no_thread() -> None:
    # LTTng-UST (two listener threads) is loaded when tracing is first
    # asked for, not at import.
    proc = run_python(
        "-c", "import os, pyust; print(len(os.listdir('/proc/self/task')), pyust.is_enabled())"
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "1 False\n", "")


@pytest.mark.parametrize("mode", ["readable", "fast"])
def test_a_fork_warns_under_record_as_it_does_untraced(
    sessiond: None, tmp_path: Path, mode: str
) -> None:
    # CPython 3.12+ warns at a fork of a process with threads: LTTng-UST's
    # and pyust's are fork-safe and do not count; the program's own do.
    script = write_script(tmp_path, "forks.py", FORKS)
    for args, warns in (([], False), (["with-a-thread"], sys.version_info >= (3, 12))):
        untraced = run_python(str(script), *args)
        out = tmp_path / f"trace-{len(args)}"
        traced = run_python(
            "-m", "pyust", "record", "--mode", mode, "-o", str(out), "--", str(script), *args
        )
        assert untraced.stdout == traced.stdout == "filters as before: True\n"
        assert untraced.returncode == traced.returncode == 0
        said = "DeprecationWarning: This process (pid="
        assert (said in untraced.stderr) == (said in traced.stderr) == warns, traced.stderr
    assert pyust_sessions() == []


# A program that says its pid once it runs, then works until stopped.
WORKS = """
import os, signal, sys, time

def step(n):
    return n + 1

def main():
    got = []
    for sig in sys.argv[2:]:
        signal.signal(getattr(signal, sig), lambda s, f: got.append(signal.Signals(s).name))
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    n = 0
    while len(got) < len(sys.argv[2:]) or not sys.argv[2:]:
        n = step(n)
        time.sleep(0.001)
    print("got", *got, flush=True)

main()
"""


def _wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for this purpose (its parent reaps it).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _start_record(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Path, Path]:
    """record of WORKS, off any terminal (as a CI runner starts it), with
    its own process group; its temp files under tmp_path/tmp."""
    tmp_path.mkdir(exist_ok=True)
    script = write_script(tmp_path, "works.py", WORKS)
    out, ready = tmp_path / "trace", tmp_path / "ready"
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyust",
            "record",
            "-o",
            str(out),
            "--",
            str(script),
            str(ready),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
    )
    return proc, out, ready


def _nothing_left(tmp_path: Path, pid: int, timeout: float = 10) -> None:
    """The program, the session and record's temp files gone within
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while _alive(pid) or pyust_sessions() or os.listdir(tmp_path / "tmp"):
        assert time.monotonic() < deadline, (
            _alive(pid),
            pyust_sessions(),
            os.listdir(tmp_path / "tmp"),
        )
        time.sleep(0.05)


@pytest.mark.parametrize("whom", ["group", "record"])
def test_record_killed_leaves_nothing_running(sessiond: None, tmp_path: Path, whom: str) -> None:
    # SIGKILL of record's process group (a CI runner's timeout, `timeout -s
    # KILL`) or of record alone (the OOM killer): the program ends, the
    # session and the control folder go, the trace up to then is readable.
    proc, out, ready = _start_record(tmp_path)
    pid = int(_wait_for_file(ready, proc))
    time.sleep(0.2)  # some steps
    if whom == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    # The watchdog (a session of its own) says what it did on record's stderr.
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert err.startswith("pyust: record was killed; its watchdog killed the program, ") or (
        err.startswith("pyust: record was killed; its watchdog destroyed session ")
    ), err
    assert f"(trace in {out})" in err
    _nothing_left(tmp_path, pid)
    view = run_python("-m", "pyust", "view", str(out))
    assert view.returncode == 0, view.stderr
    steps = [e for e in parse_trace(view.stdout) if e.name == "call" and e["co_name"] == "step"]
    assert len(steps) > 10


def test_signals_to_record_reach_the_program(sessiond: None, tmp_path: Path) -> None:
    # SIGUSR1 and SIGUSR2 sent to record (which a user may take for the
    # program) are the program's, as SIGTERM and SIGINT are: record passed
    # none of them on and died of SIGUSR2, leaving the program orphaned.
    proc, out, ready = _start_record(tmp_path, "SIGUSR1", "SIGUSR2")
    pid = int(_wait_for_file(ready, proc))
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        proc.send_signal(sig)
        time.sleep(0.1)
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout) == (0, "got SIGUSR1 SIGUSR2\n"), stderr
    assert stderr == f"pyust: trace written to {out}\n"
    _nothing_left(tmp_path, pid)
    # Without a handler, the program dies of the signal, and record says so.
    proc, out, ready = _start_record(tmp_path / "again")
    pid = int(_wait_for_file(ready, proc))
    proc.send_signal(signal.SIGUSR2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGUSR2, stderr
    _nothing_left(tmp_path / "again", pid)


FORKS_ON_GO = """
import os, sys, time

def child(i):
    return i * 2

open(sys.argv[1] + ".ready", "w").close()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
pids = []
for i in range(30):
    pid = os.fork()
    if pid == 0:
        child(i)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print("done")
"""


def test_record_out_of_file_descriptors_answers_every_process(
    sessiond: None, tmp_path: Path
) -> None:
    # record's tracker, out of file descriptors (a low `ulimit -n`), died
    # at its first `lttng track`: each later fork waited 30 s for an
    # answer, and record exited 0 without a word.
    script = write_script(tmp_path, "forks.py", FORKS_ON_GO)
    go, out = tmp_path / "go", tmp_path / "trace"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", "-o", str(out), "--", str(script), str(go)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Once the program runs (recorded): record left 2 descriptors more
    # than it has (an `lttng track` needs 7).
    _wait_for_file(tmp_path / "go.ready", proc)
    open_fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    limit = open_fds + 2
    subprocess.run(["prlimit", f"--pid={proc.pid}", f"--nofile={limit}:{limit}"], check=True)
    go.write_text("")
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stdout) == (0, "done\n"), stderr
    lines = stderr.splitlines()
    refused = [line for line in lines if " is not in the recording: " in line]
    assert len(refused) == 30, stderr
    reason = "lttng track failed: cannot run lttng: Too many open files"
    assert all(line.endswith(reason) for line in refused), stderr
    refused_line = f"process(es) of the program could not be recorded ({reason})"
    assert f"pyust: 30 {refused_line}" in lines
    assert lines[-1] == f"pyust: trace written to {out}"
    # At the end, with the tracker's descriptors back, lttng may run again
    # (3.14t here); if not, the watchdog ended the session.
    handed = "pyust: record could not end the session (cannot run lttng: Too many open files)"
    assert lines[-2] in (f"{handed}: its watchdog did", f"pyust: 30 {refused_line}")
    assert pyust_sessions() == []
    view = run_python("-m", "pyust", "view", str(out))
    assert view.returncode == 0
    assert "child" not in view.stdout and "<module>" in view.stdout


def test_sigusr1_while_record_prints_the_trace(sessiond: None, tmp_path: Path) -> None:
    # `record --view`: once the program has ended, a SIGUSR1 (meant for
    # the program, a snapshot...) killed record while babeltrace2 printed
    # the trace (exit 138, no "trace written").
    script = write_script(
        tmp_path, "calls.py", "def f():\n    pass\nfor _ in range(3000):\n    f()\n"
    )
    out = tmp_path / "trace"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", "--view", "-o", str(out), str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent = []

    def signal_during_view() -> None:
        while proc.poll() is None:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            for child in children:
                try:
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == "babeltrace2":
                    proc.send_signal(signal.SIGUSR1)
                    sent.append(child)
                    return
            time.sleep(0.001)

    helper = threading.Thread(target=signal_during_view)
    helper.start()
    stdout, stderr = proc.communicate(timeout=120)
    helper.join()
    assert sent, "babeltrace2 was never seen"
    assert proc.returncode == 0, stderr
    assert stderr.splitlines()[-1] == f"pyust: trace written to {out}"
    assert stdout.count('co_name = "f"') == 3000


TRIGGERS = """
import os, re, subprocess, time

def triggers():
    out = subprocess.run(["lttng", "list-triggers"], capture_output=True, text=True).stdout
    prefix = f"pyust-{os.getppid()}-"
    return [n for n in re.findall(r"^- name: (\\S+)$", out, re.M) if n.startswith(prefix)]

def child():
    pass

print("at start", len(triggers()), flush=True)
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        child()
        os._exit(0)
    os.waitpid(pid, 0)
deadline = time.monotonic() + 20
while len(triggers()) > 1 and time.monotonic() < deadline:
    time.sleep(0.1)
print("after 10 forks", len(triggers()), flush=True)
"""


def test_snapshot_triggers_go_with_their_processes(sessiond: None, tmp_path: Path) -> None:
    # --snapshot-on adds one LTTng trigger per process: they were removed
    # only at the end (40 forks: 41 triggers, each fork slower than the last).
    script = write_script(tmp_path, "triggers.py", TRIGGERS)
    out = tmp_path / "flight"
    proc = run_python(
        "-m", "pyust", "record", "--flight-recorder", "--snapshot-on", "KeyError",
        "-o", str(out), str(script),
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "at start 1\nafter 10 forks 1\n"), proc.stderr
    listing = lttng("list-triggers").stdout
    assert "-triggers-on-" not in listing
    assert pyust_sessions() == []


def test_control_socket_that_cannot_bind_leaves_no_folder(tmp_path: Path) -> None:
    # record makes its control folder, then binds its socket there: a bind
    # that fails (injected here) took the folder's removal with it.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = (
        "import socket\n"
        "def refuse(self, address):\n"
        "    raise OSError(98, 'Address already in use')\n"
        "socket.socket.bind = refuse\n"
        "from pyust.cli.children import Tracker\n"
        "try:\n"
        "    Tracker('lttng', 'no-session')\n"
        "except OSError as exc:\n"
        "    print(exc.strerror)\n"
    )
    proc = run_python("-c", code, env={**os.environ, "TMPDIR": str(tmp)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Address already in use\n", "")
    assert os.listdir(tmp) == []


# --- record on a terminal: Ctrl-C, SIGTERM, hangup -----------------------------


def _record_sleeper_on_terminal(tmp_path: Path) -> tuple[Terminal, Path]:
    script = write_script(tmp_path, "sleeper.py", SLEEPER)
    out_dir = tmp_path / "t"
    term = Terminal([sys.executable, "-m", "pyust", "record", "-o", str(out_dir), str(script)])
    term.read_until(b"ready")
    time.sleep(0.3)
    return term, out_dir


def _check_trace(out_dir: Path, *, complete: bool) -> list:
    """The trace is readable and its session gone. Complete: every frame
    returned (the program unwound); else what was recorded before the
    program was killed nests (its last frames stay open)."""
    events = parse_trace(babeltrace(out_dir))
    check_nesting(events, complete=complete)
    assert any(e.short() == "call nap" for e in events)
    if complete:
        assert events[-1].name == "return"
    assert pyust_sessions() == []
    return events


def test_ctrl_c_on_a_terminal_stops_record(sessiond: None, tmp_path: Path) -> None:
    term, out_dir = _record_sleeper_on_terminal(tmp_path)
    os.write(term.master, b"\x03")  # Ctrl-C, through the terminal's line discipline
    status = term.finish()
    assert status == 130, term.output
    assert b"KeyboardInterrupt" in term.output
    assert f"trace written to {out_dir}".encode() in term.output
    events = _check_trace(out_dir, complete=True)
    assert any(e.name == "exception" and e["exc_type"] == "KeyboardInterrupt" for e in events)


def test_sigterm_on_a_terminal_stops_record(sessiond: None, tmp_path: Path) -> None:
    term, out_dir = _record_sleeper_on_terminal(tmp_path)
    term.proc.send_signal(signal.SIGTERM)  # to `pyust record` alone, as `kill` does
    status = term.finish()
    assert status == 128 + signal.SIGTERM, term.output
    assert f"trace written to {out_dir}".encode() in term.output
    _check_trace(out_dir, complete=False)  # killed by SIGTERM: no unwinding


def test_terminal_hangup_stops_record(sessiond: None, tmp_path: Path) -> None:
    term, out_dir = _record_sleeper_on_terminal(tmp_path)
    os.close(term.master)  # the terminal window is closed: SIGHUP
    status = term.proc.wait(timeout=60)
    assert status == 128 + signal.SIGHUP
    _check_trace(out_dir, complete=False)  # killed by SIGHUP: no unwinding

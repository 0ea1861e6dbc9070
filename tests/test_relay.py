"""`pyust record --relay HOST[:PORT] [--live]`: the trace streamed to a
real lttng-relayd (on loopback, on ports of its own) instead of a local
folder, then read with `pyust report` and babeltrace2 on the relay's copy."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Terminal, babeltrace, parse_trace, pyust_sessions, run_python, write_script


def free_ports(n: int) -> list[int]:
    """`n` consecutive loopback ports nothing listens on (checked)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return list(range(base, base + n))
    raise RuntimeError("no free ports")


class Relay:
    def __init__(self, tmp_path: Path) -> None:
        self.control, self.data, self.live = free_ports(3)
        self.output = tmp_path / "relay"
        self.log = (tmp_path / "relayd.log").open("w")
        self.proc = subprocess.Popen(
            [
                "lttng-relayd",
                f"--output={self.output}",
                f"--control-port=tcp://127.0.0.1:{self.control}",
                f"--data-port=tcp://127.0.0.1:{self.data}",
                f"--live-port=tcp://127.0.0.1:{self.live}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.control), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("lttng-relayd did not start") from None
                time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.control}"

    def traces(self) -> list[Path]:
        """The trace folders the relay wrote (<host>/pyust/<name>)."""
        return sorted(self.output.glob("*/pyust/*"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.log.close()


@pytest.fixture
def relay(sessiond: None, tmp_path: Path) -> Iterator[Relay]:
    if shutil.which("lttng-relayd") is None:
        pytest.fail("lttng-relayd must be installed (lttng-tools)")
    r = Relay(tmp_path)
    try:
        yield r
    finally:
        r.close()


def record(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pyust", "record", *args, cwd=tmp_path, timeout=timeout)


PROGRAM = """
def leaf(i):
    return i * 2

def work():
    return sum(leaf(i) for i in range(200))

work()
print("done")
"""


def test_record_to_a_relay(relay: Relay, tmp_path: Path) -> None:
    script = write_script(tmp_path, "prog.py", PROGRAM)
    proc = record(tmp_path, "--relay", relay.address, str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    [trace] = relay.traces()
    assert trace.parent.parent.name == socket.gethostname()
    assert trace.name.startswith("prog-")
    assert proc.stderr.splitlines()[-1] == (
        f"pyust: trace streamed to the relay daemon at {relay.address}, in its output "
        f"folder under {socket.gethostname()}/pyust/{trace.name}"
    )
    assert not (tmp_path / "pyust-traces").exists()
    # The relay's copy: every call, with the contexts record adds.
    events = parse_trace(babeltrace(trace))
    calls = [e["co_qualname"] for e in events if e.name == "call"]
    assert calls.count("leaf") == 200 and calls.count("work") == 1
    assert {e.vpid for e in events} == {events[0].vpid}
    report = run_python("-m", "pyust", "report", str(trace))
    assert report.returncode == 0, report.stderr
    rows = [line.split() for line in report.stdout.splitlines()]
    assert any(r[0] == "200" and r[-2] == "__main__.leaf" for r in rows if r), report.stdout
    assert pyust_sessions() == []


def test_live_session_read_while_it_runs(relay: Relay, tmp_path: Path) -> None:
    """--live: record names the live session; babeltrace2's lttng-live
    source attached during the run reads the program's events, in the
    fast mode too; the relay's copy is read by `pyust report` after."""
    script = write_script(
        tmp_path,
        "prog.py",
        """
import time

def tick(i):
    return i

end = time.monotonic() + 3.0
n = 0
while time.monotonic() < end:
    tick(n)
    n += 1
    time.sleep(0.001)
print("done")
""",
    )
    child, line = start_live(relay, tmp_path, "--mode", "fast", str(script))
    url = f"net://127.0.0.1:{relay.live}/host/{socket.gethostname()}/pyust-"
    assert line.startswith(f"pyust: live: babeltrace2 --input-format=lttng-live {url}"), line
    viewer = subprocess.run(
        ["babeltrace2", "--input-format=lttng-live", line.split()[-1]],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out == "done\n"
    # The live viewer saw the batches as they were committed.
    assert "python_fast:batch" in viewer.stdout, viewer.stderr
    [trace] = relay.traces()
    report = run_python("-m", "pyust", "report", str(trace))
    assert report.returncode == 0, report.stderr
    assert "fast mode: " in report.stdout
    assert "__main__.tick" in report.stdout, report.stdout


def test_no_relay_answers(sessiond: None, tmp_path: Path) -> None:
    """Nothing listens on the port: one line, exit 2, before the script runs."""
    port = free_ports(2)[0]
    marker = tmp_path / "ran"
    script = write_script(tmp_path, "prog.py", f"open({str(marker)!r}, 'w').close()")
    proc = record(tmp_path, "--relay", f"127.0.0.1:{port}", str(script))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == f"pyust: no relay daemon answers at 127.0.0.1:{port} (Connection refused)"
    assert not marker.exists()
    assert pyust_sessions() == []


@pytest.mark.parametrize("live", [True, False])
def test_relay_lost_during_the_run(relay: Relay, tmp_path: Path, live: bool) -> None:
    """The relay killed mid-run: the program runs to its end, record says
    the relay's copy ends early and leaves no session. A live session's
    copy is read up to the loss; without --live LTTng had not sent the
    metadata yet, and `pyust report` says so in one line (babeltrace2
    itself aborts on the empty metadata file)."""
    started = tmp_path / "started"
    script = write_script(
        tmp_path,
        "prog.py",
        f"""
import time

def tick(i):
    return i

open({str(started)!r}, "w").close()
end = time.monotonic() + 3.0
n = 0
while time.monotonic() < end:
    tick(n)
    n += 1
print("finished", n > 0)
""",
    )
    args = ["--relay", relay.address, *(["--live"] if live else []), str(script)]
    child = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # past the live session's first flush
    relay.kill()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out == "finished True\n"
    lost = f"pyust: the relay daemon at {relay.address} stopped answering during the run"
    assert lost in err, err
    assert ("without the metadata" in err) is not live, err
    assert pyust_sessions() == []
    [trace] = relay.traces()
    report = run_python("-m", "pyust", "report", str(trace))
    if live:
        assert report.returncode == 0, report.stderr
        assert "__main__.tick" in report.stdout, report.stdout
    else:
        assert report.returncode == 2, report.stdout
        assert len(report.stderr.splitlines()) == 1, report.stderr
        assert "the metadata file is empty (the trace was cut short" in report.stderr
        view = run_python("-m", "pyust", "view", str(trace))
        assert view.returncode == 2 and view.stdout == "", view.stderr
        assert "the metadata file is empty" in view.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--live"], "--live needs --relay"),
        (["--relay", "host:0"], "--relay host:0: HOST or HOST:PORT"),
        (["--relay", ":5342"], "--relay :5342: HOST or HOST:PORT"),
        (["--relay", "h", "-o", "x"], "--relay does not go with -o"),
        (["--relay", "h", "--view"], "--relay does not go with --view"),
        (["--relay", "h", "--flight-recorder"], "--relay does not go with --flight-recorder"),
    ],
)
def test_bad_relay_options(tmp_path: Path, args: list[str], message: str) -> None:
    script = write_script(tmp_path, "prog.py", "pass")
    proc = record(tmp_path, *args, str(script))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"pyust: {message}"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1


# --------------------------------------------------------------------------
# pyust top: live sessions read through the relay's live port


BUSY = """
import sys
import time

def spin(n):
    t = 0
    for i in range(n):
        t += i
    return t

def work(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        spin(20000)

work(float(sys.argv[1]))
"""


def start_live(relay: Relay, cwd: Path, *argv: str) -> tuple[subprocess.Popen[str], str]:
    """`record --relay --live ARGV...` in `cwd`, and the line that
    announces its live session (once it is announced)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", "--relay", relay.address, "--live", *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert child.stderr is not None
    line = child.stderr.readline().strip()
    assert line.startswith("pyust: live: "), line
    return child, line


def start_busy(relay: Relay, tmp_path: Path, name: str, seconds: float, *args: str):
    """`record --relay --live` of a program spinning for `seconds`."""
    script = tmp_path / f"{name}.py"
    if not script.exists():
        write_script(tmp_path, f"{name}.py", BUSY)
    return start_live(relay, tmp_path, *args, str(script), str(seconds))[0]


def top(relay: Relay, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pyust", "top", "--relay", relay.address, *args, timeout=timeout)


def process_rows(table: str) -> dict[int, list[str]]:
    """The processes part of a `top` table: pid -> its row's fields."""
    lines = table.split("\n\n")[1].splitlines()
    assert lines[0].split() == ["host", "pid", "process", "events/s", "running", "now"]
    return {int(line.split()[1]): line.split() for line in lines[1:]}


def function_rows(table: str) -> list[list[str]]:
    lines = table.split("\n\n")[2].splitlines()
    assert lines[1].split()[:4] == ["self(s)", "calls", "self(s)", "calls"], lines
    return [line.split() for line in lines[2:]]


def test_top_shows_what_live_sessions_run(relay: Relay, tmp_path: Path) -> None:
    """Two programs recorded live (readable and fast mode): `top` without
    SESSION lists both and asks for one; a pattern attaches to both, and
    one table shows each process running its hot function, with its self
    time and calls over the last interval."""
    host = socket.gethostname()
    children = [
        start_busy(relay, tmp_path, "busy", 30),
        start_busy(relay, tmp_path, "busy", 30, "--mode", "fast"),
    ]
    try:
        listing = top(relay)
        assert listing.returncode == 2, listing.stderr
        lines = listing.stdout.splitlines()
        assert len(lines) == 2, listing.stdout
        assert all(
            re.fullmatch(rf"{host}/pyust-\d+-\d+-busy  \(\d+ stream\(s\), \d+ viewer\(s\)\)", line)
            for line in lines
        ), lines
        assert listing.stderr == (
            f"pyust: 2 live sessions at 127.0.0.1:{relay.live}: "
            "name one (HOST/NAME, or a pattern)\n"
        )
        once = top(relay, "--once", "--limit", "5", "*-busy")
        assert once.returncode == 0, once.stderr
        table = once.stdout
        assert table.startswith(f"pyust top: 2 sessions at 127.0.0.1:{relay.live}"), table
        procs = process_rows(table)
        assert len(procs) == 2, table
        for row in procs.values():
            assert row[0] == host
            # What runs now: the innermost frame at the latest event read,
            # spin nearly all the time (work between two of its calls).
            assert row[4] in ("__main__.spin", "__main__.work", "time.monotonic"), table
        rows = function_rows(table)
        spins = [r for r in rows if r[6:] == ["__main__.spin", "(busy.py:5)"]]
        assert {int(r[5]) for r in spins} == set(procs), table
        for r in spins:
            # Most of the last interval in spin's own body, and calls.
            assert float(r[0]) > 0.3 and int(r[1]) > 10, table
        assert rows[0] in spins, table
    finally:
        for child in children:
            child.send_signal(signal.SIGINT)
        for child in children:
            child.communicate(timeout=60)
    assert pyust_sessions() == []


def test_top_follows_a_session_to_its_end(relay: Relay, tmp_path: Path) -> None:
    """--interval: tables one after another, as plain text; top ends by
    itself when the session does, with what came since the last table."""
    child = start_busy(relay, tmp_path, "short", 4)
    watch = top(relay, "--interval", "0.5", "*-short")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert watch.returncode == 0, watch.stderr
    assert watch.stderr == "pyust top: the session ended\n"
    assert "\x1b" not in watch.stdout
    tables = watch.stdout.split("\npyust top: ")
    assert len(tables) >= 3, watch.stdout
    last = function_rows(tables[-1])
    spin = [r for r in last if r[6:] == ["__main__.spin", "(short.py:5)"]]
    assert spin and int(spin[0][3]) > 50, tables[-1]


def test_top_on_a_terminal(relay: Relay, tmp_path: Path) -> None:
    """On a terminal: the table is redrawn in place each second, and
    Ctrl-C leaves (status 0, no traceback); the program runs on."""
    child = start_busy(relay, tmp_path, "busy", 120)
    started = time.monotonic()
    try:
        term = Terminal([sys.executable, "-m", "pyust", "top", "--relay", relay.address])
        clear = b"\x1b[H\x1b[2J"
        term.read_until(clear + b"pyust top: ", timeout=30)
        term.read_until(b"__main__.spin", timeout=30)
        deadline = time.monotonic() + 30
        while term.output.count(clear) < 3:  # redrawn, about once a second
            assert time.monotonic() < deadline, term.output
            if select.select([term.master], [], [], 0.5)[0]:
                term.output += os.read(term.master, 4096)
        os.write(term.master, b"\x03")  # Ctrl-C
        status = term.finish()
        assert status == 0, term.output
        assert b"Traceback" not in term.output
        # The recording goes on.
        if child.poll() is not None:
            elapsed = time.monotonic() - started
            output = child.communicate()
            pytest.fail(f"record ended ({child.returncode}) after {elapsed:.1f} s: {output}")
    finally:
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=60)


def test_top_without_a_session(relay: Relay, tmp_path: Path) -> None:
    no_relay = run_python("-m", "pyust", "top", "--relay", f"127.0.0.1:{free_ports(3)[0]}")
    assert no_relay.returncode == 2
    assert len(no_relay.stderr.splitlines()) == 1, no_relay.stderr
    assert no_relay.stderr.startswith("pyust: no relay daemon serves live viewers at 127.0.0.1:")
    empty = top(relay)
    assert empty.returncode == 2
    assert empty.stderr == (
        f"pyust: no live session at 127.0.0.1:{relay.live} "
        f"(`pyust record --relay {relay.address} --live` makes one)\n"
    )
    child = start_busy(relay, tmp_path, "busy", 30)
    try:
        wrong = top(relay, "--once", "nothing-*")
        assert wrong.returncode == 2
        assert wrong.stderr.startswith(
            f"pyust: no live session 'nothing-*' at 127.0.0.1:{relay.live} (its live sessions: "
        ), wrong.stderr
    finally:
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=60)
    for args, message in [
        (["--interval", "0"], "--interval 0: seconds, from 0.1 to 3600"),
        (["--bogus"], "unknown option for top: --bogus"),
        (["a", "b"], "top takes one SESSION"),
    ]:
        bad = top(relay, *args)
        assert bad.returncode == 2 and bad.stderr.startswith(f"pyust: {message}"), bad.stderr


def test_report_tells_hosts_apart(relay: Relay, tmp_path: Path) -> None:
    """A relay's output folder with two hosts' traces (the second is this
    host's trace with its metadata's host name changed): report lists each
    host's processes, --host keeps one, and the folded stacks and the
    timeline name each process host/process with distinct pids."""
    script = write_script(tmp_path, "prog.py", PROGRAM)
    for _ in range(2):
        proc = record(tmp_path, "--relay", relay.address, str(script))
        assert proc.returncode == 0, proc.stderr
    first, second = relay.traces()
    host = socket.gethostname()
    other = ("z" if host[0] != "z" else "y") * len(host)
    moved = relay.output / other / "pyust" / second.name
    moved.parent.mkdir(parents=True)
    second.rename(moved)
    [metadata] = moved.rglob("metadata")
    data = metadata.read_bytes()
    assert data.count(f'hostname = "{host}"'.encode()) == 1
    metadata.write_bytes(
        data.replace(f'hostname = "{host}"'.encode(), f'hostname = "{other}"'.encode())
    )
    folded, timeline = tmp_path / "f.txt", tmp_path / "t.json"
    report = run_python(
        "-m",
        "pyust",
        "report",
        str(relay.output),
        "--folded",
        str(folded),
        "--perfetto-json",
        str(timeline),
    )
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert "2 process(es)" in lines[1]
    hosts = lines[lines.index("2 host(s):") + 1 :][:2]
    assert [h.split(":")[0].strip() for h in sorted(hosts)] == sorted([host, other]), lines
    assert all(re.fullmatch(r"  \S+: 1 process\(es\): python\S* \(\d+\)", h) for h in hosts), hosts
    leaf = [line.split() for line in lines if line.endswith(f"__main__.leaf ({script}:2)")]
    assert leaf and leaf[0][0] == "400", report.stdout
    roots = {line.split(";")[0].rsplit(" ", 1)[0] for line in folded.read_text().splitlines()}
    assert {r.split("/")[0] for r in roots} == {host, other}, roots
    import json

    names = [
        e
        for e in json.loads(timeline.read_text())["traceEvents"]
        if e.get("name") == "process_name"
    ]
    assert len({e["pid"] for e in names}) == 2
    assert {e["args"]["name"].split("/")[0] for e in names} == {host, other}
    only = run_python("-m", "pyust", "report", str(relay.output), "--host", other)
    assert only.returncode == 0, only.stderr
    assert "1 process(es)" in only.stdout.splitlines()[1]
    assert [h for h in only.stdout.splitlines() if h.startswith("  ") and "process(es)" in h][
        0
    ].startswith(f"  {other}: ")
    missing = run_python("-m", "pyust", "report", str(relay.output), "--host", "nowhere")
    assert missing.returncode == 2
    assert missing.stderr == (
        f'pyust: no host "nowhere" in {relay.output} '
        f"(its hosts: {', '.join(sorted([host, other]))})\n"
    )

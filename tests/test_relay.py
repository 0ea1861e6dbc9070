"""`pyust record --relay HOST[:PORT] [--live]`: the trace streamed to a
real lttng-relayd (on loopback, on ports of its own) instead of a local
folder, then read with `pyust report` and babeltrace2 on the relay's copy."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import babeltrace, parse_trace, pyust_sessions, run_python, write_script


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
    child = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", "--relay", relay.address, "--live"]
        + ["--mode", "fast", str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert child.stderr is not None
    line = child.stderr.readline().strip()
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
        assert report.returncode == 1, report.stdout
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

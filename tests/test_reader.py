"""`pyust report` reads LTTng-UST's traces with a CTF reader of its own
(src/ctf.rs), and anything else through libbabeltrace2: on every kind of
trace pyust makes, both readers must give the same table, folded stacks
and timeline, byte for byte (PYUST_REPORT_READER picks one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ctf18, lttng, run_python, write_script

PROGRAM = """\
import threading


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def check(text):
    try:
        return int(text)
    except ValueError:
        return -1


def worker():
    for _ in range(50):
        fib(8)
        sorted(range(10))


threads = [threading.Thread(target=worker) for _ in range(3)]
for t in threads:
    t.start()
for _ in range(20):
    check("x")
    fib(10)
for t in threads:
    t.join()
"""

POOL = """\
import multiprocessing as mp


def square(n):
    return n * n


if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        print(sum(pool.map(square, range(20), chunksize=1)))
        pool.close()
        pool.join()
"""

FIB = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib({n})\n"


def record(tmp_path: Path, name: str, source: str, *args: str) -> Path:
    script = write_script(tmp_path, f"{name}.py", source)
    out = tmp_path / name
    proc = run_python("-m", "pyust", "record", "-o", str(out), *args, str(script))
    assert proc.returncode == 0, proc.stderr
    return out


def report(trace: Path, reader: str, tmp_path: Path) -> tuple[str, bytes, bytes]:
    """The table, folded stacks and JSON timeline as `reader` reads them."""
    folded = tmp_path / f"{reader}.folded"
    timeline = tmp_path / f"{reader}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pyust", "report", str(trace), "--limit", "0",
         "--folded", str(folded), "--perfetto-json", str(timeline)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYUST_REPORT_READER": reader},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, folded.read_bytes(), timeline.read_bytes()


def stream_names(table: str) -> str:
    """A rotated stream is named after one of its files (pyust_0_1, ...):
    which one differs between babeltrace2 versions."""
    return re.sub(r"(in stream \S+_\d+)_\d+ ", r"\1_N ", table)


def same_from_both_readers(trace: Path, tmp_path: Path) -> str:
    ours = report(trace, "pyust", tmp_path)
    theirs = report(trace, "babeltrace2", tmp_path)
    assert stream_names(ours[0]) == stream_names(theirs[0])
    assert ours[1] == theirs[1]
    assert ours[2] == theirs[2]
    return ours[0]


def test_threads_exceptions_and_c_calls(sessiond: None, tmp_path: Path) -> None:
    table = same_from_both_readers(record(tmp_path, "threads", PROGRAM), tmp_path)
    assert "4 thread(s)" in table and "builtins.sorted (C)" in table


def test_forked_processes(sessiond: None, tmp_path: Path) -> None:
    table = same_from_both_readers(record(tmp_path, "pool", POOL), tmp_path)
    assert "3 process(es)" in table


def test_discarded_events(sessiond: None, tmp_path: Path) -> None:
    trace = record(tmp_path, "lossy", FIB.format(n=22), "--subbuf-size", "4096")
    table = same_from_both_readers(trace, tmp_path)
    assert "discarded events: 0" not in table


def test_rotated_trace_files_with_the_oldest_dropped(sessiond: None, tmp_path: Path) -> None:
    trace = record(tmp_path, "capped", FIB.format(n=21), "--max-size", "256K")
    assert len(list(trace.rglob("*_[0-9]*_[0-9]*"))) > 1  # several files per stream
    table = same_from_both_readers(trace, tmp_path)
    assert "return(s) without a call" in table  # its oldest part went


def test_flight_recorder_snapshot(sessiond: None, tmp_path: Path) -> None:
    out = record(tmp_path, "flight", FIB.format(n=18), "--flight-recorder", "--buffer", "1M")
    (snapshot,) = out.iterdir()
    same_from_both_readers(snapshot, tmp_path)


def test_more_contexts_in_a_session_made_by_hand(sessiond: None, tmp_path: Path) -> None:
    # Integer contexts beside vpid and vtid, in another order, per-process
    # buffers.
    name = f"pyust-test-reader-{os.getpid()}"
    trace = tmp_path / "manual"
    lttng("create", name, f"--output={trace}", *ctf18())
    try:
        # Room for the whole run: this test is about the contexts and the
        # per-process buffers (discards have a test of their own, and
        # per-process buffers' discard counts can go back, which the two
        # readers take differently).
        lttng(
            "enable-channel",
            "-u",
            "-s",
            name,
            "--buffers-pid",
            "--subbuf-size=1M",
            "--num-subbuf=4",
            "c",
        )
        lttng("enable-event", "-u", "-s", name, "-c", "c", "python:*")
        for ctx in ("ip", "vtid", "pthread_id", "vpid", "procname"):
            lttng("add-context", "-u", "-s", name, "-c", "c", "-t", ctx)
        lttng("start", name)
        script = write_script(tmp_path, "prog.py", textwrap.dedent(PROGRAM))
        proc = run_python("-m", "pyust", str(script))
        assert proc.returncode == 0, proc.stderr
    finally:
        lttng("destroy", name, check=False)
    table = same_from_both_readers(trace, tmp_path)
    assert "__main__.fib" in table


def fib10_trace(tmp_path: Path, label: str, create: list[str], contexts: list[str]) -> Path:
    """fib(10) under `python -m pyust`, in a session made by hand."""
    name = f"pyust-test-reader-{label}-{os.getpid()}"
    trace = tmp_path / label
    lttng("create", name, f"--output={trace}", *create)
    try:
        lttng("enable-event", "-u", "-s", name, "python:*")
        lttng("add-context", "-u", "-s", name, *(a for c in contexts for a in ("-t", c)))
        lttng("start", name)
        script = write_script(tmp_path, "prog.py", FIB.format(n=10))
        assert run_python("-m", "pyust", str(script)).returncode == 0
    finally:
        lttng("destroy", name, check=False)
    return trace


def readers_on(trace: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """`report` forced through pyust's reader, and the default one's table."""
    forced = subprocess.run(
        [sys.executable, "-m", "pyust", "report", str(trace)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYUST_REPORT_READER": "pyust"},
    )
    default = run_python("-m", "pyust", "report", str(trace))
    assert default.returncode == 0, default.stderr
    return forced, default.stdout


def test_what_it_cannot_read_goes_to_babeltrace2(sessiond: None, tmp_path: Path) -> None:
    # An application context is a variant in the event context: not for
    # pyust's reader, which leaves the trace to libbabeltrace2.
    trace = fib10_trace(tmp_path, "appctx", ctf18(), ["vpid", "vtid", "$app.pyust:none"])
    forced, table = readers_on(trace)
    assert forced.returncode == 2
    assert forced.stderr.startswith("pyust: pyust's trace reader cannot read "), forced.stderr
    assert "177 " in table  # fib(10): 177 calls


def fib_calls(trace: Path) -> int:
    proc = run_python("-m", "pyust", "report", str(trace), "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    (row,) = [line.split() for line in proc.stdout.splitlines() if "__main__.fib" in line]
    return int(row[0])


def damage(tmp_path: Path, how: str) -> tuple[Path, int]:
    """A trace whose largest stream file's last 1000 bytes are cut off
    (a crash, a full disk) or overwritten, and its fib calls before."""
    trace = record(tmp_path, "damaged", FIB.format(n=20))
    before = fib_calls(trace)
    data = max((p for p in trace.rglob("pyust_*") if p.is_file()), key=lambda p: p.stat().st_size)
    size = data.stat().st_size
    with open(data, "r+b") as f:
        if how == "truncated":
            f.truncate(size - 1000)
        else:
            f.seek(size - 1000)
            f.write(b"\xff" * 1000)
    return trace, before


def test_a_stream_file_cut_short_is_read_to_its_last_whole_event(
    sessiond: None, tmp_path: Path
) -> None:
    # babeltrace2 gives up on such a file ("Failed to index CTF stream file").
    trace, before = damage(tmp_path, "truncated")
    after = fib_calls(trace)
    assert before - 100 < after <= before  # 1000 bytes: a few dozen events


def test_garbage_in_a_stream_file_is_one_line(tmp_path: Path) -> None:
    # Bytes overwritten among the events of the fixture's one stream with
    # events (a disk error, a bad copy): each reader says where, in one line.
    trace = tmp_path / "garbage"
    shutil.copytree(FIXTURES / "readable", trace)
    stream = trace / "pyust_1_0"
    data = bytearray(stream.read_bytes())
    data[300:400] = b"\xff" * 100
    stream.write_bytes(bytes(data))
    for reader, said in (
        ("pyust", f"pyust: {stream}: event of an unknown class\n"),
        ("babeltrace2", "pyust: babeltrace2: cannot read the trace: "),
    ):
        env = {**os.environ, "PYUST_REPORT_READER": reader}
        proc = run_python("-m", "pyust", "report", str(trace), "--limit", "1", env=env)
        assert (proc.returncode, proc.stdout) == (2, ""), proc
        assert proc.stderr.startswith(said) and proc.stderr.count("\n") == 1, proc.stderr


FIXTURES = Path(__file__).resolve().parent / "data" / "ctf"


@pytest.mark.parametrize(
    ("offset", "value", "said"),
    [
        # packet_size (bits, byte 56 of a packet): 2^63 aborted pyust's
        # reader (an allocation of 2^60 bytes) and libbabeltrace2 (an assertion).
        (56, 1 << 63, "packet_size 9223372036854775808 bits"),
        # content_size (byte 48) within the packet's own header.
        (48, 8, "content_size 8 bits in a packet of 32768 bits with 84 bytes of header"),
        (0, 0x12345678, "not a CTF packet (its magic number)"),
    ],
)
def test_impossible_packets_are_one_line_and_status_2(
    tmp_path: Path, offset: int, value: int, said: str
) -> None:
    # A trace from elsewhere (a relay, a colleague) may be corrupt or
    # hostile: view and report, with either reader, say where in one line.
    for mode in ("readable", "fast"):
        trace = tmp_path / mode
        shutil.copytree(FIXTURES / mode, trace)
        stream = trace / "pyust_0_0"
        data = bytearray(stream.read_bytes())
        data[offset : offset + 8] = value.to_bytes(8, "little")
        stream.write_bytes(bytes(data))
        line = f"{stream}: packet at byte 0: {said}"
        for command, reader in (("report", "pyust"), ("report", "babeltrace2"), ("view", "")):
            env = {**os.environ, "PYUST_REPORT_READER": reader}
            proc = run_python("-m", "pyust", command, str(trace), env=env)
            said_by = "" if command == "report" else f"cannot read {trace}: "
            expected = (2, "", f"pyust: {said_by}{line}\n")
            assert (proc.returncode, proc.stdout, proc.stderr) == expected, (command, reader)


def test_ctf2_traces_go_to_babeltrace2(sessiond: None, tmp_path: Path) -> None:
    # LTTng 2.15 and later can write CTF 2 (JSON metadata), their default;
    # pyust record asks for CTF 1.8, and report reads CTF 2 through
    # libbabeltrace2.
    if not ctf18():
        pytest.skip("this LTTng (before 2.15) writes CTF 1.8 only")
    trace = fib10_trace(tmp_path, "ctf2", ["--trace-format=ctf-2"], ["vpid", "vtid"])
    forced, table = readers_on(trace)
    assert forced.returncode == 2 and "CTF 2" in forced.stderr, forced.stderr
    assert "177 " in table

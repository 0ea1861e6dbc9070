"""`pyust report`: tables, folded stacks, flame graphs and timelines made
from traces recorded here, with a live session daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import babeltrace, lttng, make_session, parse_trace, run_python, write_script

# One process, two threads: known call counts, a sleep of known length, an
# exception caught one frame up, C calls.
PROGRAM = """\
import threading
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def sleeper():
    time.sleep(0.05)


def parse(text):
    return int(text)


def check(text):
    try:
        return parse(text)
    except ValueError:
        return -1


def worker():
    return fib(5)


def main():
    fib(10)
    for n in range(5):
        divmod(n, 2)
    sleeper()
    check("x")
    t = threading.Thread(target=worker)
    t.start()
    t.join()


main()
"""


@dataclass
class Row:
    calls: int
    tottime: float
    cumtime: float
    place: str


@dataclass
class Report:
    header: str
    rows: dict[str, Row]
    order: list[str]


def parse_report(text: str) -> Report:
    header, _, table = text.partition("\n\n")
    rows: dict[str, Row] = {}
    order: list[str] = []
    for line in table.splitlines()[1:]:
        m = re.match(r"\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+(\S+) \((.*)\)$", line)
        if m is None:
            continue
        label = m.group(4)
        if label in rows and rows[label].place != m.group(5):
            label = f"{label} ({m.group(5)})"  # two functions of one name (lambdas)
        assert label not in rows or label.startswith("threading"), f"two rows for {label}"
        rows[label] = Row(int(m.group(1)), float(m.group(2)), float(m.group(3)), m.group(5))
        order.append(label)
    return Report(header, rows, order)


def report(trace: Path, *args: str) -> tuple[Report, str]:
    proc = run_python("-m", "pyust", "report", str(trace), *args)
    assert proc.returncode == 0, proc.stderr
    return parse_report(proc.stdout), proc.stdout


def record(tmp_path: Path, source: str, *record_args: str) -> tuple[Path, str]:
    script = write_script(tmp_path, "prog.py", source)
    out = tmp_path / "trace"
    proc = run_python("-m", "pyust", "record", *record_args, "-o", str(out), str(script))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def folded_lines(path: Path) -> list[tuple[list[str], int]]:
    lines = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        lines.append((stack.split(";"), int(count)))
    return lines


@pytest.fixture(scope="module")
def program_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("report")
    lttng("list", check=False)
    trace, _ = record(tmp, PROGRAM)
    return tmp, trace


def test_table_counts_calls_exactly(sessiond: None, program_trace: tuple[Path, Path]) -> None:
    _, trace = program_trace
    rep, text = report(trace, "--limit", "0")
    rows = rep.rows
    assert "0 discarded" not in rep.header
    assert "discarded events: 0" in rep.header
    assert "1 process(es), 2 thread(s)" in rep.header
    # fib(10) makes 177 calls, fib(5) 15 more in the thread.
    assert rows["__main__.fib"].calls == 177 + 15
    assert rows["__main__.main"].calls == 1
    assert rows["__main__.worker"].calls == 1
    assert rows["__main__.check"].calls == 1
    assert rows["__main__.parse"].calls == 1
    assert rows["builtins.divmod"].calls == 5
    assert rows["builtins.divmod"].place == "C"
    assert rows["__main__.fib"].place.endswith("prog.py:5")
    # The sleep is C time inside sleeper: self time there, total time above.
    assert rows["time.sleep"].tottime >= 0.05
    assert rows["__main__.sleeper"].cumtime >= 0.05
    assert rows["__main__.sleeper"].tottime < 0.01
    assert rows["__main__.main"].cumtime >= rows["__main__.sleeper"].cumtime
    # Default order: self time, largest first.
    tottimes = [rows[label].tottime for label in rep.order]
    assert tottimes == sorted(tottimes, reverse=True)
    assert rep.order[0] == "time.sleep"
    assert "still running" not in text and "without a call" not in text


def test_sort_limit_and_thread_filter(sessiond: None, program_trace: tuple[Path, Path]) -> None:
    _, trace = program_trace
    rep, _ = report(trace, "--sort", "calls", "--limit", "3")
    assert len(rep.order) == 3
    assert rep.order[0] == "__main__.fib"
    calls = [rep.rows[label].calls for label in rep.order]
    assert calls == sorted(calls, reverse=True)
    rep, _ = report(trace, "--sort=cumtime", "--limit=3")
    assert rep.order[0] == "__main__.<module>"
    cumtimes = [rep.rows[label].cumtime for label in rep.order]
    assert cumtimes == sorted(cumtimes, reverse=True)
    # The worker thread alone: its own tid from the trace.
    events = parse_trace(babeltrace(trace))
    pid = events[0].vpid
    worker_tid = next(e.vtid for e in events if e.vtid != pid)
    rep, _ = report(trace, "--tid", str(worker_tid), "--limit", "0")
    assert "1 thread(s)" in rep.header
    assert rep.rows["__main__.fib"].calls == 15
    assert "__main__.main" not in rep.rows
    rep, _ = report(trace, "--pid", str(pid + 1000000))
    assert rep.rows == {}


def test_self_plus_children_is_total(sessiond: None, program_trace: tuple[Path, Path]) -> None:
    tmp, trace = program_trace
    folded = tmp / "stacks.txt"
    rep, _ = report(trace, "--limit", "0", "--folded", str(folded))
    lines = folded_lines(folded)
    total_self = sum(r.tottime for r in rep.rows.values())
    # Every nanosecond of self time is on exactly one folded line.
    assert abs(sum(n for _, n in lines) / 1e9 - total_self) < 1e-6 * (len(rep.rows) + 1)
    # A function's total time is the self time of every path through it
    # (fib, recursive, counted once per outermost call).
    for label in ("__main__.main", "__main__.sleeper", "__main__.check", "__main__.fib"):
        through = sum(n for stack, n in lines if label in stack[2:])
        assert abs(through / 1e9 - rep.rows[label].cumtime) < 2e-6, label
    # Exact nesting: fib(10) is 10 frames deep under main.
    deepest = max(stack.count("__main__.fib") for stack, _ in lines)
    assert deepest == 10
    root = {tuple(stack[:2]) for stack, _ in lines}
    assert len(root) == 2  # process;thread, for the two threads
    assert all(re.fullmatch(r".+ \(\d+\)", part) for r in root for part in r)
    parse_path = next(stack for stack, _ in lines if stack[-1] == "__main__.parse")
    assert parse_path[2:] == [
        "__main__.<module>",
        "__main__.main",
        "__main__.check",
        "__main__.parse",
    ]


def test_flamegraph_svg(sessiond: None, program_trace: tuple[Path, Path]) -> None:
    tmp, trace = program_trace
    svg = tmp / "flame.svg"
    proc = run_python("-m", "pyust", "report", str(trace), "--flamegraph", str(svg))
    assert proc.returncode == 0, proc.stderr
    assert f"pyust: flamegraph written to {svg}" in proc.stderr
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    titles = [t.text or "" for t in root.iter() if t.tag.endswith("title")]
    assert any(t.startswith("__main__.fib (") for t in titles)
    assert any(t.startswith("time.sleep (") for t in titles)
    assert any(t.startswith("__main__.worker (") for t in titles)


def test_perfetto_timeline(sessiond: None, program_trace: tuple[Path, Path]) -> None:
    tmp, trace = program_trace
    out = tmp / "timeline.json"
    proc = run_python("-m", "pyust", "report", str(trace), "--perfetto-json", str(out))
    assert proc.returncode == 0, proc.stderr
    procname = re.search(r'procname = "([^"]*)"', babeltrace(trace)).group(1)  # type: ignore[union-attr]
    doc = json.loads(out.read_text())
    events = doc["traceEvents"]
    names = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"
    }
    assert len(names) == 2
    assert sorted(names.values(), key=len) == [procname, f"{procname} thread"]
    process = next(e for e in events if e.get("name") == "process_name")
    assert process["args"]["name"] == procname
    # Per thread, B and E pair up as a stack, with time never going back.
    depth: dict[int, int] = defaultdict(int)
    last: dict[int, float] = defaultdict(float)
    begins: Counter[str] = Counter()
    for e in events:
        if e["ph"] in ("B", "E"):
            assert e["ts"] >= last[e["tid"]]
            last[e["tid"]] = e["ts"]
            depth[e["tid"]] += 1 if e["ph"] == "B" else -1
            assert depth[e["tid"]] >= 0
            if e["ph"] == "B":
                begins[e["name"]] += 1
    assert all(d == 0 for d in depth.values())
    assert begins["__main__.fib"] == 192
    assert begins["builtins.divmod"] == 5
    fib = next(e for e in events if e.get("name") == "__main__.fib")
    assert fib["cat"] == "python" and fib["args"]["file"].endswith("prog.py")
    assert fib["args"]["line"] == 5
    exceptions = [e for e in events if e["ph"] == "i" and e["args"]["in"] in ("parse", "check")]
    assert [(e["name"], e["args"]["in"]) for e in exceptions] == [
        ("ValueError", "parse"),
        ("ValueError", "check"),
    ]


def test_frames_open_at_the_end(sessiond: None, tmp_path: Path) -> None:
    # os._exit leaves <module>, stop() and the C call open for good.
    trace, _ = record(
        tmp_path, "import os, time\ndef stop():\n    time.sleep(0.02)\n    os._exit(0)\nstop()\n"
    )
    json_out = tmp_path / "t.json"
    rep, text = report(trace, "--perfetto-json", str(json_out))
    assert "3 frame(s) open when their process exited (os._exit): closed there" in text
    assert "still running when the trace ends" not in text
    assert rep.rows["__main__.stop"].calls == 1
    assert rep.rows["__main__.stop"].cumtime >= 0.02
    assert rep.rows["posix._exit"].calls == 1
    events = json.loads(json_out.read_text())["traceEvents"]
    assert Counter(e["ph"] for e in events)["B"] == Counter(e["ph"] for e in events)["E"]


def test_discarded_events_are_reported(sessiond: None, tmp_path: Path) -> None:
    trace, stderr = record(
        tmp_path,
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib(22)\n",
        "--subbuf-size",
        "4096",
        "--num-subbuf",
        "2",
    )
    lost = int(re.search(r"discarded (\d+) events", stderr).group(1))  # type: ignore[union-attr]
    assert lost > 0
    rep, text = report(trace, "--limit", "0")
    m = re.search(r"discarded events: (\d+), in (\d+) place\(s\)", rep.header)
    assert m is not None, text
    assert int(m.group(1)) == lost
    assert re.search(r"\n  \d+ in stream \S+ between \+[\d.]+ s and \+[\d.]+ s", text)
    # What was kept is counted, and never more than was made.
    assert 0 < rep.rows["__main__.fib"].calls <= 57313
    assert all(r.tottime >= 0 and r.cumtime >= 0 for r in rep.rows.values())


def test_other_providers_and_several_processes(sessiond: None, tmp_path: Path) -> None:
    # Every UST event (LTTng's own statedump and library events too), and
    # a forked child with calls of its own.
    session = make_session(tmp_path, events="-a")
    try:
        script = write_script(
            tmp_path,
            "forks.py",
            "import os\n"
            "def child():\n    return sum(range(3))\n"
            "def parent():\n    return 1\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    child()\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\nparent()\n",
        )
        proc = run_python("-m", "pyust", str(script))
        assert proc.returncode == 0, proc.stderr
        lttng("stop", session.name)
    finally:
        lttng("destroy", session.name, check=False)
    text = babeltrace(session.output)
    pids = {e.vpid for e in parse_trace(text) if e.name == "call" and e["co_name"] == "child"}
    assert len(pids) == 1
    child_pid = pids.pop()
    rep, out = report(session.output, "--limit", "0", "--pid", str(child_pid))
    assert rep.rows["__main__.child"].calls == 1
    assert "__main__.parent" not in rep.rows
    rep, out = report(session.output, "--limit", "0")
    assert re.search(r"\d+ other events \(other providers, kernel\) skipped", out)
    assert rep.rows["__main__.child"].calls == 1
    assert rep.rows["__main__.parent"].calls == 1
    assert "2 process(es)" in rep.header


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        ([], 2, "pyust: usage: pyust report DIR"),
        (["{empty}"], 2, "pyust: {empty}: no CTF trace there (no metadata file)"),
        (["{missing}"], 2, "pyust: {missing} is not a trace folder"),
        (["{empty}", "--sort", "name"], 2, "pyust: --sort is tottime, cumtime or calls"),
        (["{empty}", "--limit", "x"], 2, "pyust: --limit needs a whole number"),
        (["{empty}", "--pid"], 2, "pyust: --pid needs a value"),
        (["{empty}", "--colour", "1"], 2, "pyust: unknown report option: --colour"),
        (["{empty}", "--flamegraph", "{missing}/f.svg"], 2, "pyust: --flamegraph: no folder"),
    ],
)
def test_report_bad_input(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing"
    subst = {"empty": str(empty), "missing": str(missing)}
    args = [a.format(**subst) for a in args]
    proc = run_python("-m", "pyust", "report", *args)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.startswith(message.format(**subst)), proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stdout == ""


def test_report_reader_must_be_known(tmp_path: Path) -> None:
    """An unknown PYUST_REPORT_READER is bad input, not silently ignored."""
    proc = run_python(
        "-m",
        "pyust",
        "report",
        str(tmp_path),
        env={**os.environ, "PYUST_REPORT_READER": "babeltrace"},
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("pyust: PYUST_REPORT_READER is pyust or babeltrace2, not 'babeltrace'\n")


def test_report_on_a_damaged_trace(sessiond: None, tmp_path: Path) -> None:
    trace, _ = record(tmp_path, "print(len('x'))\n")
    for metadata in trace.rglob("metadata"):
        metadata.write_text("/* CTF 1.8 */ this is not TSDL\n")
    proc = run_python("-m", "pyust", "report", str(trace))
    assert proc.returncode == 2
    assert proc.stderr.startswith("pyust: babeltrace2: cannot read ")
    assert len(proc.stderr.splitlines()) == 1


def test_frames_running_before_the_recording(sessiond: None, tmp_path: Path) -> None:
    # A second session started while the program waits inside outer():
    # its trace has the returns of outer() and <module> without their calls.
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = write_script(
        tmp_path,
        "late.py",
        "import os, sys, time\n"
        "def inner():\n    return 1\n"
        "def outer():\n"
        f"    open({str(ready)!r}, 'w').close()\n"
        "    deadline = time.time() + 60\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        if time.time() > deadline:\n            sys.exit('timed out')\n"
        "        time.sleep(0.001)\n"
        "    inner()\n"
        "outer()\n",
    )
    early = make_session(tmp_path / "early")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pyust", str(script)])
        deadline = time.time() + 60
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        late = make_session(tmp_path / "late")
        try:
            go.touch()
            assert proc.wait(timeout=60) == 0
            lttng("stop", late.name)
        finally:
            lttng("destroy", late.name, check=False)
    finally:
        lttng("destroy", early.name, check=False)
    rep, text = report(late.output, "--pid", str(proc.pid), "--limit", "0")
    # outer() and <module>, and what the waiting loop was in (sleep or
    # exists() and its stat) when the session started.
    m = re.search(r"\n(\d+) return\(s\) without a call \(frames running before", text)
    assert m is not None and 2 <= int(m.group(1)) <= 4, text
    assert rep.rows["__main__.inner"].calls == 1
    assert "__main__.outer" not in rep.rows
    rep, text = report(early.output, "--pid", str(proc.pid), "--limit", "0")
    assert "without a call" not in text
    assert rep.rows["__main__.outer"].calls == 1
    assert rep.rows["__main__.outer"].cumtime >= rep.rows["__main__.inner"].cumtime


POOL = """\
import multiprocessing as mp
import time


def square(n):
    time.sleep(0.01)
    return n * n


if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        print(sum(pool.map(square, range(20), chunksize=1)))
        pool.close()  # the workers end by themselves (os._exit), not by SIGTERM
        pool.join()
    time.sleep(0.3)  # the parent goes on after its children are gone
"""


def test_forked_children_end_at_their_own_exit(sessiond: None, tmp_path: Path) -> None:
    # Each Pool worker ends in os._exit: its frames close there, not at the
    # parent's last event, so _exit takes no time at all.
    trace, _ = record(tmp_path, POOL)
    json_out = tmp_path / "t.json"
    rep, text = report(trace, "--limit", "0", "--perfetto-json", str(json_out))
    assert re.search(r"\b3 process\(es\)", rep.header), text
    # (`posix._exit`, not a context manager's `__exit__`.)
    assert not any(label.endswith("._exit") for label in rep.order[:10]), text
    assert rep.rows["posix._exit"].tottime == 0
    assert rep.rows["__main__.square"].calls == 20
    events = json.loads(json_out.read_text())["traceEvents"]
    last_begin: dict[int, float] = defaultdict(float)
    last_end: dict[int, float] = defaultdict(float)
    for e in events:
        if e["ph"] == "B":
            last_begin[e["pid"]] = max(last_begin[e["pid"]], e["ts"])
        elif e["ph"] == "E":
            last_end[e["pid"]] = max(last_end[e["pid"]], e["ts"])
    exits = {e["pid"]: e["ts"] for e in events if e["ph"] == "B" and e["name"] == "posix._exit"}
    assert len(exits) == 2, exits
    for pid, at in exits.items():
        # The child's last event is its _exit; nothing of it ends later.
        assert last_begin[pid] == at
        assert last_end[pid] == at

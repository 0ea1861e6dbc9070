"""`pyust report`'s timelines (SPEC section 7): Perfetto's protobuf format
(`--perfetto`), read back with Perfetto's own protos, the trace-event JSON
(`--perfetto-json`), and the limits that bound both."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Terminal, run_python, write_script
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

PROGRAM = """\
import threading
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def check(text):
    try:
        return int(text)
    except ValueError:
        return -1


def worker():
    return fib(5)


fib(10)
check("x")
t = threading.Thread(target=worker)
t.start()
t.join()
"""

# Known durations: three slow() of 30 ms among 300 quick calls.
PACED = """\
import time


def quick():
    pass


def slow():
    time.sleep(0.03)


def main():
    for _ in range(3):
        for _ in range(100):
            quick()
        slow()


main()
"""


@dataclass
class Track:
    pid: int
    tid: int
    name: str
    slices: list[tuple[int, str, str]] = field(default_factory=list)  # (ts, B|E|i, name)


@dataclass
class Timeline:
    tracks: dict[int, Track]
    processes: dict[int, str]
    locations: dict[str, tuple[str, int]]
    categories: Counter[str]
    annotations: list[dict[str, object]]


def read_pftrace(path: Path) -> Timeline:
    """Decodes a --perfetto file with Perfetto's protos, resolving each
    sequence's interned names and default track as the trace processor
    does."""
    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    tracks: dict[int, Track] = {}
    processes: dict[int, str] = {}
    locations: dict[str, tuple[str, int]] = {}
    categories: Counter[str] = Counter()
    annotations: list[dict[str, object]] = []
    names: dict[int, dict[int, str]] = {}
    cats: dict[int, dict[int, str]] = {}
    places: dict[int, dict[int, tuple[str, int]]] = {}
    default_track: dict[int, int] = {}
    default_clock: dict[int, int] = {}
    delta_clocks: dict[int, dict[int, int]] = {}  # incremental clocks' last values
    for packet in trace.packet:
        seq = packet.trusted_packet_sequence_id
        assert seq, "every packet names its sequence"
        if packet.sequence_flags & 1:  # SEQ_INCREMENTAL_STATE_CLEARED
            names[seq], cats[seq], places[seq] = {}, {}, {}
        if packet.HasField("trace_packet_defaults"):
            defaults = packet.trace_packet_defaults
            default_track[seq] = defaults.track_event_defaults.track_uuid
            default_clock[seq] = defaults.timestamp_clock_id
        if packet.HasField("clock_snapshot"):
            delta_clocks[seq] = {
                c.clock_id: c.timestamp for c in packet.clock_snapshot.clocks if c.is_incremental
            }
        clock = packet.timestamp_clock_id or default_clock.get(seq, 0)
        timestamp = packet.timestamp
        if clock in delta_clocks.get(seq, {}):
            delta_clocks[seq][clock] += packet.timestamp
            timestamp = delta_clocks[seq][clock]
        if packet.HasField("interned_data"):
            data = packet.interned_data
            names[seq].update({n.iid: n.name for n in data.event_names})
            cats[seq].update({c.iid: c.name for c in data.event_categories})
            places[seq].update({s.iid: (s.file_name, s.line_number) for s in data.source_locations})
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            if d.HasField("thread"):
                tracks[d.uuid] = Track(d.thread.pid, d.thread.tid, d.thread.thread_name)
            elif d.HasField("process"):
                processes[d.process.pid] = d.process.process_name
        if packet.HasField("track_event"):
            e = packet.track_event
            uuid = e.track_uuid or default_track[seq]
            kind = {e.TYPE_SLICE_BEGIN: "B", e.TYPE_SLICE_END: "E", e.TYPE_INSTANT: "i"}[e.type]
            name = names[seq][e.name_iid] if kind != "E" else ""
            tracks[uuid].slices.append((timestamp, kind, name))
            for iid in e.category_iids:
                categories[cats[seq][iid]] += 1
            if e.source_location_iid:
                locations[name] = places[seq][e.source_location_iid]
            if kind == "i":
                annotations.append(
                    {
                        a.name: a.string_value if a.HasField("string_value") else a.int_value
                        for a in e.debug_annotations
                    }
                )
    return Timeline(tracks, processes, locations, categories, annotations)


def check_stacks(tracks: dict[int, Track]) -> Counter[str]:
    """On each track B and E nest and time never goes back; the begins."""
    begins: Counter[str] = Counter()
    for track in tracks.values():
        depth, last = 0, 0
        for ts, kind, name in track.slices:
            assert ts >= last, (track, ts, last)
            last = ts
            if kind == "B":
                depth += 1
                begins[name] += 1
            elif kind == "E":
                depth -= 1
                assert depth >= 0
        assert depth == 0, track
    return begins


def record(tmp_path: Path, source: str) -> Path:
    script = write_script(tmp_path, "prog.py", source)
    out = tmp_path / "trace"
    proc = run_python("-m", "pyust", "record", "-o", str(out), str(script))
    assert proc.returncode == 0, proc.stderr
    return out


def report(trace: Path, *args: str) -> str:
    proc = run_python("-m", "pyust", "report", str(trace), *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def json_begins(path: Path) -> tuple[Counter[str], list[dict[str, object]]]:
    events = json.loads(path.read_text())["traceEvents"]
    return Counter(str(e["name"]) for e in events if e["ph"] == "B"), events


@pytest.fixture(scope="module")
def program_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("timeline")
    return tmp, record(tmp, PROGRAM)


def test_protobuf_timeline_read_with_perfettos_protos(
    sessiond: None, program_trace: tuple[Path, Path]
) -> None:
    tmp, trace = program_trace
    pf, js = tmp / "t.pftrace", tmp / "t.json"
    text = report(trace, "--perfetto", str(pf), "--perfetto-json", str(js))
    timeline = read_pftrace(pf)
    # Two threads of one process, named as in the JSON.
    (pid,) = timeline.processes
    assert {(t.pid, t.name.endswith(" thread")) for t in timeline.tracks.values()} == {
        (pid, False),
        (pid, True),
    }
    begins = check_stacks(timeline.tracks)
    assert begins["__main__.fib"] == 177 + 15
    (worker,) = [t for t in timeline.tracks.values() if t.name.endswith(" thread")]
    assert "__main__.worker" in {n for _, k, n in worker.slices if k == "B"}
    # The same slices as the JSON timeline, at the same times.
    json_counts, events = json_begins(js)
    assert begins == json_counts
    first_ns = min(ts for t in timeline.tracks.values() for ts, _, _ in t.slices)
    for e in events:
        if e["ph"] == "B" and e["name"] == "__main__.worker":
            worker_us = float(e["ts"])  # type: ignore[arg-type]
    (worker_ns,) = (
        ts for t in timeline.tracks.values() for ts, k, n in t.slices if n == "__main__.worker"
    )
    assert abs((worker_ns - first_ns) / 1000 - worker_us) < 0.002
    file, line = timeline.locations["__main__.fib"]
    assert file.endswith("prog.py") and line == 5
    assert timeline.categories["python"] and timeline.categories["c"]
    assert {"in": "check", "line": 11} in timeline.annotations
    assert (
        Counter(n for t in timeline.tracks.values() for _, k, n in t.slices if k == "i")[
            "ValueError"
        ]
        == 1
    )
    assert re.search(r"timeline: \d+ slice\(s\) and \d+ exception\(s\) written\n", text), text
    # Names interned once per thread: far smaller than the JSON.
    assert pf.stat().st_size * 3 < js.stat().st_size, (pf.stat().st_size, js.stat().st_size)


def test_min_duration_keeps_only_the_long_slices(sessiond: None, tmp_path: Path) -> None:
    trace = record(tmp_path, PACED)
    whole = tmp_path / "whole.json"
    report(trace, "--perfetto-json", str(whole))
    total = sum(json_begins(whole)[0].values())
    pf, js = tmp_path / "long.pftrace", tmp_path / "long.json"
    text = report(
        trace, "--perfetto", str(pf), "--perfetto-json", str(js), "--min-duration", "20ms"
    )
    expected = {"__main__.<module>": 1, "__main__.main": 1, "__main__.slow": 3, "time.sleep": 3}
    assert json_begins(js)[0] == expected
    assert check_stacks(read_pftrace(pf).tracks) == expected
    assert (
        f"timeline: 8 slice(s) and 0 exception(s) written; {total - 8} slice(s) shorter "
        "than --min-duration 20ms left out\n"
    ) in text


def test_from_to_window_clips_the_slices(sessiond: None, tmp_path: Path) -> None:
    trace = record(tmp_path, PACED)
    whole = tmp_path / "whole.json"
    report(trace, "--perfetto-json", str(whole))
    _, events = json_begins(whole)
    second = [e for e in events if e["ph"] == "B" and e["name"] == "__main__.slow"][1]
    start_us = float(second["ts"])  # type: ignore[arg-type]
    window = tmp_path / "window.json"
    pf = tmp_path / "window.pftrace"
    text = report(
        trace,
        "--perfetto-json", str(window),
        "--perfetto", str(pf),
        "--from", f"{start_us}us",  # at the call: what ended before is out
        "--to", f"{start_us + 1000}us",
    )  # fmt: skip
    begins, kept = json_begins(window)
    assert begins == {
        "__main__.<module>": 1,
        "__main__.main": 1,
        "__main__.slow": 1,
        "time.sleep": 1,
    }
    # Slices begun before the window start at its start; those still open
    # at its end end there.
    times = [float(e["ts"]) for e in kept if e["ph"] in ("B", "E")]  # type: ignore[arg-type]
    assert min(times) == pytest.approx(start_us, abs=0.002)
    assert max(times) == pytest.approx(start_us + 1000, abs=0.002)
    assert check_stacks(read_pftrace(pf).tracks) == begins
    assert "outside --from/--to left out" in text


def test_max_slices_stops_the_timeline(sessiond: None, tmp_path: Path) -> None:
    trace = record(tmp_path, PACED)
    whole = tmp_path / "whole.json"
    report(trace, "--perfetto-json", str(whole))
    total = sum(json_begins(whole)[0].values())
    js = tmp_path / "few.json"
    text = report(trace, "--perfetto-json", str(js), "--max-slices", "5")
    begins, events = json_begins(js)
    assert sum(begins.values()) == 5
    assert Counter(e["ph"] for e in events)["E"] == 5
    assert f"; {total - 5} past --max-slices 5 left out\n" in text


@pytest.mark.parametrize(
    "args",
    [
        ["--min-duration", "1ms"],
        ["--perfetto-json", "x.json", "--min-duration", "soon"],
        ["--perfetto", "x.pftrace", "--from", "2s", "--to", "1s"],
        ["--perfetto", "x.pftrace", "--max-slices", "many"],
    ],
)
def test_bad_limits_are_one_line(
    sessiond: None, program_trace: tuple[Path, Path], args: list[str]
) -> None:
    tmp, trace = program_trace
    proc = run_python("-m", "pyust", "report", str(trace), *args, cwd=tmp)
    assert proc.returncode == 2, proc
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("pyust: ")


def test_progress_only_on_a_terminal(sessiond: None, tmp_path: Path) -> None:
    trace = record(
        tmp_path, "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib(25)\n"
    )
    term = Terminal([sys.executable, "-m", "pyust", "report", str(trace), "--limit", "1"])
    assert term.finish() == 0, term.output
    # Events, rate and share of the trace's bytes, redrawn in place, then
    # cleared before the table.
    assert re.search(rb"pyust report: \d+\.\d M events, \d+\.\d\d M/s \[.*\] +\d+% of", term.output)
    assert b"__main__.fib" in term.output.split(b"M events")[-1]
    piped = run_python("-m", "pyust", "report", str(trace), "--limit", "1")
    assert piped.returncode == 0 and piped.stderr == ""
    assert "M events" not in piped.stdout

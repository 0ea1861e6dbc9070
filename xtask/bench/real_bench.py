"""`cargo xtask bench-real`: pyust on a real program nobody here wrote.

    real_bench.py WORKDIR CACHE [--no-unbounded]

The program: the test suite of more-itertools (pinned sdist from PyPI,
fetched once into CACHE and checked against its sha256), run by pytest.
It runs, one after the other in this one run: untraced (first and last:
the baseline and the machine's drift), cProfile, VizTracer (defaults,
with its save), pyust idle (no session listens), `pyust record` (the
default cap), `record --max-size 0` (skipped with --no-unbounded or when
the disk could not hold it with a quarter to spare), `record --flight-recorder`; then `pyust
report` on the default record's trace, table only and with --perfetto.
Prints a Markdown table: wall clock, ratio to untraced, bytes on disk.
Everything written goes under WORKDIR and is deleted once measured.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

PACKAGE = "more-itertools"
VERSION = "11.2.1"
SDIST = "more_itertools-11.2.1.tar.gz"
SHA256 = "cbf08fd0af284dc69718b9b76a8e6203df624d70209ea511e4219d350c856f63"


def fetch(cache: str) -> str:
    """The sdist, downloaded once (pip, from PyPI) and checked."""
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, SDIST)
    if not os.path.exists(path):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"{PACKAGE}=={VERSION}", "-d", cache],
            check=True,
        )  # fmt: skip
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SHA256:
        os.remove(path)
        sys.exit(f"bench-real: {SDIST} has sha256 {digest}, not {SHA256}: removed")
    return path


def size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def timed(argv: list[str], cwd: str, label: str) -> tuple[float, str]:
    """Wall seconds of one run (which must pass), and its stderr."""
    print(f"bench-real: {label}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        sys.exit(f"bench-real: {label} failed ({proc.returncode}):\n" + "\n".join(tail))
    return seconds, proc.stderr


def main() -> None:
    workdir, cache = sys.argv[1], sys.argv[2]
    unbounded = "--no-unbounded" not in sys.argv[3:]
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    with tarfile.open(fetch(cache)) as tar:
        tar.extractall(workdir)
    src = os.path.join(workdir, SDIST[: -len(".tar.gz")])
    out = os.path.join(workdir, "out")
    py = sys.executable
    pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    rows: list[tuple[str, float, str]] = []

    def measure(label: str, argv: list[str], written: str | None = None) -> str:
        seconds, err = timed(argv, src, label)
        on_disk = human(size(written)) if written and os.path.exists(written) else "–"
        rows.append((label, seconds, on_disk))
        return err

    args = pytest[2:]  # after `-m pytest`
    measure("untraced", [py, *pytest])
    os.makedirs(out)
    profile = os.path.join(out, "cprofile.out")
    measure("cProfile", [py, "-m", "cProfile", "-o", profile, "-m", "pytest", *args], profile)
    viz = os.path.join(out, "viztracer.json")
    measure(
        "VizTracer (defaults: the last 1 M entries)",
        [py, "-m", "viztracer", "--quiet", "-o", viz, "-m", "pytest", *args],
        viz,
    )
    shutil.rmtree(out, ignore_errors=True)
    measure("pyust, no session listening", [py, "-m", "pyust", *pytest])
    trace = os.path.join(workdir, "record")
    err = measure(
        "pyust record (default cap: 2 GiB)",
        [py, "-m", "pyust", "record", "-o", trace, *pytest],
        trace,
    )
    kept = size(trace)
    dropped = re.search(r"\(about ([\d.]+) (\w+)\) were dropped", err)
    units = {"B": 0, "KiB": 1, "MiB": 2, "GiB": 3}
    gone = float(dropped[1]) * 1024 ** units[dropped[2]] if dropped else 0
    # `report` on the capped trace: the table only, then with a timeline.
    table = subprocess.run(
        [py, "-m", "pyust", "report", trace, "--limit", "1"], capture_output=True, text=True
    ).stdout
    events = re.search(r"^(\d+) python events", table, re.M)
    timeline = os.path.join(workdir, "t.pftrace")
    report_rows: list[tuple[str, float, str]] = []
    for label, extra in (
        ("pyust report (table)", []),
        ("pyust report --perfetto", ["--perfetto", timeline]),
    ):
        seconds, _ = timed([py, "-m", "pyust", "report", trace, *extra], src, label)
        report_rows.append((label, seconds, human(size(timeline)) if extra else "–"))
    shutil.rmtree(trace, ignore_errors=True)
    if os.path.exists(timeline):
        os.remove(timeline)
    # The fast mode, with and without C calls, and trace0 (Python frames
    # only; 3.13+) beside it.
    fast = os.path.join(workdir, "fast")
    measure(
        "pyust record --mode fast",
        [py, "-m", "pyust", "record", "--mode", "fast", "-o", fast, *pytest],
        fast,
    )
    fast_table = subprocess.run(
        [py, "-m", "pyust", "report", fast, "--limit", "1"], capture_output=True, text=True
    ).stdout
    fast_events = re.search(r"^(\d+) python events", fast_table, re.M)
    seconds, _ = timed([py, "-m", "pyust", "report", fast], src, "pyust report (fast trace)")
    report_rows.append(
        (
            f"pyust report (table), fast trace"
            f"{f' ({int(fast_events[1]):,} events)' if fast_events else ''}",
            seconds,
            "–",
        )
    )
    shutil.rmtree(fast, ignore_errors=True)
    measure(
        "pyust record --mode fast --no-c-calls",
        [py, "-m", "pyust", "record", "--mode", "fast", "--no-c-calls", "-o", fast, *pytest],
        fast,
    )
    shutil.rmtree(fast, ignore_errors=True)
    if importlib.util.find_spec("trace0") is not None:
        t0 = os.path.join(workdir, "trace0.pb")
        measure(
            "trace0 0.1.16 (Python frames only)",
            [py, "-m", "trace0", "run", "--output", t0, "-m", "pytest", *args],
            t0,
        )
        if os.path.exists(t0):
            os.remove(t0)
    if unbounded:
        need = int(1.25 * (kept + gone)) + (2 << 30)
        free = shutil.disk_usage(workdir).free
        if free > need:
            full = os.path.join(workdir, "record-unbounded")
            measure(
                "pyust record --max-size 0",
                [py, "-m", "pyust", "record", "--max-size", "0", "-o", full, *pytest],
                full,
            )
            shutil.rmtree(full, ignore_errors=True)
        else:
            print(
                f"bench-real: skipping --max-size 0: {human(free)} free, it may need {human(need)}",
                file=sys.stderr,
            )
    flight = os.path.join(workdir, "flight")
    measure(
        "pyust record --flight-recorder (64 MiB)",
        [py, "-m", "pyust", "record", "--flight-recorder", "-o", flight, *pytest],
        flight,
    )
    shutil.rmtree(flight, ignore_errors=True)
    measure("untraced (again)", [py, *pytest])

    base = (rows[0][1] + rows[-1][1]) / 2
    v = sys.version_info
    print(
        f"\n{PACKAGE} {VERSION} test suite (pytest, 765 tests), "
        f"CPython {v.major}.{v.minor}.{v.micro}, {os.cpu_count()} CPUs; "
        f"baseline: mean of the two untraced runs ({base:.1f} s)\n"
    )
    print("| run | wall | × untraced | on disk |")
    print("|---|---:|---:|---:|")
    for label, seconds, on_disk in rows:
        print(f"| {label} | {seconds:.1f} s | {seconds / base:.2f} | {on_disk} |")
    if events:
        print(
            f"\nOn the default record's trace ({int(events[1]):,} events, {human(kept)} kept"
            f"{f', about {human(gone)} older dropped' if gone else ''}):\n"
        )
    print("| reader | wall | output |")
    print("|---|---:|---:|")
    for label, seconds, written in report_rows:
        print(f"| {label} | {seconds:.1f} s | {written} |")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

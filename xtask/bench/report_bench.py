"""`cargo xtask bench-report`: how fast `pyust report` reads a large trace,
beside `babeltrace2 TRACE > /dev/null` on the same trace in the same run.

    report_bench.py WORKDIR ROUNDS FIB_N

Records fib(FIB_N) with `pyust record` (fib(32): 14.1 million events),
then times both readers ROUNDS times, interleaved, and prints a Markdown
table: median wall clock, events per second, and peak memory (max RSS).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time


def run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run, its output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Read stderr to its end first (a full pipe would block the child).
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} failed ({proc.returncode}): {err.strip()}")
    return seconds, usage.ru_maxrss


def dir_size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def main() -> None:
    workdir, rounds, fib_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(workdir, exist_ok=True)
    trace = os.path.join(workdir, "trace")
    shutil.rmtree(trace, ignore_errors=True)
    script = os.path.join(workdir, "load.py")
    with open(script, "w") as f:
        f.write(
            "import sys\n"
            "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
            "fib(int(sys.argv[1]))\n"
        )
    pyust = [sys.executable, "-m", "pyust"]
    print(f"bench-report: recording fib({fib_n})", file=sys.stderr)
    rec = subprocess.run(
        [*pyust, "record", "-o", trace, script, str(fib_n)],
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if rec.returncode != 0:
        sys.exit(f"pyust record failed: {rec.stderr.strip()}")
    lost = re.search(r"discarded (\d+) events", rec.stderr)
    head = subprocess.run(
        [*pyust, "report", trace, "--limit", "1"], capture_output=True, text=True, check=True
    ).stdout
    events = int(head.splitlines()[1].split()[0])
    babeltrace = shutil.which("babeltrace2") or "babeltrace2"
    folded = os.path.join(workdir, "stacks.txt")
    svg = os.path.join(workdir, "flame.svg")
    readers = {
        "babeltrace2 TRACE > /dev/null": [babeltrace, trace],
        "pyust report TRACE": [*pyust, "report", trace],
        # The same report through libbabeltrace2 instead of pyust's reader.
        "PYUST_REPORT_READER=babeltrace2 pyust report TRACE": [
            "env",
            "PYUST_REPORT_READER=babeltrace2",
            *pyust,
            "report",
            trace,
        ],
        "pyust report TRACE --perfetto P": [
            *pyust,
            "report",
            trace,
            "--perfetto",
            os.path.join(workdir, "timeline.pftrace"),
        ],
        "pyust report TRACE --folded F --flamegraph SVG": [
            *pyust,
            "report",
            trace,
            "--folded",
            folded,
            "--flamegraph",
            svg,
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in readers}
    rss: dict[str, int] = dict.fromkeys(readers, 0)
    for r in range(rounds):
        print(f"bench-report: round {r + 1}/{rounds}", file=sys.stderr)
        for name, argv in readers.items():
            seconds, peak = run(argv)
            times[name].append(seconds)
            rss[name] = max(rss[name], peak)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    base = median(times["babeltrace2 TRACE > /dev/null"])
    print(
        f"\nTrace: fib({fib_n}) recorded by pyust record, {events} python events, "
        f"{dir_size(trace) / 2**20:.0f} MiB, {lost.group(1) if lost else 0} discarded; "
        f"{rounds} rounds, interleaved, median wall clock.\n"
    )
    print("| reader | seconds | events/s | × babeltrace2's speed | max RSS |")
    print("|---|---:|---:|---:|---:|")
    for name in readers:
        s = median(times[name])
        print(
            f"| `{name}` | {s:.2f} | {events / s / 1e6:.2f} M | {base / s:.2f} "
            f"| {rss[name] / 1024:.0f} MiB |"
        )


if __name__ == "__main__":
    main()

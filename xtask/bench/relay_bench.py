"""`cargo xtask bench-relay`: the events/s one traced program sustains when
`pyust record` streams to an lttng-relayd over loopback, beside the same
run written to local disk, in the same run (a benchmark: asserts nothing).

    relay_bench.py WORKDIR ROUNDS FIB_N

Each round records fib(FIB_N) once per row, interleaved: local disk, relay,
relay --live, in the readable and the fast mode. The program times its own
work; events come from `pyust report` on the trace (the relay's copy for
relay rows), discarded events from record's own line. Prints a Markdown
table of medians. Traces are deleted as soon as they are counted.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

PROGRAM = """
import sys, time

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

start = time.perf_counter()
fib(int(sys.argv[1]))
print(time.perf_counter() - start)
"""


def free_ports(n: int) -> int:
    """The first of `n` consecutive loopback ports nothing listens on."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        socks = [socket.socket() for _ in range(n)]
        try:
            for i, sock in enumerate(socks):
                sock.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()


def main() -> None:
    workdir, rounds, fib_n = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    script = os.path.join(workdir, "fib.py")
    with open(script, "w") as f:
        f.write(PROGRAM)
    port = free_ports(3)
    relay_out = os.path.join(workdir, "relay")
    relayd = subprocess.Popen(
        [
            "lttng-relayd",
            f"--output={relay_out}",
            f"--control-port=tcp://127.0.0.1:{port}",
            f"--data-port=tcp://127.0.0.1:{port + 1}",
            f"--live-port=tcp://127.0.0.1:{port + 2}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = {
        (mode, where): []
        for mode in ("readable", "fast")
        for where in ("local disk", "relay", "relay --live")
    }
    try:
        time.sleep(0.5)
        for r in range(rounds):
            for (mode, where), results in rows.items():
                local = os.path.join(workdir, "local")
                args = ["--mode", mode, "--max-size", "0"]
                if where == "local disk":
                    args += ["-o", local]
                else:
                    args += ["--relay", f"127.0.0.1:{port}"]
                    if where.endswith("--live"):
                        args.append("--live")
                proc = subprocess.run(
                    [sys.executable, "-m", "pyust", "record", *args, script, fib_n],
                    capture_output=True,
                    text=True,
                    cwd=workdir,
                )
                if proc.returncode != 0:
                    sys.exit(f"record failed: {proc.stderr.strip()}")
                seconds = float(proc.stdout.split()[-1])
                found = re.search(r"LTTng discarded (\d+) events", proc.stderr)
                discarded = int(found.group(1)) if found else 0
                trace = local
                if where != "local disk":
                    [host] = os.listdir(relay_out)
                    [name] = os.listdir(os.path.join(relay_out, host, "pyust"))
                    trace = os.path.join(relay_out, host, "pyust", name)
                report = subprocess.run(
                    [sys.executable, "-m", "pyust", "report", trace, "--limit", "1"],
                    capture_output=True,
                    text=True,
                )
                found = re.search(r"^(\d+) python events", report.stdout, re.M)
                if report.returncode != 0 or not found:
                    sys.exit(f"report failed: {report.stderr.strip()}")
                events = int(found.group(1))
                results.append((events / seconds, seconds, events, discarded))
                shutil.rmtree(trace)
                print(f"relay-bench: round {r + 1} {mode} {where}: {events / seconds:,.0f}/s")
    finally:
        relayd.terminate()
        relayd.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n### fib({fib_n}) recorded by `pyust record` ({rounds} rounds, medians)\n\n"
        "| mode | written to | events/s | program s | events kept | discarded |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    for (mode, where), results in rows.items():
        rate = statistics.median(x[0] for x in results)
        seconds = statistics.median(x[1] for x in results)
        events = statistics.median(x[2] for x in results)
        discarded = statistics.median(x[3] for x in results)
        print(
            f"| {mode} | {where} | {rate / 1e6:.2f} M | {seconds:.2f} | "
            f"{events:,.0f} | {discarded:,.0f} |"
        )


if __name__ == "__main__":
    main()

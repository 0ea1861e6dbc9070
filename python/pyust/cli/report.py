"""`pyust report DIR`: the table per function, folded stacks, flame graph
and timelines of a trace.
"""

from __future__ import annotations

import argparse
import os
import sys

from .args import Parser
from .common import _int_option, fail, parse_duration, require_trace, trace_folder

# `pyust report`

REPORT_OUTPUTS = ("--flamegraph", "--folded", "--perfetto", "--perfetto-json")

TIMELINE_LIMITS = ("--min-duration", "--from", "--to", "--max-slices")


def parser() -> Parser:
    """`report`'s options (its part of `pyust --help`)."""
    p = Parser(
        "report",
        "where the time went: calls, self (tottime) and\n"
        "total (cumtime) time per function, over all\n"
        "processes and threads of the trace (of every\n"
        "host, in a relay's output folder: the table\n"
        "lists each host's processes, and the flame\n"
        "graph and timelines name them host/process)",
        "unknown report option: {} (see pyust --help)",
        "pyust report DIR [--sort tottime|cumtime|calls] [--limit N]\n"
        "                        [--pid P] [--tid T] [--host H] [--flamegraph out.svg]\n"
        "                        [--folded out.txt] [--perfetto out.pftrace]\n"
        "                        [--perfetto-json out.json] [--min-duration D]\n"
        "                        [--from T] [--to T] [--max-slices N]",
    )
    p.add_argument("dir", nargs="*", metavar="DIR", help=argparse.SUPPRESS)
    for name, metavar, text in (
        ("--sort", "KEY", "tottime (default), cumtime or calls"),
        ("--limit", "N", "rows shown (default 30; 0: all)"),
        ("--pid", "P", "only this process"),
        ("--tid", "T", "only this thread"),
        ("--host", "H", "only host H's processes"),
        ("--flamegraph", "SVG", "write an interactive flame graph"),
        ("--folded", "TXT", "write folded stacks (process;thread;frames ns)"),
        (
            "--perfetto",
            "FILE",
            "write a timeline for ui.perfetto.dev in\n"
            "Perfetto's protobuf format (one track per\n"
            "thread; several times smaller than JSON)",
        ),
        (
            "--perfetto-json",
            "FILE",
            "the timeline as trace-event JSON (also for\nchrome://tracing)",
        ),
        (
            "--min-duration",
            "D",
            "timelines leave out slices shorter than D\n(e.g. 100us, 1ms)",
        ),
        ("--from", "T", "only the slices after T, from the first\nevent (e.g. 2.5s)"),
        ("--to", "T", "only the slices before T"),
        (
            "--max-slices",
            "N",
            "at most N slices. The table says what each\nof these left out",
        ),
    ):
        p.option(name, metavar=metavar, help=text)
    return p


def report(argv: list[str]) -> int:
    p = parser()
    args = p.parse(argv)
    if args.help:
        print(p.format_help(), end="")
        return 0
    options: dict[str, str] = {}
    for action in p._actions:
        value = getattr(args, action.dest)
        if action.option_strings and action.dest != "help" and value is not None:
            options[action.option_strings[0]] = value
    paths: list[str] = args.dir + getattr(args, "extras", [])
    if len(paths) != 1:
        fail("usage: pyust report DIR [options] (see pyust --help)")
    path = trace_folder(paths[0])
    sort = options.get("--sort", "tottime")
    if sort not in ("tottime", "cumtime", "calls"):
        fail(f"--sort is tottime, cumtime or calls, not {sort!r}")
    limit = _int_option("--limit", options.get("--limit", "30"))
    pid = _int_option("--pid", options["--pid"]) if "--pid" in options else None
    tid = _int_option("--tid", options["--tid"]) if "--tid" in options else None
    host = options.get("--host")
    if host is not None and not host:
        fail("--host needs a host name (as the trace's table lists them)")
    outputs = {}
    for name in REPORT_OUTPUTS:
        if name in options:
            out = options[name]
            parent = os.path.dirname(os.path.abspath(out))
            if not os.path.isdir(parent):
                fail(f"{name}: no folder {parent}")
            outputs[name[2:].replace("-", "_")] = out
    limits: dict[str, int] = {}
    for name in TIMELINE_LIMITS:
        if name in options:
            if "perfetto" not in outputs and "perfetto_json" not in outputs:
                fail(f"{name} bounds the timeline: give --perfetto FILE or --perfetto-json FILE")
            if name == "--max-slices":
                limits["max_slices"] = _int_option(name, options[name])
            else:
                key = {"--min-duration": "min_duration", "--from": "start", "--to": "end"}[name]
                limits[key] = parse_duration(name, options[name])
    if "start" in limits and "end" in limits and limits["end"] <= limits["start"]:
        fail("--to must come after --from")
    require_trace(path)
    from .. import _pyust

    try:
        table = _pyust._report(
            path,
            sort,
            limit,
            pid,
            tid,
            host,
            flamegraph=outputs.get("flamegraph"),
            folded=outputs.get("folded"),
            perfetto=outputs.get("perfetto"),
            perfetto_json=outputs.get("perfetto_json"),
            min_duration=limits.get("min_duration", 0),
            start=limits.get("start"),
            end=limits.get("end"),
            max_slices=limits.get("max_slices"),
        )
    except OSError as exc:  # the trace cannot be read, or an output written
        print(f"pyust: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs were removed
        print("pyust: interrupted", file=sys.stderr)
        return 130
    sys.stdout.write(table)
    sys.stdout.flush()
    for name, out in outputs.items():
        print(f"pyust: {name.replace('_', '-')} written to {out}", file=sys.stderr)
    return 0

"""`pyust report DIR`: the table per function, folded stacks, flame graph
and timelines of a trace.
"""

from __future__ import annotations

import os
import sys

from .common import USAGE, _int_option, fail, parse_duration, trace_folder

# `pyust report`

REPORT_OUTPUTS = ("--flamegraph", "--folded", "--perfetto", "--perfetto-json")

TIMELINE_LIMITS = ("--min-duration", "--from", "--to", "--max-slices")


def report(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    options: dict[str, str] = {}
    paths: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            paths.extend(argv[i + 1 :])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in (
                "--sort",
                "--limit",
                "--pid",
                "--tid",
                "--host",
                *REPORT_OUTPUTS,
                *TIMELINE_LIMITS,
            ):
                fail(f"unknown report option: {name} (see pyust --help)")
            if not eq:
                i += 1
                if i == len(argv):
                    fail(f"{name} needs a value")
                value = argv[i]
            options[name] = value
        else:
            paths.append(arg)
        i += 1
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
        return 1
    except KeyboardInterrupt:  # outputs were removed
        print("pyust: interrupted", file=sys.stderr)
        return 130
    sys.stdout.write(table)
    sys.stdout.flush()
    for name, out in outputs.items():
        print(f"pyust: {name.replace('_', '-')} written to {out}", file=sys.stderr)
    return 0

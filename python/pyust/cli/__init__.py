"""The ``pyust`` command (also ``python -m pyust``).

    pyust [-m module | script.py] [args...]                  trace into active sessions
    pyust record [-o DIR] [--view] [--all-processes] [-m module | script.py] [args...]
    pyust view DIR
    pyust report DIR [--sort KEY] [--limit N] [--pid P] [--tid T]
                     [--flamegraph SVG] [--folded TXT] [--perfetto FILE]
                     [--perfetto-json FILE] [--min-duration D] [--from T]
                     [--to T] [--max-slices N]

Bad input gets one line on stderr and exit status 2; the traced program's
own failures keep their usual traceback and exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import attach, record, report, top, view
from .common import UsageError, fail, parse_target, run_traced

LAUNCHER = """\
Trace a Python program into LTTng-UST (events python:call, python:return,
python:c_call, python:c_return, python:exception).

  pyust script.py ARGS       run the script traced; events go to the LTTng
                             sessions that enable python:* (as `lttng
                             create; lttng enable-event -u 'python:*';
                             lttng start` sets up)
  pyust -m module ARGS       the same for a module, as `python -m module`"""

TAIL = """\
  --                         ends pyust's options (a script named `record`)
  -h, --help                 this help;  --version  pyust's version"""


def usage() -> str:
    """`pyust --help`: the launcher, then each subcommand's synopsis and
    options, as their parsers declare them (`pyust CMD --help`: one)."""
    parsers = [
        (record.parser(), "pyust record ..."),
        (attach.parser(), "pyust attach PID"),
        (top.parser(), "pyust top [SESSION]"),
        (view.parser(), "pyust view DIR"),
        (report.parser(), "pyust report DIR"),
    ]
    synopsis = ["usage: pyust [-m module | script.py] [args...]"]
    synopsis += [f"       {p.usage}" for p, _ in parsers]
    parts = ["\n".join(synopsis), LAUNCHER]
    parts += [p.summary(name) for p, name in parsers]
    return "\n".join(parts[:1]) + "\n\n" + "\n".join(parts[1:]) + "\n" + TAIL


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in ("-h", "--help"):
            print(usage())
            return 0
        if args and args[0] == "--version":
            from .. import __version__

            print(f"pyust {__version__}")
            return 0
        if args and args[0] == "record":
            return record.record(args[1:])
        if args and args[0] == "view":
            return view.view(args[1:])
        if args and args[0] == "report":
            return report.report(args[1:])
        if args and args[0] == "top":
            return top.top(args[1:])
        if args and args[0] == "attach":
            return attach.attach(args[1:])
        if args and args[0] == "--":
            args = args[1:]
        elif args and args[0].startswith("-") and not args[0].startswith("-m"):
            fail(f"unknown option: {args[0]} (see pyust --help)")
        return run_traced(parse_target(args))
    except UsageError as exc:
        print(f"pyust: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1

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

from .common import USAGE, UsageError, fail, parse_target, run_traced
from .record import record
from .report import report
from .top import top
from .view import view


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        if args and args[0] == "--version":
            from .. import __version__

            print(f"pyust {__version__}")
            return 0
        if args and args[0] == "record":
            return record(args[1:])
        if args and args[0] == "view":
            return view(args[1:])
        if args and args[0] == "report":
            return report(args[1:])
        if args and args[0] == "top":
            return top(args[1:])
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

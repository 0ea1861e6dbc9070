"""`pyust top`: a live table of the hottest functions of live sessions."""

from __future__ import annotations

import signal
import socket
import sys

from .args import Parser
from .common import _int_option, fail
from .lttng import RELAY_PORT, parse_relay, relay_address, relay_host


def _interval(text: str) -> float:
    try:
        interval = float(text)
    except ValueError:
        interval = -1.0
    if not 0.1 <= interval <= 3600:
        fail(f"--interval {text}: seconds, from 0.1 to 3600")
    return interval


def parser() -> Parser:
    """`top`'s options (its part of `pyust --help`)."""
    p = Parser(
        "top",
        "a live table of the hottest functions of live\n"
        "sessions (`record --relay HOST --live`): self\n"
        "time and calls per function, host and process,\n"
        "over the last interval and since attached, and\n"
        "what each process runs now; until the sessions\n"
        "end, or Ctrl-C",
        "unknown option for top: {} (see pyust --help)",
        "pyust top [--relay HOST[:PORT]] [--once] [--interval S] [--limit N]\n"
        "                 [SESSION]",
    )
    p.add_argument(
        "session",
        nargs="*",
        metavar="SESSION",
        help="a session name, HOST/NAME, or a pattern (`*`,\n"
        "`*-app` for every host's run of app.py) for\n"
        "several, read together; without it: the relay's\n"
        "only live session, or the list of them",
    )
    p.option(
        "--relay",
        metavar="HOST[:PORT]",
        what="a host, or host:port",
        type=parse_relay,
        default=("localhost", None),
        help="the relay daemon (default localhost; control\n"
        "port PORT, default 5342; it serves live\n"
        "viewers on PORT+2)",
    )
    p.option(
        "--interval",
        metavar="S",
        what="seconds (e.g. 1, 0.5)",
        type=_interval,
        help="seconds between tables (default 1); with it, or\n"
        "when stdout is not a terminal, tables follow\n"
        "one another as plain text",
    )
    p.option(
        "--once",
        action="store_true",
        help="print one table (of the first interval that\nsaw events) and exit",
    )
    p.option(
        "--limit",
        metavar="N",
        what="a number of rows",
        type=lambda v: _int_option("--limit", v),
        default=20,
        help="function rows per table (default 20; 0: all)",
    )
    return p


def top(argv: list[str]) -> int:
    import fnmatch

    p = parser()
    args = p.parse(argv)
    if args.help:
        print(p.format_help(), end="")
        return 0
    relay: tuple[str, int | None] = args.relay
    once: bool = args.once
    interval: float | None = args.interval
    limit: int = args.limit
    patterns: list[str] = args.session + getattr(args, "extras", [])
    if len(patterns) > 1:
        fail("top takes one SESSION (a pattern matches several: '*-app')")
    live_port = (relay[1] or RELAY_PORT) + 2
    where = f"{relay_host(relay)}:{live_port}"
    try:
        socket.create_connection((relay[0], live_port), timeout=3).close()
    except OSError as exc:
        fail(f"no relay daemon serves live viewers at {where} ({exc.strerror or exc})")
    from .. import _pyust

    try:
        sessions = _pyust._live_sessions(f"net://{where}")
    except OSError as exc:
        fail(f"cannot list the live sessions at {where}: {exc}")

    def label(session: tuple[str, str, str, int, int]) -> str:
        return f"{session[1]}/{session[2]}"

    if patterns:
        chosen = [
            s
            for s in sessions
            if fnmatch.fnmatchcase(s[2], patterns[0]) or fnmatch.fnmatchcase(label(s), patterns[0])
        ]
        if not chosen:
            known = ", ".join(label(s) for s in sessions) or "none"
            fail(f"no live session {patterns[0]!r} at {where} (its live sessions: {known})")
    elif not sessions:
        fail(
            f"no live session at {where} "
            f"(`pyust record --relay {relay_address(relay)} --live` makes one)"
        )
    elif len(sessions) > 1:
        for s in sessions:
            print(f"{label(s)}  ({s[3]} stream(s), {s[4]} viewer(s))")
        sys.stdout.flush()
        fail(f"{len(sessions)} live sessions at {where}: name one (HOST/NAME, or a pattern)")
    else:
        chosen = sessions
    title = label(chosen[0]) if len(chosen) == 1 else f"{len(chosen)} sessions"
    redraw = interval is None and not once and sys.stdout.isatty()
    sys.stdout.flush()
    # Ctrl-C is how one leaves: make sure it arrives, even when this process
    # started with SIGINT ignored (launched from a background job, which
    # Python then leaves ignored).
    old_sigint = signal.getsignal(signal.SIGINT)
    if old_sigint in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        end = _pyust._top(
            [s[0] for s in chosen],
            f"{title} at {where}",
            interval or 1.0,
            once,
            limit,
            redraw,
        )
    except OSError as exc:
        print(f"pyust: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the usual way to leave a live view
        return 0
    finally:
        signal.signal(signal.SIGINT, old_sigint if old_sigint is not None else signal.SIG_DFL)
    if end == "ended":
        print(
            "pyust top: the session ended" if len(chosen) == 1 else "pyust top: the sessions ended",
            file=sys.stderr,
        )
    return 0

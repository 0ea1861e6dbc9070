"""`pyust top`: a live table of the hottest functions of live sessions."""

from __future__ import annotations

import signal
import socket
import sys

from .common import USAGE, _int_option, _option_value, fail
from .lttng import RELAY_PORT, parse_relay, relay_address, relay_host


def top(argv: list[str]) -> int:
    import fnmatch

    relay: tuple[str, int | None] = ("localhost", None)
    once = False
    interval: float | None = None
    limit = 20
    patterns: list[str] = []
    while argv:
        arg = argv[0]
        name = arg.partition("=")[0] if arg.startswith("--") else arg
        if arg in ("-h", "--help"):
            print(USAGE)
            return 0
        if name == "--relay":
            value, argv = _option_value(argv, "a host, or host:port")
            relay = parse_relay(value)
        elif arg == "--once":
            once, argv = True, argv[1:]
        elif name == "--interval":
            value, argv = _option_value(argv, "seconds (e.g. 1, 0.5)")
            try:
                interval = float(value)
            except ValueError:
                interval = -1.0
            if not 0.1 <= interval <= 3600:
                fail(f"--interval {value}: seconds, from 0.1 to 3600")
        elif name == "--limit":
            value, argv = _option_value(argv, "a number of rows")
            limit = _int_option("--limit", value)
        elif arg == "--":
            patterns.extend(argv[1:])
            break
        elif arg.startswith("-"):
            fail(f"unknown option for top: {arg} (see pyust --help)")
        else:
            patterns.append(arg)
            argv = argv[1:]
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

"""`pyust view DIR`: the trace as text (babeltrace2's, or pyust's own
reader for the fast mode's batches).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess

from .args import Parser
from .common import fail, require_trace, trace_folder

# `pyust view`


def holds_fast_events(path: str) -> bool:
    """Whether a trace folder's metadata declares the fast mode's batches."""
    for root, dirs, files in os.walk(path):
        dirs.sort()
        if "metadata" in files:
            try:
                with open(os.path.join(root, "metadata"), "rb") as f:
                    if b"python_fast:batch" in f.read():
                        return True
            except OSError:
                pass
            dirs.clear()
    return False


def show(path: str) -> None:
    from .. import _pyust

    # A packet whose sizes cannot be aborts babeltrace2 (an assertion).
    problem = _pyust._check_trace(path)
    if problem:
        fail(f"cannot read {path}: {problem}")
    if holds_fast_events(path):
        # The batches are unpacked by pyust itself, into the same text.
        try:
            _pyust._view(path)
        except OSError as exc:
            fail(f"cannot read {path}: {exc}")
        return
    babeltrace = shutil.which("babeltrace2")
    if babeltrace is None:
        fail("viewing a trace needs babeltrace2 (apt-get install babeltrace2)")
    for root, _dirs, files in os.walk(path):
        if "metadata" in files and os.path.getsize(os.path.join(root, "metadata")) == 0:
            # (babeltrace2 aborts on it.)
            fail(
                f"{root}: the metadata file is empty (the trace was cut short before "
                "its metadata was written): nothing in it can be read"
            )
    # The text goes straight to stdout (traces can be large); babeltrace2's
    # own diagnostics are replaced by one line.
    proc = subprocess.run(
        [babeltrace, path], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    if proc.returncode == -signal.SIGPIPE:
        # The reader of our output went away (`pyust view DIR | head`): not
        # a bad trace.
        raise BrokenPipeError
    if proc.returncode != 0:
        fail(f"babeltrace2 cannot read {path} (not an LTTng trace folder?)")


def parser() -> Parser:
    """`view`'s command line (its part of `pyust --help`)."""
    p = Parser(
        "view", "print a trace folder as text", "unknown option for view: {}", "pyust view DIR"
    )
    p.add_argument("dir", nargs="*", metavar="DIR", help=argparse.SUPPRESS)
    return p


def view(argv: list[str]) -> int:
    p = parser()
    args = p.parse(argv)
    if args.help:
        print(p.format_help(), end="")
        return 0
    paths: list[str] = args.dir + getattr(args, "extras", [])
    if len(paths) != 1:
        fail("usage: pyust view DIR")
    path = trace_folder(paths[0])
    require_trace(path)
    show(path)
    return 0

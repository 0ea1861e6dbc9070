"""`record` and the program it runs tied together whatever happens to
either (issue: record survives every fault): signals to record, to the
program or to both, record's own resources running out, pyust's threads
and CPython's fork warning. Each test checks the three promises: the
program's exit status and output are what they are untraced, the trace
up to the fault is readable, and no session, process or temp file is left.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import pyust_sessions, run_python, write_script

FORKS = """
import os, sys, threading, time, warnings
before = list(warnings.filters)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

fork()
print("filters as before:", warnings.filters == before, flush=True)
if sys.argv[1:] == ["with-a-thread"]:
    threading.Thread(target=time.sleep, args=(0.5,)).start()
    fork()
"""


def test_importing_pyust_starts_no_thread() -> None:
    # LTTng-UST (two listener threads) is loaded when tracing is first
    # asked for, not at import.
    proc = run_python(
        "-c", "import os, pyust; print(len(os.listdir('/proc/self/task')), pyust.is_enabled())"
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "1 False\n", "")


@pytest.mark.parametrize("mode", ["readable", "fast"])
def test_a_fork_warns_under_record_as_it_does_untraced(
    sessiond: None, tmp_path: Path, mode: str
) -> None:
    # CPython 3.12+ warns at a fork of a process with threads: LTTng-UST's
    # and pyust's are fork-safe and do not count; the program's own do.
    script = write_script(tmp_path, "forks.py", FORKS)
    for args, warns in (([], False), (["with-a-thread"], sys.version_info >= (3, 12))):
        untraced = run_python(str(script), *args)
        out = tmp_path / f"trace-{len(args)}"
        traced = run_python(
            "-m", "pyust", "record", "--mode", mode, "-o", str(out), "--", str(script), *args
        )
        assert untraced.stdout == traced.stdout == "filters as before: True\n"
        assert untraced.returncode == traced.returncode == 0
        said = "DeprecationWarning: This process (pid="
        assert (said in untraced.stderr) == (said in traced.stderr) == warns, traced.stderr
    assert pyust_sessions() == []


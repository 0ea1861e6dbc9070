"""The command line (SPEC section 3): launcher, `record`, `view`, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import (
    SCENARIOS,
    SLEEPER,
    Session,
    babeltrace,
    check_nesting,
    check_no_pyust_frames,
    parse_trace,
    pyust_sessions,
    run_python,
    run_traced,
    write_script,
)

# --- python -m pyust ---------------------------------------------------------


def test_script_arguments_and_main_module(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "args.py",
        "import sys, __main__\n"
        "print(sys.argv, __name__, __main__.__file__ == __file__, sys.path[0])\n",
    )
    proc, events = run_traced(session, script, "a", "--b")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"['{script}', 'a', '--b'] __main__ True {tmp_path}"
    assert events[0].short() == "call <module>"
    assert events[-1].name == "return"
    check_nesting(events)


@pytest.mark.parametrize(
    ("body", "status", "stderr_has"),
    [
        ("import sys\nsys.exit(3)\n", 3, None),
        ("import sys\nsys.exit('bye')\n", 1, "bye"),
        ("import sys\nsys.exit()\n", 0, None),
        ("def f():\n    raise RuntimeError('boom')\nf()\n", 1, "RuntimeError: boom"),
        ("raise KeyboardInterrupt\n", 130, "KeyboardInterrupt"),
    ],
)
def test_exit_status_is_the_scripts(
    session: Session, tmp_path: Path, body: str, status: int, stderr_has: str | None
) -> None:
    script = write_script(tmp_path, "exits.py", body)
    proc, events = run_traced(session, script)
    assert proc.returncode == status
    if stderr_has:
        assert stderr_has in proc.stderr
    # The traceback is the script's: no frame of pyust in it.
    assert "pyust" not in proc.stderr.replace(str(script), "")
    check_nesting(events)
    check_no_pyust_frames(events)
    if status != 0:
        assert events[-2].name == "exception"
        assert events[-1].name == "return"


def test_uncaught_exception_traceback_shows_script_frames(session: Session, tmp_path: Path) -> None:
    script = write_script(tmp_path, "boom.py", "def inner():\n    1 / 0\ninner()\n")
    proc, events = run_traced(session, script)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):\n")
    assert f'File "{script}", line 3, in <module>' in proc.stderr
    assert f'File "{script}", line 2, in inner' in proc.stderr
    assert proc.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    exc = [(e["exc_type"], e["co_qualname"]) for e in events if e.name == "exception"]
    assert exc == [("ZeroDivisionError", "inner"), ("ZeroDivisionError", "<module>")]


def test_module_mode(session: Session, tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import sys\ndef go():\n    print('pkg', sys.argv[1:])\ngo()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "-m", "mypkg", "x"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "pkg ['x']"
    events = session.events_of(proc.pid)
    calls = [(e["co_qualname"], e["module"]) for e in events if e.name == "call"]
    assert calls[0] == ("<module>", "__main__")
    assert ("go", "__main__") in calls
    check_nesting(events)


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["missing.py"], "cannot open script 'missing.py': No such file or directory"),
        (["-m", "no_such_module_xyz"], "cannot run module 'no_such_module_xyz': No module named"),
        (["-m"], "-m needs a module name"),
        (["--bogus"], "unknown option: --bogus (see pyust --help)"),
        ([], "no script given (usage: pyust [-m module | script.py] [args...])"),
        (["view"], "usage: pyust view DIR"),
        (["view", "/no/such/trace"], "/no/such/trace is not a trace folder"),
        (["record", "missing.py"], "cannot open script 'missing.py': no such file"),
        (["record", "-o"], "--output needs a folder"),
        (["record", "--nope", "x.py"], "unknown option for record: --nope"),
        (
            ["record", "--max-size", "lots", "x.py"],
            "not a size: 'lots' (e.g. 500M, 2G; 0: no limit)",
        ),
        (["record", "--max-size"], "--max-size needs a size (e.g. 500M, 2G; 0: no limit)"),
        (["record", "--max-size", "1K", "x.py"], "--max-size 1.0 KiB is too small for "),
        (
            ["record", "--max-size", "64K", "--subbuf-size", "1M", "x.py"],
            "less than --subbuf-size 1.0 MiB: raise one or lower the other",
        ),
        (["record", "--buffer", "8M", "x.py"], "--buffer needs --flight-recorder"),
        (
            # Each full batch (one event) was discarded, the report said 0.
            ["record", "--mode", "fast", "--subbuf-size", "4K", "x.py"],
            "--mode fast needs sub-buffers of at least 8.0 KiB (a batch of records is one "
            "event of up to 4.2 KiB): --subbuf-size makes them 4.0 KiB",
        ),
        (
            ["record", "--snapshot-on", "ValueError", "x.py"],
            "--snapshot-on needs --flight-recorder",
        ),
        (
            ["record", "--flight-recorder", "--max-size", "1G", "x.py"],
            "--max-size is for traces written as they run; a flight recorder's size is --buffer",
        ),
        (
            ["record", "--flight-recorder", "--buffer", "1K", "x.py"],
            "--buffer 1.0 KiB is too small",
        ),
        (
            ["record", "--flight-recorder", "--buffer", "100T", "x.py"],
            "--buffer 102400.0 GiB does not fit in /dev/shm",
        ),
        (
            ["record", "--flight-recorder", "--snapshot-on", 'Value"Error', "x.py"],
            "--snapshot-on needs an exception type name (e.g. ValueError), not 'Value\"Error'",
        ),
        (
            ["record", "--flight-recorder", "--snapshot-on"],
            "--snapshot-on needs an exception type (e.g. ValueError)",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, args: list[str], said: str) -> None:
    # x.py exists: each case fails on its own option, not on a missing script.
    (tmp_path / "x.py").write_text("pass\n")
    proc = run_python("-m", "pyust", *args, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, ""), proc
    (line,) = proc.stderr.splitlines()
    assert line.startswith("pyust: ") and said in line, line


def test_record_without_lttng_tools(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))
    proc = run_python("-m", "pyust", "record", str(SCENARIOS / "foo.py"), env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "pyust: `record` needs the lttng command: install lttng-tools (apt-get install lttng-tools)"
    )


def test_unreadable_trace_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_python("-m", "pyust", "view", str(empty))
    assert proc.returncode == 2
    assert proc.stderr == f"pyust: {empty}: no CTF trace there (no metadata file)\n"
    # A folder that holds something babeltrace2 cannot read.
    (empty / "metadata").write_text("/* CTF 1.8 */ not TSDL\n")
    proc = run_python("-m", "pyust", "view", str(empty))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"pyust: babeltrace2 cannot read {empty}")
    assert len(proc.stderr.splitlines()) == 1


def test_record_refuses_an_empty_output_name(tmp_path: Path) -> None:
    """`-o ""` is no folder (it used to mean the default one)."""
    proc = run_python("-m", "pyust", "record", "-o", "", str(SCENARIOS / "foo.py"), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "pyust: --output needs a folder (an empty name names none)\n"
    assert list(tmp_path.iterdir()) == []


def test_record_of_a_missing_module_writes_no_trace(tmp_path: Path) -> None:
    """A module that is not there: one line, before any session or folder
    (it used to say "trace written to" a folder without a trace)."""
    proc = run_python("-m", "pyust", "record", "-m", "no_such_module_xyz.sub", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "pyust: cannot run module 'no_such_module_xyz.sub': No module named 'no_such_module_xyz'\n"
    )
    assert list(tmp_path.iterdir()) == []
    assert pyust_sessions() == []


def test_view_into_a_closed_pipe_is_not_a_bad_trace(sessiond: None, tmp_path: Path) -> None:
    """`pyust view DIR | head -1`: the reader leaves early; view stops
    without calling the trace unreadable."""
    script = write_script(
        tmp_path, "many.py", "def f(n):\n    return n if n < 2 else f(n - 1) + f(n - 2)\nf(17)\n"
    )
    out_dir = tmp_path / "t"
    proc = run_python("-m", "pyust", "record", "-o", str(out_dir), str(script))
    assert proc.returncode == 0, proc.stderr
    view = subprocess.Popen(
        [sys.executable, "-m", "pyust", "view", str(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert view.stdout is not None and view.stderr is not None
    first = view.stdout.readline()
    view.stdout.close()
    status = view.wait(timeout=60)
    assert "python:call" in first
    assert view.stderr.read() == ""
    assert status == 1


def test_console_script_and_help() -> None:
    exe = Path(sys.executable).parent / "pyust"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: pyust")
    proc = run_python("-m", "pyust", "--version")
    assert proc.stdout.startswith("pyust ")


# --- pyust record ------------------------------------------------------------


def test_record_view_foo(sessiond: None, tmp_path: Path) -> None:
    out_dir = tmp_path / "foo-trace"
    proc = run_python(
        "-m", "pyust", "record", "-o", str(out_dir), "--view", str(SCENARIOS / "foo.py")
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith(f"pyust: trace written to {out_dir}")
    printed = parse_trace(proc.stdout)
    assert [e.short() for e in printed] == [
        "call <module>",
        "call foo",
        "call bar",
        "call baz",
        "return",
        "return",
        "return",
        "return",
    ]
    # vpid/vtid/procname contexts are there, and the folder holds the trace.
    assert "procname = " in proc.stdout
    assert all(e.vpid > 0 and e.vtid > 0 for e in printed)
    assert babeltrace(out_dir) == proc.stdout
    view = run_python("-m", "pyust", "view", str(out_dir))
    assert view.returncode == 0
    assert view.stdout == proc.stdout
    assert pyust_sessions() == []


# --- bounded recording ---------------------------------------------------------

PACED = """
import os
import time

# One CPU, so one stream: --max-size drops the oldest files of each
# stream, and a stream that saw "first" and little else would keep it.
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

def first():
    pass

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def last():
    pass

first()
for _ in range(40):
    fib(14)  # ~2 000 calls: ~100 KiB of trace, then a pause for the consumer
    time.sleep(0.02)
last()
"""


def _data_files(out_dir: Path) -> list[Path]:
    """The trace's stream files (not the indexes, not the metadata)."""
    return [
        p
        for p in out_dir.rglob("*")
        if p.is_file() and p.parent.name != "index" and p.name != "metadata"
    ]


def _cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return sum(
        int(b or a) - int(a) + 1 for a, _, b in (part.partition("-") for part in text.split(","))
    )


def test_record_max_size_keeps_the_newest_data(sessiond: None, tmp_path: Path) -> None:
    script = write_script(tmp_path, "paced.py", PACED)
    out_dir = tmp_path / "capped"
    cap = 256 << 10
    proc = run_python(
        "-m", "pyust", "record", "-o", str(out_dir), "--max-size", "256K", str(script)
    )
    assert proc.returncode == 0, proc.stderr
    # At most the cap, plus one sub-buffer per stream (a packet that did not
    # fit the current file starts the next one); the sub-buffer shrank to
    # a trace file's size: cap / cpus / 4.
    subbuf = cap // _cpus() // 4
    data = sum(p.stat().st_size for p in _data_files(out_dir))
    assert 0 < data <= cap + _cpus() * subbuf, data
    dropped = [line for line in proc.stderr.splitlines() if "--max-size" in line]
    assert len(dropped) == 1, proc.stderr
    assert "the oldest" in dropped[0] and "were dropped" in dropped[0], dropped
    # The newest events are kept, the oldest are gone.
    names = {str(e["co_name"]) for e in parse_trace(babeltrace(out_dir)) if e.name == "call"}
    assert "last" in names and "fib" in names
    assert "first" not in names
    report = run_python("-m", "pyust", "report", str(out_dir))
    assert report.returncode == 0, report.stderr
    assert "__main__.fib" in report.stdout
    assert pyust_sessions() == []


def test_record_max_size_0_keeps_everything(sessiond: None, tmp_path: Path) -> None:
    script = write_script(tmp_path, "paced.py", PACED)
    out_dir = tmp_path / "whole"
    proc = run_python("-m", "pyust", "record", "-o", str(out_dir), "--max-size", "0", str(script))
    assert proc.returncode == 0, proc.stderr
    assert "--max-size" not in proc.stderr
    names = [str(e["co_name"]) for e in parse_trace(babeltrace(out_dir)) if e.name == "call"]
    assert names.count("first") == 1 and names.count("last") == 1
    assert sum(p.stat().st_size for p in _data_files(out_dir)) > 256 << 10


def test_record_default_cap_is_2g(sessiond: None, tmp_path: Path) -> None:
    # The program reads its own session's channel (LTTng's machine
    # interface: the human text differs across LTTng versions): 2 GiB over
    # the streams, four trace files each.
    script = write_script(
        tmp_path,
        "channel.py",
        textwrap.dedent(
            """
            import os, subprocess
            import xml.etree.ElementTree as ET

            def mi(*args):
                cmd = ["lttng", "--mi", "xml", *args]
                return ET.fromstring(subprocess.run(cmd, capture_output=True, text=True).stdout)

            def tag(e):
                return e.tag.rsplit("}", 1)[-1]

            prefix = f"pyust-{os.getppid()}-"
            mine = [e.text for e in mi("list").iter() if tag(e) == "name"
                    and (e.text or "").startswith(prefix)]
            attrs = {tag(e): e.text for e in mi("list", mine[0]).iter()}
            print(attrs["tracefile_count"], attrs["tracefile_size"])
            """
        ),
    )
    proc = run_python("-m", "pyust", "record", "-o", str(tmp_path / "t"), str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4", str((2 << 30) // _cpus() // 4)]
    help_text = run_python("-m", "pyust", "--help").stdout
    assert "--max-size SIZE" in help_text and "(default: 2G;" in help_text


def test_record_output_folder_removed_mid_run(sessiond: None, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "vanish.py",
        textwrap.dedent(
            """
            import shutil, sys, time
            def work():
                return sum(range(100))
            work()
            time.sleep(0.3)
            shutil.rmtree(sys.argv[1])
            for _ in range(1000):
                work()
            print("finished")
            """
        ),
    )
    out_dir = tmp_path / "gone"
    proc = run_python("-m", "pyust", "record", "-o", str(out_dir), str(script), str(out_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "finished\n"
    assert proc.stderr.splitlines() == [
        f"pyust: no trace: the folder {out_dir} was removed during the run"
    ]
    assert pyust_sessions() == []


def test_record_stops_before_the_disk_is_full(sessiond: None, tmp_path: Path) -> None:
    # A 128 MiB file system of its own (tmpfs: root with CAP_SYS_ADMIN) for
    # a program that would write about 250 MB of trace, fast.
    disk = tmp_path / "small"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mount.stderr.strip()}")
    try:
        script = write_script(
            tmp_path,
            "busy.py",
            "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
            "fib(30)\nprint('finished')\n",
        )
        out_dir = disk / "t"
        proc = run_python(
            "-m", "pyust", "record", "-o", str(out_dir), "--max-size", "0",
            "--subbuf-size", "256k", "--num-subbuf", "4", str(script),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "finished\n"  # the program ran to its end
        stopped = [line for line in proc.stderr.splitlines() if "almost full" in line]
        assert len(stopped) == 1, proc.stderr
        assert stopped[0].startswith(f"pyust: the disk holding {out_dir} was almost full (")
        assert stopped[0].endswith("; the program ran on untraced")
        assert os.statvfs(disk).f_bavail > 0, proc.stderr
        # What was recorded is a whole trace, babeltrace2 and report read it
        # (small ring buffers on a busy machine may have discarded some).
        view = subprocess.run(["babeltrace2", str(out_dir)], stdout=subprocess.DEVNULL)
        assert view.returncode == 0
        report = run_python("-m", "pyust", "report", str(out_dir), "--limit", "1")
        assert report.returncode == 0, report.stderr
        (row,) = [line.split() for line in report.stdout.splitlines() if "__main__.fib" in line]
        assert int(row[0]) > 10_000
        assert pyust_sessions() == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_record_default_folder(sessiond: None, tmp_path: Path) -> None:
    proc = run_python("-m", "pyust", "record", str(SCENARIOS / "foo.py"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "pyust-traces").iterdir()
    assert folder.name.startswith("foo-")
    assert str(folder) in proc.stderr
    assert len(parse_trace(babeltrace(folder))) == 8


def test_record_failing_script_keeps_status_and_trace(sessiond: None, tmp_path: Path) -> None:
    script = write_script(tmp_path, "fails.py", "def f():\n    raise SystemExit(7)\nf()\n")
    out_dir = tmp_path / "t"
    proc = run_python("-m", "pyust", "record", "-o", str(out_dir), str(script))
    assert proc.returncode == 7
    events = parse_trace(babeltrace(out_dir))
    check_nesting(events)
    assert [e.short() for e in events][-3:] == ["exception SystemExit", "return", "return"][
        -3:
    ] or [e.short() for e in events][-4:] == [
        "exception SystemExit",
        "return",
        "exception SystemExit",
        "return",
    ]
    assert pyust_sessions() == []


def test_record_interrupted_leaves_complete_trace(sessiond: None, tmp_path: Path) -> None:
    script = write_script(tmp_path, "sleeper.py", SLEEPER)
    out_dir = tmp_path / "t"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyust", "record", "-o", str(out_dir), str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "KeyboardInterrupt" in err
    events = parse_trace(babeltrace(out_dir))
    check_nesting(events)
    assert events[-1].name == "return"
    assert any(e.name == "exception" and e["exc_type"] == "KeyboardInterrupt" for e in events)
    assert pyust_sessions() == []


def test_record_script_named_like_a_subcommand(sessiond: None, tmp_path: Path) -> None:
    write_script(tmp_path, "record", "print('the script ran')\n")
    proc = run_python("-m", "pyust", "--", "record", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "the script ran"


def test_no_pyust_frame_under_record(sessiond: None, tmp_path: Path) -> None:
    out_dir = tmp_path / "t"
    proc = run_python("-m", "pyust", "record", "-o", str(out_dir), str(SCENARIOS / "thread.py"))
    assert proc.returncode == 0
    events = parse_trace(babeltrace(out_dir))
    check_no_pyust_frames(events)
    check_nesting(events)


def test_launcher_under_manual_session_runs_the_script_itself(session: Session) -> None:
    # Under a session made by hand, `python -m pyust foo.py` runs foo.py in
    # its own process, and every event of foo.py in the session (which
    # records every process) is that process's, each once.
    proc, events = run_traced(session, SCENARIOS / "foo.py")
    assert proc.returncode == 0
    foo = str(SCENARIOS / "foo.py")
    everyone = [e for e in session.stop() if e.name == "call" and e["co_filename"] == foo]
    assert [e.short() for e in everyone] == ["call <module>", "call foo", "call bar", "call baz"]
    assert [e for e in events if e.name == "call" and e["co_filename"] == foo] == everyone


def test_builtins_is_the_module_as_under_python(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "b.py",
        "import builtins\nassert __builtins__ is builtins, type(__builtins__)\n"
        "print(__builtins__.len('abc'))\n",
    )
    plain = run_python(str(script))
    assert plain.returncode == 0, plain.stderr
    proc, _ = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == plain.stdout == "3\n"

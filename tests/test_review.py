"""What a careful review of the hot path found: leaks, the fork window,
failures that must not leave tracing half on, and qualified names before
3.11 read off the code itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import (
    MEMORY,
    Session,
    check_nesting,
    run_plain,
    run_python,
    run_traced,
    write_script,
)


def test_classes_and_functions_made_at_run_time_are_freed(session: Session, tmp_path: Path) -> None:
    # Every class gets a C call of its own (`dict.get` on an instance):
    # pyust's C-function names must not keep the classes alive.
    script = write_script(
        tmp_path,
        "maker.py",
        MEMORY
        + textwrap.dedent(
            """
            import gc

            def make(i):
                C = type(f"C{i}", (dict,), {})
                C().get("k")
                ns = {}
                exec(f"def g{i}():\\n    return {i}", ns)
                ns[f"g{i}"]()

            for i in range(2000):
                make(i)
            gc.collect()
            classes, before = len(dict.__subclasses__()), memory_kib()
            for i in range(10000):
                make(i)
            gc.collect()
            print(len(dict.__subclasses__()) - classes, memory_kib() - before)
            """
        ),
    )
    plain = run_python(str(script))
    assert plain.returncode == 0, plain.stderr
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    more_classes, growth_kib = map(int, proc.stdout.split())
    assert more_classes == 0
    untraced = plain.stdout.split()[1]
    assert growth_kib < 2048, f"memory grew by {growth_kib} KiB (untraced: {untraced})"
    c_calls = [e["co_qualname"] for e in events if e.name == "c_call" and e["co_name"] == "get"]
    made = [q for q in c_calls if str(q).startswith("__main__.C")]
    assert len(made) == 12000
    assert set(made) == {f"__main__.C{i}.get" for i in range(10000)}


def test_names_without_a_co_extra_slot(session: Session, tmp_path: Path) -> None:
    # Another tool took every co_extra slot before pyust was imported:
    # names are made per event and freed with it.
    script = write_script(
        tmp_path,
        "noslot.py",
        MEMORY
        + textwrap.dedent(
            """
            import ctypes, sys
            name = ("PyUnstable_Eval_RequestCodeExtraIndex" if sys.version_info >= (3, 12)
                    else "_PyEval_RequestCodeExtraIndex")
            request = getattr(ctypes.pythonapi, name)
            request.restype = ctypes.c_ssize_t
            request.argtypes = [ctypes.c_void_p]
            while request(None) >= 0:
                pass
            import pyust

            def f():
                return 1

            pyust.enable()
            for _ in range(20000):
                f()
            before = memory_kib()
            for _ in range(200000):
                f()
            print(memory_kib() - before)
            """
        ),
    )
    proc, _, events = run_plain(session, script, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 1024, f"memory grew by {proc.stdout.strip()} KiB"
    f_calls = [e for e in events if e.name == "call" and e["co_qualname"] == "f"]
    assert f_calls and f_calls[0]["module"] == "__main__"


FORKS = """\
import logging, os, random, sys, threading, time

logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO)
log = logging.getLogger("load")
stop = False


def worker():
    while not stop:
        log.info("tick %f", random.random())
        time.sleep(0.002)


threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
children = []
for _ in range(200):
    pid = os.fork()
    if pid == 0:
        def child_work():
            return sum(range(5))
        child_work()
        os._exit(0)
    children.append(pid)
    os.waitpid(pid, 0)
stop = True
for t in threads:
    t.join()
print(" ".join(map(str, children)))
"""


def test_fork_under_load(session: Session, tmp_path: Path) -> None:
    # Threads log and call while the main thread forks: the at-fork hooks
    # of logging, threading and random run in the fork window, where pyust
    # emits nothing; each child traces under its own vpid, from a clean
    # slate (no returns of the parent's frames).
    script = write_script(tmp_path, "forks.py", FORKS)
    proc = run_python("-m", "pyust", str(script), timeout=240)
    events = session.stop()
    assert proc.returncode == 0, proc.stderr
    children = {int(pid) for pid in proc.stdout.split()}
    assert len(children) == 200
    by_pid: dict[int, list] = {}
    for e in events:
        by_pid.setdefault(e.vpid, []).append(e)
    traced_children = children & by_pid.keys()
    assert len(traced_children) >= 150, f"only {len(traced_children)} children traced"
    for pid in traced_children:
        mine = by_pid[pid]
        assert {e.vtid for e in mine} == {pid}, "a child's event carries another thread id"
        check_nesting(mine, complete=False)  # ends in os._exit
        # The at-fork hooks registered after pyust's run traced, in the child.
        assert "child_work" in [e["co_qualname"] for e in mine if e.name == "call"]
    parent = [e for pid, evs in by_pid.items() if pid not in children for e in evs]
    assert not any(e.name == "call" and e["co_qualname"] == "child_work" for e in parent)


def test_enable_that_cannot_arm_leaves_tracing_off(session: Session, tmp_path: Path) -> None:
    if sys.version_info < (3, 12):
        pytest.skip("arming can only be refused by sys.monitoring (3.12+)")
    script = write_script(
        tmp_path,
        "busy.py",
        "import sys, pyust\n"
        "sys.monitoring.use_tool_id(3, 'other')\n"
        "sys.monitoring.use_tool_id(4, 'another')\n"
        "try:\n"
        "    pyust.enable()\n"
        "except RuntimeError as exc:\n"
        "    print('refused:', exc)\n"
        "print(pyust.is_enabled())\n",
    )
    proc, _, _ = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"
    assert proc.stdout.startswith("refused:")


def test_tracing_blocks_nested_and_reused(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "blocks.py",
        "import gc, weakref, pyust\n"
        "t = pyust.tracing()\n"
        "with t:\n"
        "    with t:\n"
        "        pass\n"
        "    assert pyust.is_enabled()\n"
        "print(pyust.is_enabled())\n"
        "with pyust.tracing():\n"
        "    with pyust.tracing():\n"
        "        pass\n"
        "print(pyust.is_enabled())\n"
        # A decorated function in a reference cycle is collected.
        "def f():\n"
        "    return f\n"
        "traced = pyust.tracing()(f)\n"
        "f.me = traced\n"
        "assert traced() is f and traced.__wrapped__ is f and traced.__name__ == 'f'\n"
        "ref = weakref.ref(traced)\n"
        "del f, traced\n"
        "gc.collect()\n"
        "print(ref() is None)\n",
    )
    proc, _, _ = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "True"]


def test_module_name_replaced_while_running(session: Session, tmp_path: Path) -> None:
    # `__name__` of a module changes under a running function (and is a str
    # subclass whose conversion runs code): each call says the name of the
    # moment.
    script = write_script(
        tmp_path,
        "rename.py",
        "class Name(str):\n"
        "    def __str__(self):\n"
        "        return str.__str__(self)\n"
        "def f():\n"
        "    pass\n"
        "for i in range(3):\n"
        "    globals()['__name__'] = Name(f'm{i}')\n"
        "    f()\n",
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    modules = [e["module"] for e in events if e.name == "call" and e["co_qualname"] == "f"]
    assert modules == ["m0", "m1", "m2"]


# --- qualified names before 3.11 -------------------------------------------------

STDLIB_WORK = """\
import asyncio
import email
import importlib
import json


async def coro(n):
    await asyncio.sleep(0)
    return [i for i in range(n)]


json.loads(json.dumps({"a": [1, 2, {"b": None}]}))
importlib.import_module("email.mime.text")
msg = email.message_from_string("Subject: hi\\n\\nbody\\n")
msg.get("Subject")
asyncio.run(coro(3))
"""

# Run by CPython 3.11: co_qualname of every code object in each file.
ORACLE = """\
import json, sys, warnings
warnings.simplefilter("ignore")
out = {}
for path in json.load(sys.stdin):
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    names = {}
    todo = [code]
    while todo:
        c = todo.pop()
        names.setdefault(f"{c.co_firstlineno}:{c.co_name}", []).append(c.co_qualname)
        todo.extend(k for k in c.co_consts if hasattr(k, "co_qualname"))
    out[path] = names
json.dump(out, sys.stdout)
"""


def _python311() -> str | None:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob("3.11.*/bin/python3.11")) if root.is_dir() else []
    return str(found[-1]) if found else shutil.which("python3.11")


def test_qualified_names_are_the_compilers(session: Session, tmp_path: Path) -> None:
    if sys.version_info >= (3, 11):
        pytest.skip("3.11+ code objects carry co_qualname")
    oracle_python = _python311()
    if oracle_python is None:
        pytest.skip("no CPython 3.11 here to say what its compiler names")
    script = write_script(tmp_path, "stdlib_work.py", STDLIB_WORK)
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    stdlib = Path(sysconfig.get_paths()["stdlib"])

    def source(filename: str) -> Path | None:
        if filename.startswith("<frozen ") and filename.endswith(">"):
            return stdlib / (filename[len("<frozen ") : -1].replace(".", "/") + ".py")
        return Path(filename) if Path(filename).is_file() else None

    calls = {
        (str(e["co_filename"]), int(e["co_firstlineno"]), str(e["co_name"])): str(e["co_qualname"])
        for e in events
        if e.name == "call"
    }
    files = sorted({str(source(f)) for f, _, _ in calls if source(f) is not None})
    assert any(f.endswith("_bootstrap_external.py") for f in files), files
    oracle = subprocess.run(
        [oracle_python, "-c", ORACLE],
        input=json.dumps(files),
        capture_output=True,
        text=True,
        check=True,
    )
    truth = json.loads(oracle.stdout)
    checked = 0
    wrong = []
    for (filename, line, name), qualname in sorted(calls.items()):
        path = source(filename)
        if path is None:
            continue
        if name == "<module>":  # its first line differs across versions
            checked += qualname == "<module>"
            if qualname != "<module>":
                wrong.append(f"{filename}: module code named {qualname!r}")
            continue
        expected = truth[str(path)].get(f"{line}:{name}")
        assert expected, f"{filename}:{line} {name}: not in 3.11's compilation"
        checked += 1
        if qualname not in expected:
            wrong.append(f"{filename}:{line} {qualname!r}, 3.11 says {expected}")
    assert not wrong, "\n".join(wrong)
    assert checked > 200, checked
    assert calls[next(k for k in calls if k[2] == "_check_name_wrapper")] == (
        "_check_name.<locals>._check_name_wrapper"
    )

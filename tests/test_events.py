"""The event schema (SPEC section 1) on real traces of the scenarios."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import (
    SCENARIOS,
    Session,
    check_nesting,
    check_no_pyust_frames,
    run_plain,
    run_traced,
    write_script,
)


def own(events, script: Path):
    """The calls of code in `script` (not the standard library's)."""
    return [e for e in events if e.name == "call" and e["co_filename"] == str(script)]


def test_foo_is_exactly_the_prototype_sequence(session: Session) -> None:
    script = SCENARIOS / "foo.py"
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert [e.name for e in events] == ["call"] * 4 + ["return"] * 4
    expected = [("<module>", 1), ("foo", 7), ("bar", 4), ("baz", 1)]
    for ev, (name, line) in zip(events[:4], expected):
        assert ev.fields == {
            "co_name": name,
            "co_qualname": name,
            "module": "__main__",
            "co_filename": str(script),
            "co_firstlineno": line,
        }
    for ev in events[4:]:
        assert ev.fields == {}
    assert len({e.vtid for e in events}) == 1


def test_c_calls_are_owner_qualified(session: Session) -> None:
    script = SCENARIOS / "builtins.py"
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    c_calls = [(e["co_name"], e["co_qualname"]) for e in events if e.name == "c_call"]
    assert c_calls == [
        ("len", "builtins.len"),
        ("append", "list.append"),
        ("sorted", "builtins.sorted"),
        ("abs", "builtins.abs"),
        ("abs", "builtins.abs"),
        ("abs", "builtins.abs"),
        ("abs", "builtins.abs"),
        ("sleep", "time.sleep"),
    ] or c_calls == [
        # `key=abs` is called by sorted() from C: profilers see it or not
        # depending on the interpreter version.
        ("len", "builtins.len"),
        ("append", "list.append"),
        ("sorted", "builtins.sorted"),
        ("sleep", "time.sleep"),
    ]


def test_methods_classes_and_locals_have_qualified_names(session: Session) -> None:
    script = SCENARIOS / "method.py"
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    assert [e["co_qualname"] for e in own(events, script)] == [
        "<module>",
        "Greeter",
        "Greeter.__init__",
        "Greeter.greet",
        "Greeter.decorate",
    ]
    assert ("upper", "str.upper") in [
        (e["co_name"], e["co_qualname"]) for e in events if e.name == "c_call"
    ]


def test_generators_resume_as_calls_and_suspend_as_returns(session: Session) -> None:
    script = SCENARIOS / "generator.py"
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    names = [e["co_qualname"] for e in own(events, script)]
    assert names[:3] == ["<module>", "outer", "outer.<locals>.inner"]
    # Two yields and the final return: three resumptions of one frame.
    assert names.count("countdown") == 3


def test_exceptions_name_their_type_frame_and_line(session: Session) -> None:
    script = SCENARIOS / "exception.py"
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    exceptions = [
        (e["exc_type"], e["co_qualname"], e["lineno"]) for e in events if e.name == "exception"
    ]
    assert exceptions == [
        ("ValueError", "parse", 2),
        ("ValueError", "check", 7),
        ("KeyError", "fail", 13),
        ("KeyError", "<module>", 19),
    ]
    # A frame left by an exception: its exception event, then its return.
    shorts = [e.short() for e in events]
    i = shorts.index("call parse")
    assert shorts[i : i + 5] == [
        "call parse",
        "c_call builtins.int",
        "c_return",
        "exception ValueError",
        "return",
    ] or shorts[i : i + 3] == ["call parse", "exception ValueError", "return"]


def test_exception_types_are_module_qualified(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "qualified.py",
        "import json\n"
        "class Custom(Exception):\n    pass\n"
        "def load():\n    return json.loads('{')\n"
        "def custom():\n    raise Custom()\n"
        "for f in (load, custom):\n"
        "    try:\n        f()\n"
        "    except Exception:\n        pass\n",
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    raised = {(e["exc_type"], e["co_qualname"]) for e in events if e.name == "exception"}
    assert ("json.decoder.JSONDecodeError", "load") in raised
    assert ("__main__.Custom", "custom") in raised


def test_threads_are_traced_and_nest_per_thread(session: Session) -> None:
    script = SCENARIOS / "thread.py"
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    check_no_pyust_frames(events)
    threads = {e.vtid for e in events}
    assert len(threads) == 2
    worker = [e for e in events if e.name == "call" and e["co_qualname"] == "worker"]
    assert len(worker) == 1
    assert worker[0].vtid != events[0].vtid
    assert worker[0]["module"] == "__main__"


def test_many_threads_stay_balanced(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "many.py",
        "import threading\n"
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "def work():\n    for _ in range(20):\n        fib(8)\n"
        "        try:\n            {}['x']\n        except KeyError:\n            pass\n"
        "ts = [threading.Thread(target=work) for _ in range(8)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n",
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    assert len({e.vtid for e in events}) == 9
    fib_calls = [e for e in events if e.name == "call" and e["co_qualname"] == "fib"]
    assert len(fib_calls) == 8 * 20 * 67  # fib(8) makes 67 calls


def test_lone_surrogates_are_replaced(session: Session, tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "surrogate.py",
        "import sys\n"
        "def f():\n    return 1\n"
        "if sys.version_info >= (3, 11):\n"
        "    f.__code__ = f.__code__.replace(co_name='bad\\udcff', co_qualname='Q.bad\\udcff')\n"
        "else:  # no co_qualname: a code object made at run time has its name\n"
        "    f.__code__ = f.__code__.replace(co_name='bad\\udcff')\n"
        "assert f() == 1\n",
    )
    proc, events = run_traced(session, script)
    assert proc.returncode == 0, proc.stderr
    bad = [e for e in events if e.name == "call" and str(e["co_name"]).startswith("bad")]
    assert len(bad) == 1
    assert bad[0]["co_name"] == "bad\ufffd"
    expected = "Q.bad\ufffd" if sys.version_info >= (3, 11) else "bad\ufffd"
    assert bad[0]["co_qualname"] == expected


def test_filter_expressions_select_by_field(sessiond: None, tmp_path: Path) -> None:
    from conftest import lttng, make_session

    s = make_session(
        tmp_path, "python:call", filter_expr='module == "__main__" && co_name != "bar"'
    )
    try:
        proc, events = run_traced(s, SCENARIOS / "foo.py")
    finally:
        lttng("destroy", s.name, check=False)
    assert proc.returncode == 0
    assert [e["co_name"] for e in events] == ["<module>", "foo", "baz"]


def test_code_first_run_while_the_interpreter_finalizes_stays_paired(
    session: Session, tmp_path: Path
) -> None:
    # A `__del__` that runs while modules are torn down, with code never run
    # before: pyust cannot name it then (it cannot attach), but every
    # return it emits has its call, named "?".
    script = write_script(
        tmp_path,
        "finalize.py",
        "import pyust\n"
        "\n"
        "class D:\n"
        "    def __del__(self):\n"
        "        def inner():\n"
        "            return len('x')\n"
        "        inner()\n"
        "\n"
        "d = D()\n"
        "pyust.enable()\n",
    )
    proc, _, events = run_plain(session, script)
    assert proc.returncode == 0, proc.stderr
    check_nesting(events)
    assert "c_call len" in [e.short() for e in events[-4:]], [e.short() for e in events]

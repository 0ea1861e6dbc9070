"""pyust's bootstrap for the Python processes a recorded program starts.

`pyust record` puts this folder first on the program's PYTHONPATH, and its
control socket in PYUST_RECORD: every Python interpreter the program
starts -- multiprocessing's spawn and forkserver processes, `subprocess`
and `os.exec*` of a Python, children of children -- imports this module
at startup, joins the recording (record tracks its pid) and turns tracing
on before the interpreter runs its main module. Processes started outside
the program lack the variable, and stay out.

The folder leaves sys.path at once and the interpreter's own
sitecustomize, if any, runs next, as it would have. An interpreter without
pyust (another Python version, another venv) is named in one line at the
end of `record`. The syntax is Python 2's too: a python2 child gets no
error at startup.
"""

import os
import sys


def _chain():
    """Leave sys.path; run the next sitecustomize on it, if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    this = sys.modules.pop("sitecustomize")
    try:
        import sitecustomize  # type: ignore[import-not-found]  # noqa: F401 (the interpreter's own)
    except ImportError as exc:
        # None: the import system still wants this module where it was.
        sys.modules["sitecustomize"] = this
        if getattr(exc, "name", "sitecustomize") != "sitecustomize":
            raise


def _main_module():
    """The module of `python -m MODULE`, else None."""
    argv = getattr(sys, "orig_argv", None)
    if argv is None:  # before 3.10
        try:
            with open("/proc/self/cmdline", "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0")]
        except (IOError, OSError):
            return None
    for i, arg in enumerate(argv[1:-1], 1):
        if arg == "-m":
            return argv[i + 1]
        if arg.startswith("-m"):
            return arg[2:]
        if arg == "-c" or not arg.startswith("-"):
            return None
    return None


def _untraced(control, reason):
    """Say to `record` (a line in its folder) why this process is not traced."""
    line = "%s\t%s\n" % (sys.executable or "python", reason)
    try:
        fd = os.open(os.path.join(os.path.dirname(control), "untraced"), os.O_WRONLY | os.O_APPEND)
    except (IOError, OSError):
        return
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def _join(control):
    if not os.path.exists(control):
        return  # record has ended: this process outlived the program
    if _main_module() in ("pyust", "pyust.cli"):
        return  # a pyust launcher: it joins by itself, without its own frames
    try:
        import pyust
    except ImportError:
        _untraced(control, "has no pyust")
        return
    except Exception as exc:  # a broken install: the program runs on
        _untraced(control, "cannot import pyust (%s)" % exc)
        return
    try:
        pyust._pyust._join_record(control)
        pyust.enable()
    except Exception as exc:
        _untraced(control, "pyust could not trace it (%s)" % exc)


_chain()
if os.environ.get("PYUST_RECORD"):
    _join(os.environ["PYUST_RECORD"])

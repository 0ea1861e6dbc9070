"""The docs cannot rot: every `pyust` and `cargo xtask` command shown in
README.md and docs/*.md names options that exist, and the README's tour
runs as written (record, fast record, view, report) on a real session."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT, run_python

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SUBCOMMANDS = ("record", "view", "report", "top", "attach")


def code_lines(path: Path) -> list[str]:
    """The lines of the fenced code blocks of a Markdown file, without a
    leading `$ ` prompt or a trailing `# comment`."""
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            line = (line[2:] if line.startswith("$ ") else line).strip()
            lines.append(re.sub(r"\s+#\s.*$", "", line))
    return lines


def commands(prefix: str) -> list[tuple[str, str]]:
    """(file, command) for every code line that runs `prefix`."""
    found = []
    for doc in DOCS:
        for line in code_lines(doc):
            if line.startswith(prefix + " ") or line == prefix:
                found.append((doc.name, line))
    return found


def flags(command: str) -> list[str]:
    """The options a command line names (`--x=1` as `--x`)."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote in prose-like lines
        words = command.split()
    out = []
    for word in words:
        # pyust's own options end at `--` and at the program (`-m module`,
        # a script): what follows is the program's.
        if word in ("--", "-m") or word.endswith(".py"):
            break
        if word.startswith("-") and word != "-":
            out.append(word.partition("=")[0])
    return out


def test_the_docs_show_pyust_commands() -> None:
    """The check below has something to check (a docs move that lost the
    code blocks would otherwise pass it)."""
    shown = commands("pyust")
    assert {c.split()[1] for _, c in shown if len(c.split()) > 1} >= set(SUBCOMMANDS)


@pytest.mark.parametrize(("doc", "command"), commands("pyust"))
def test_pyust_command_options_exist(doc: str, command: str) -> None:
    words = command.split()
    sub = words[1] if len(words) > 1 and words[1] in SUBCOMMANDS else None
    help_args = ["-m", "pyust", *([sub] if sub else []), "--help"]
    proc = run_python(*help_args)
    assert proc.returncode == 0, proc.stderr
    known = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", proc.stdout))
    for flag in flags(command):
        assert flag in known, f"{doc}: `{command}`: {flag} is not an option of pyust {sub or ''}"


def xtask_options() -> dict[str, set[str]]:
    """Each task of xtask/src/flags.rs (the xflags grammar) with its options."""
    tasks: dict[str, set[str]] = {}
    current = None
    for line in (ROOT / "xtask" / "src" / "flags.rs").read_text().splitlines():
        m = re.match(r"\s*cmd ([\w-]+) \{", line)
        if m and m.group(1) != "xtask":
            current = m.group(1)
            tasks[current] = set()
        elif current and not line.strip().startswith("///"):
            tasks[current].update(re.findall(r"(?<![\w-])(--[\w-]+)", line))
    return tasks


@pytest.mark.parametrize(("doc", "command"), commands("cargo xtask"))
def test_xtask_commands_exist(doc: str, command: str) -> None:
    tasks = xtask_options()
    words = command.split()
    assert len(words) > 2, f"{doc}: `{command}` names no task"
    task = words[2]
    assert task in tasks, f"{doc}: `{command}`: no task {task} (tasks: {sorted(tasks)})"
    for flag in flags(" ".join(words[3:])):
        assert flag in tasks[task] | {"--help", "-h"}, (
            f"{doc}: `{command}`: {flag} is not an option of cargo xtask {task}"
        )


def tour() -> list[str]:
    """The README's tour, in order (its first code block after `## A tour`)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## A tour", 1)[1].split("```", 2)[1]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def test_the_readme_tour_runs(sessiond: None, tmp_path: Path) -> None:
    """The tour's record, view and report lines, run as written on a small
    app.py (top needs a relay: tests/test_relay.py runs it)."""
    (tmp_path / "app.py").write_text(
        "def handle(n):\n    return sorted(str(i) for i in range(n))\n\n"
        "for n in range(50):\n    handle(n)\n"
    )
    # (top needs a relay, attach a running process: test_relay.py, test_attach.py)
    lines = [line for line in tour() if not line.startswith(("pyust top", "pyust attach"))]
    assert [line.split()[1] for line in lines] == ["record", "record", "view", "report"]
    outputs = []
    for line in lines:
        proc = run_python("-m", *shlex.split(line), cwd=tmp_path, timeout=180)
        assert proc.returncode == 0, f"`{line}`: {proc.stderr}"
        outputs.append(proc)
    assert (tmp_path / "trace" / "").is_dir()
    # The fast record wrote its own folder under pyust-traces/.
    assert len(list((tmp_path / "pyust-traces").iterdir())) == 1
    view, report = outputs[2].stdout, outputs[3].stdout
    assert view.count("python:call") >= 51 and 'co_name = "handle"' in view
    assert re.search(r"^\s+50\s.*__main__\.handle \(", report, re.M), report
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "t.pftrace").stat().st_size > 0

"""The subcommands' command lines, declared with argparse: their parsing
and their `--help` (which `pyust --help` puts together).

argparse's own errors are turned into pyust's rule for bad input: one line
on stderr and exit status 2 (`UsageError`), never argparse's usage block
and status 2 of its own.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from .common import UsageError, fail

# Where the option column ends and the help starts, as in `pyust --help`.
HELP_COLUMN = 29


class _Formatter(argparse.RawTextHelpFormatter):
    """Help text as written (its line breaks kept), options shown as
    `-o, --output DIR` rather than argparse's `-o DIR, --output DIR`."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, indent_increment=6, max_help_position=HELP_COLUMN, width=80)
        # The help column stays at HELP_COLUMN whatever the options' lengths.
        self._action_max_length = HELP_COLUMN

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        names = ", ".join(action.option_strings)
        if action.nargs == 0:
            return names
        return f"{names} {self._metavar_formatter(action, action.dest.upper())(1)[0]}"


class Parser(argparse.ArgumentParser):
    """One subcommand's options. `unknown` words the error for an option it
    does not know (`{}`: the option)."""

    def __init__(self, command: str, description: str, unknown: str, usage: str) -> None:
        super().__init__(
            prog=f"pyust {command}",
            usage=usage,
            description=description,
            add_help=False,
            allow_abbrev=False,
            formatter_class=_Formatter,
        )
        self.unknown = unknown
        self.add_argument("-h", "--help", action="store_true", help=argparse.SUPPRESS)

    def option(self, *names: str, what: str = "a value", **kwargs: Any) -> argparse.Action:
        """An option; `what` names its value in "--x needs WHAT"."""
        action = self.add_argument(*names, **kwargs)
        action.what = what  # type: ignore[attr-defined]
        return action

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """The options of `argv`; anything it does not know is bad input."""
        namespace, extras = self.parse_known_args(list(argv))
        for word in extras:
            if word.startswith("-") and word != "-":
                fail(self.unknown.format(word.partition("=")[0]))
        if extras:
            namespace.extras = extras
        return namespace

    def error(self, message: str) -> NoReturn:
        m = re.match(r"argument (\S+): (.*)", message)
        if m is None:
            raise UsageError(message)
        names, what = m.group(1).split("/"), m.group(2)
        name = max(names, key=len)
        if what.startswith("expected one argument"):
            action = self._option_string_actions.get(names[0])
            raise UsageError(f"{name} needs {getattr(action, 'what', 'a value')}")
        raise UsageError(f"{name}: {what}")

    def summary(self, synopsis: str) -> str:
        """This subcommand's part of `pyust --help`: `synopsis` and the
        description in two columns, then the options."""
        lines = (self.description or "").splitlines()
        out = [f"  {synopsis}".ljust(HELP_COLUMN) + (lines[0] if lines else "")]
        out += [" " * HELP_COLUMN + line for line in lines[1:]]
        formatter = self._get_formatter()
        formatter._indent()
        formatter.add_arguments([a for a in self._actions if a.help != argparse.SUPPRESS])
        options = formatter.format_help().rstrip("\n")
        return "\n".join(out + ([options] if options else []))

    def split_at_target(self, argv: Sequence[str]) -> tuple[list[str], list[str]]:
        """`record`'s own options, and the program with its arguments: the
        options end at the first word that is not one (a script, `-m`) or
        at `--`."""
        argv = list(argv)
        i = 0
        while i < len(argv):
            word = argv[i]
            if word == "--":
                return argv[:i], argv[i + 1 :]
            if not word.startswith("-") or word == "-" or word.startswith("-m"):
                return argv[:i], argv[i:]
            if word in ("-h", "--help"):
                return argv[: i + 1], []
            action = self._option_string_actions.get(word)
            i += 2 if action is not None and action.nargs != 0 else 1
        return argv, []

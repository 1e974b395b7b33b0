"""recsys: prepare rating data, train and tune recommenders, evaluate them, score top-K lists.

The `recsys` console script: one parser, one sub-command per module in recsys.commands. Each
command module exposes ``register(subparsers)`` which adds its parser and sets
``func=run``. User errors (`RecsysError`) end in one line on stderr and exit code 2; a
traceback is shown only with ``--debug``. So do errors of the place written to (a full disk, a
read-only or forbidden folder: see recsys.data.io.describe_os_error).

Every command takes ``--quiet`` and ``--debug`` the same way (before or after the command name);
both are added here, once, so no command can lack them. ``--quiet``: nothing on stdout (results
go only to the files the command writes) and no progress on stderr; warnings and errors stay.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from recsys import __version__
from recsys.errors import RecsysError

# Command modules, in the order `recsys --help` lists them. A module that does not exist yet is
# skipped, so commands can land one at a time.
COMMAND_MODULES = [
    "recsys.commands.quickstart",
    "recsys.commands.data",
    "recsys.commands.train",
    "recsys.commands.config",
    "recsys.commands.evaluate",
    "recsys.commands.recommend",
    "recsys.commands.predict",
    "recsys.commands.compare",
    "recsys.commands.ui",
    "recsys.commands.runs",
    "recsys.commands.completion",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recsys", description=__doc__.splitlines()[0] if __doc__ else None,
                     epilog="start with `recsys quickstart`, or `recsys COMMAND --help`")
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    _add_common(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    for command in sub.choices.values():
        _add_common(command, default=argparse.SUPPRESS)
    return parser


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    """--quiet and --debug. On a sub-command they default to SUPPRESS, so that the value given
    before the command name (``recsys --quiet train ...``) is not reset by the sub-parser."""
    have = {s for action in parser._actions for s in action.option_strings}
    if default is argparse.SUPPRESS:  # a command's own --quiet/--debug must not reset either
        for action in parser._actions:
            # On the action, not through set_defaults: a parser-level default is copied into
            # the namespace as the (truthy) SUPPRESS string itself.
            if {"--quiet", "--debug"} & set(action.option_strings):
                action.default = default
    if "--quiet" not in have:
        parser.add_argument("--quiet", action="store_true", default=default,
                            help="print nothing but warnings and errors (no progress, no "
                                 "summary; results still go to the files written)")
    if "--debug" not in have:
        parser.add_argument("--debug", action="store_true", default=default,
                            help="show tracebacks on errors")


def main(argv: Sequence[str] | None = None) -> int:
    # implicit asks for single-threaded BLAS (it parallelises itself); set before numpy loads it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("RECSYS_DEBUG") == "1"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        args.quiet = bool(getattr(args, "quiet", False))
        args.debug = debug
        # --quiet silences stdout here, for every command alike; each command also drops its
        # own progress and informational lines on stderr.
        with contextlib.ExitStack() as stack:
            if args.quiet:
                stack.enter_context(contextlib.redirect_stdout(
                    stack.enter_context(open(os.devnull, "w"))))
            return int(args.func(args) or 0)
    except RecsysError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A full disk, a read-only or forbidden place: the user's to fix, so one line naming the
        # file (every writer has removed its temporaries on the way out). Other OSErrors are bugs.
        from recsys.data.io import describe_os_error

        line = describe_os_error(exc)
        if line is None or debug:
            raise
        print(f"error: {line}", file=sys.stderr)
        return RecsysError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

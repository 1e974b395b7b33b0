"""Flags every command shares: --quiet and --debug, before or after the command name."""

from __future__ import annotations

import argparse
import json

import pytest

from recsys import __version__
from recsys.cli import _add_common, build_parser, main


def _commands() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_takes_quiet_and_debug(name):
    flags = {s for a in _commands()[name]._actions for s in a.option_strings}
    assert {"--quiet", "--debug"} <= flags


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"recsys {__version__}"


def test_debug_after_the_command_shows_the_traceback(tmp_path):
    # Without --debug the error is one line and exit 2; with it the exception propagates.
    assert main(["evaluate", str(tmp_path / "no-run"), "--data", str(tmp_path)]) == 2
    with pytest.raises(Exception, match="no-run"):
        main(["evaluate", str(tmp_path / "no-run"), "--data", str(tmp_path), "--debug"])


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_prints_nothing_but_writes_results(tmp_path, capsys, where):
    data, run = tmp_path / "d", tmp_path / "run"
    assert main(["prepare", "ml-latest-small", "--implicit-threshold", "4",
                 "--min-user-interactions", "5", "--out", str(data), "--quiet"]) == 0
    assert main(["train", "pop", "--data", str(data), "--out", str(run), "--no-track",
                 "--quiet"]) == 0
    capsys.readouterr()
    command = ["evaluate", str(run), "--data", str(data), "--metrics", "ndcg@10",
               "--json", str(tmp_path / "m.json")]
    argv = ["--quiet", *command] if where == "before" else [*command, "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    assert 0 < json.loads((tmp_path / "m.json").read_text())["ndcg@10"] < 1
    # The same command without --quiet prints its table.
    assert main(command) == 0
    assert "ndcg@10" in capsys.readouterr().out


def test_a_commands_own_quiet_flag_defaults_to_off():
    # A command that declares --quiet itself keeps it off unless given, before or after.
    parser = argparse.ArgumentParser()
    own = parser.add_subparsers().add_parser("x")
    own.add_argument("--quiet", action="store_true")
    _add_common(parser, default=False)
    _add_common(own, default=argparse.SUPPRESS)
    assert parser.parse_args(["x"]).quiet is False
    assert parser.parse_args(["--quiet", "x"]).quiet is True
    assert parser.parse_args(["x", "--quiet"]).quiet is True

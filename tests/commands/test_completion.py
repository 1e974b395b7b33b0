"""`recsys completion bash|zsh`: the script completes commands, each command's own flags and model
names, checked by running it in a real bash."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from recsys.cli import build_parser, main
from recsys.commands.completion import commands_and_flags

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def complete(script: str, words: list[str], cwd) -> list[str]:
    """COMPREPLY of the script for the command line ``words`` (the last one being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
               "_recsys_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=cwd,
                          check=True)
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def script() -> str:
    from recsys.commands.completion import script as make

    return make(build_parser())


def test_commands_flags_and_models_complete(script, tmp_path):
    assert complete(script, ["recsys", "tr"], tmp_path) == ["train"]
    assert complete(script, ["recsys", "train", "mult"], tmp_path) == ["multvae", "multdae"]
    assert complete(script, ["recsys", "train", "multdae", "--tune"], tmp_path) == [
        "--tune", "--tune-rule"]
    # Another command's flags are not offered.
    assert complete(script, ["recsys", "evaluate", "--tune"], tmp_path) == []
    (tmp_path / "prep").mkdir()
    assert complete(script, ["recsys", "train", "ease", "--data", "pr"], tmp_path) == ["prep"]


def test_every_flag_of_every_command_is_in_the_script(script):
    table = commands_and_flags(build_parser())
    assert {"train", "evaluate", "recommend", "config", "completion"} <= set(table)
    for command, flags in table.items():
        for flag in flags:
            assert flag in script, (command, flag)


def test_zsh_loads_bash_completion_and_an_unknown_shell_is_refused(capsys):
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("autoload -U +X bashcompinit && bashcompinit")
    with pytest.raises(SystemExit) as exc:
        main(["completion", "fish"])
    assert exc.value.code == 2

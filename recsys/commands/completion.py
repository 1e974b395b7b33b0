"""`recsys completion bash|zsh`: a shell completion script for recsys's commands, flags and
model names, generated from the parser itself (so it never lists a flag that does not exist).

    eval "$(recsys completion bash)"      # in ~/.bashrc
    eval "$(recsys completion zsh)"       # in ~/.zshrc (through bashcompinit)

Flags that take a file or folder complete file names; a model argument completes the model names.
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh")
# Positional arguments completed with model names, by command.
MODEL_POSITIONALS = {"train", "config"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description=__doc__.splitlines()[0],
        epilog='example: eval "$(recsys completion bash)"',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recsys.cli import build_parser

    print(script(build_parser(), zsh=args.shell == "zsh"))
    return 0


def commands_and_flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each sub-command's flags (the top level under ""), from the parser's own actions."""
    out = {"": _flags(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = _flags(sub)
    return out


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})


def script(parser: argparse.ArgumentParser, zsh: bool = False) -> str:
    from recsys.models.registry import MODELS

    table = commands_and_flags(parser)
    commands = " ".join(name for name in table if name)
    cases = "\n".join(f"        {name}) flags={shlex.quote(' '.join(flags))} ;;"
                      for name, flags in table.items() if name)
    models = shlex.quote(" ".join(MODELS))
    model_commands = "|".join(sorted(MODEL_POSITIONALS))
    body = f"""_recsys_complete() {{
    local cur cmd flags i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W {shlex.quote(commands + " " + " ".join(table[""]))} -- "$cur"))
        return
    fi
    case "$cmd" in
{cases}
        *) flags="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    elif [[ "$cmd" =~ ^({model_commands})$ && "${{COMP_WORDS[COMP_CWORD-1]}}" == "$cmd" ]]; then
        COMPREPLY=($(compgen -W {models} -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _recsys_complete recsys"""
    if zsh:
        body = "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body

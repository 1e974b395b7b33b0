"""`recsys config MODEL`: every config key of a model, its default, the values it accepts and
what `--tune` searches over, so that nobody has to read the source to write a --config file.

    recsys config multdae          # the table
    recsys config multdae --yaml   # the defaults as a --config file (as train --print-config)
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

# What each annotated_types constraint reads as in the table.
BOUNDS = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="list a model's config keys, defaults and allowed values",
        description=__doc__.splitlines()[0], epilog="example: recsys config multvae",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="the model's name (see `recsys train --help`)")
    p.add_argument("--yaml", action="store_true",
                   help="print the defaults as YAML, usable as `recsys train --config FILE`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recsys.models.registry import get_model_class
    from recsys.models.tuning import default_grid, default_space

    cls = get_model_class(args.model)
    model = cls()
    if args.yaml:
        import yaml

        print(f"# {cls.name}: the defaults (recsys train {cls.name} --config FILE)")
        print(yaml.safe_dump(model.get_params(), sort_keys=False, default_flow_style=None),
              end="")
        return 0
    rows = key_table(cls.Config, default_space(cls), default_grid(cls) or {})
    if args.quiet:
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def key_table(config: type, space: dict[str, Any], grid: dict[str, list[Any]]
              ) -> list[list[str]]:
    """Header and one row per key: name, default, accepted values, what --tune tries (the
    study's space, with --trials or for the neural models; the grid, the baselines' --tune)."""
    rows = [["key", "default", "accepts", "--tune searches"]]
    for key, field in config.model_fields.items():
        searched = []
        if key in space:
            spec = space[key]
            searched.append("study: " + (
                f"one of {spec['choices']}" if "choices" in spec else
                f"{spec['low']} .. {spec['high']}" + (" (log)" if spec.get("log") else "")))
        if key in grid:
            searched.append(f"grid: {grid[key]}")
        rows.append([key, repr(field.default) if isinstance(field.default, str)
                     else str(field.default), accepts(field), "; ".join(searched)])
    return rows


def accepts(field: Any) -> str:
    """The field's type and bounds in words (``float > 0``, ``one of 'adam', 'sgd'``)."""
    kind = _type_name(field.annotation)
    bounds = [template.format(getattr(m, name)) for m in field.metadata
              for name, template in BOUNDS.items() if hasattr(m, name)]
    return ", ".join([kind, *bounds])


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        shown = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(shown) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:
        inner = _type_name(args[0])
        bounds = [template.format(getattr(m, name)) for extra in args[1:]
                  for m in getattr(extra, "metadata", [extra])
                  for name, template in BOUNDS.items() if hasattr(m, name)]
        return ", ".join([inner, *bounds])
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is not None:
        return str(annotation).replace("typing.", "")
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)

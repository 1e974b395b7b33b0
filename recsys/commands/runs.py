"""`recsys runs [DIR]`: the run folders under DIR (default: the working directory) and what
each one holds: model, data, the key test metric, whether it finished, when it was trained.

For those who do not open the MLflow UI. A folder is a run when its run.json is a run record
(`recsys.rundir.is_run_dir`); folders nested in a run (checkpoints, the model) are not searched.
``--metric`` chooses the column shown (default ndcg@100); ``--json`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

MAX_DEPTH = 4  # how deep below DIR run folders are looked for (runs/compare/MODEL is 3)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("runs", help="list the run folders under a directory",
                              description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default=".", metavar="DIR",
                   help="where to look (default: the working directory)")
    p.add_argument("--metric", default="ndcg@100", metavar="NAME",
                   help="the test metric shown (default ndcg@100)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def find_runs(root: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Run folders under ``root`` (itself included), in path order; a run's own subfolders are
    not searched."""
    from recsys.rundir import is_run_dir

    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        if "run.json" in files and is_run_dir(here):
            found.append(here)
            subfolders[:] = []
        elif depth >= max_depth:
            subfolders[:] = []
        else:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return sorted(found)


def describe(run_dir: Path, metric: str) -> dict[str, Any]:
    from recsys.rundir import read_run

    record = read_run(run_dir)
    metrics = record.get("metrics") or {}
    value = metrics.get(metric)
    return {"run": str(run_dir), "model": record.get("model"),
            "data": record.get("data_name") or Path(str(record.get("data", "?"))).name,
            metric: value if isinstance(value, (int, float)) else None,
            "completed": bool(record.get("completed")),
            "created": str(record.get("created", ""))[:19]}


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise RecsysError(f"{root}: no such directory")
    rows = []
    for run_dir in find_runs(root):
        try:
            rows.append(describe(run_dir, args.metric))
        except RecsysError as exc:  # a damaged run: listed, not fatal
            rows.append({"run": str(run_dir), "model": None, "data": None, args.metric: None,
                         "completed": False, "created": "", "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs under {root} (a run is a folder `recsys train` wrote)", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs under {root}")
    for column in ("run", "model", "data", f"test {args.metric}", "completed", "created"):
        table.add_column(column, justify="right" if column.startswith("test") else "left")
    for row in rows:
        value = row[args.metric]
        table.add_row(row["run"], str(row["model"] or "?"), str(row["data"] or "?"),
                      "-" if value is None else f"{value:.4f}",
                      "yes" if row["completed"] else "no", row["created"])
    Console(width=max(100, Console().width)).print(table)
    return 0

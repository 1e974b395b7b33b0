"""`recsys predict RUN_DIR --pairs FILE.csv --out FILE.csv`: rating predictions for (user, item).

The input (CSV or Parquet, by its suffix) has columns ``user,item`` (external ids, as in the
ratings the run was trained on); the output (CSV or Parquet, by the suffix of --out) has
``user,item,prediction,fallback``, one row per input row in the same order.
``fallback`` is empty where the model predicted, otherwise the estimate used instead:
``item_mean`` (the user is unknown or has no training ratings), ``user_mean`` (the item is) or
``global_mean`` (both are). Only rating models (``explicit``, e.g. autorec) predict ratings.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.commands.common import add_data_arg, add_force_arg, resolve_data
from recsys.errors import RecsysError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="rating predictions for user,item pairs (CSV)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `recsys train`")
    p.add_argument("--pairs", required=True, metavar="FILE",
                   help="CSV or Parquet with columns user,item (external ids)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output .csv or .parquet: user,item,prediction,fallback (written "
                        "atomically)")
    add_data_arg(p)
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    add_force_arg(p)
    p.set_defaults(func=run)


# The columns of the file written (one row per pair).
OUTPUT_COLUMNS = ("user", "item", "prediction", "fallback")
_LONG_ROW = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _header(path: Path) -> str:
    """The first line of ``path`` as written (for messages)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().strip()


def read_pairs(path: str | Path) -> pd.DataFrame:
    """The ``user`` and ``item`` columns of a CSV, as strings (ids are mapped later)."""
    from recsys.data.readers import check_readable, is_parquet

    path = Path(path)
    if not path.exists():
        raise RecsysError(f"--pairs {path}: no such file")
    check_readable(path)  # a directory, no permission
    if is_parquet(path):
        return _checked(_read_parquet(path), path, first_row=1)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise RecsysError(f"--pairs {path}: the file is empty; expected a header user,item "
                          "and one pair per row") from None
    except pd.errors.ParserError as exc:
        # The C parser names the first row longer than the rows before it ("Expected 2 fields
        # in line 5, saw 3"); say it in terms of the header.
        found = _LONG_ROW.search(str(exc))
        if found is None:
            raise RecsysError(f"--pairs {path}: cannot read CSV "
                              f"({str(exc).strip().splitlines()[0]})") from None
        raise RecsysError(f"--pairs {path}: row {found.group(2)} has {found.group(3)} fields, "
                          f"more fields than the header ({_header(path)}); check the "
                          "delimiter and quoting") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecsysError(f"--pairs {path}: cannot read CSV ({str(exc).splitlines()[0]})") \
            from None
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas turns the extra leading field of a first row longer than the header into the
        # index, shifting user and item by one column: the wrong pairs would be predicted.
        raise RecsysError(f"--pairs {path}: row 2 has {len(frame.columns) + 1} fields, more "
                          f"fields than the header ({_header(path)}); check the delimiter and "
                          "quoting")
    return _checked(frame, path, first_row=2)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # not Parquet, truncated
        raise RecsysError(f"--pairs {path}: cannot read Parquet "
                          f"({str(exc).strip().splitlines()[0]})") from None
    # Ids as text, as a CSV's are read: a missing one is empty (refused in _checked).
    return frame.apply(lambda col: col.astype(object).where(col.notna(), "").astype(str))


def _checked(frame: pd.DataFrame, path: Path, first_row: int) -> pd.DataFrame:
    """The ``user`` and ``item`` columns, stripped; ``first_row``: the file's row number of the
    first pair (2 below a CSV header, 1 in a Parquet table), for messages."""
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("user", "item") if c not in frame.columns]
    if missing:
        raise RecsysError(f"--pairs {path}: missing column {' and '.join(missing)} (header: "
                          f"{','.join(frame.columns)}); expected columns user,item")
    if frame.empty:
        where = f"after the header ({_header(path)})" if first_row == 2 else "in the table"
        raise RecsysError(f"--pairs {path}: no pairs {where}; give one user,item pair per row")
    frame = frame[["user", "item"]].astype(str)
    empty = np.flatnonzero(((frame["user"].str.strip() == "")
                            | (frame["item"].str.strip() == "")).to_numpy())
    if len(empty):
        raise RecsysError(f"--pairs {path}: row {empty[0] + first_row} has an empty user or "
                          "item id")
    return frame.apply(lambda col: col.str.strip())


def run(args: argparse.Namespace) -> int:
    from recsys.data.interactions import Dataset
    from recsys.data.io import atomic_path, check_replaceable_file, has_columns
    from recsys.data.readers import is_parquet
    from recsys.models.base import resolve_device
    from recsys.rundir import check_run_data, load_run, read_run
    info = read_run(args.run_dir)  # not a run: one line, before anything slow
    out = Path(args.out)
    # An existing --out is replaced only when it is a prediction file recsys wrote.
    check_replaceable_file(out, what="prediction file", ours=has_columns(*OUTPUT_COLUMNS))
    # Parquet by its suffix; any other name is CSV, as it always was.
    fmt = "parquet" if is_parquet(out) else "csv"
    pairs = read_pairs(args.pairs)
    model, info = load_run(args.run_dir)
    if not getattr(model, "explicit", False):
        raise RecsysError(f"{args.run_dir}: model '{model.name}' ranks items but does not predict "
                          "ratings; use `recsys recommend` for top-K lists")
    data_dir = resolve_data(args)
    data = Dataset.load(data_dir)
    check_run_data(args.run_dir, info, model, data, data_dir, force=args.force)
    model.to(resolve_device(args.device))

    users = data.users.index(pairs["user"].to_numpy())
    items = data.items.index(pairs["item"].to_numpy())
    explain = getattr(model, "predict_with_fallback", None)
    if callable(explain):
        prediction, fallback = explain(users, items)
    else:  # a rating model without fallbacks: unknown ids cannot be predicted
        unknown = (users < 0) | (items < 0)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise RecsysError(f"--pairs {args.pairs}: row {row + 2} has an id unknown to the "
                              f"run ({pairs['user'][row]}, {pairs['item'][row]})")
        prediction, fallback = model.predict(users, items), np.full(len(users), "", object)

    table = pd.DataFrame({"user": pairs["user"], "item": pairs["item"],
                          "prediction": np.asarray(prediction, dtype=np.float64),
                          "fallback": np.asarray(fallback, dtype=object)})
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, float_format="%.6g")

    # Each pair counted once: a pair with both ids unknown is not also one of each.
    both = int(((users < 0) & (items < 0)).sum())
    n_unknown_users, n_unknown_items = int((users < 0).sum()) - both, int((items < 0).sum()) - both
    fell_back = int((table["fallback"] != "").sum())
    if not args.quiet:
        print(f"wrote {len(table)} predictions to {out}", file=sys.stderr)
    if fell_back:
        print(f"note: {fell_back} pairs predicted by a fallback ({n_unknown_users} with only the "
              f"user, {n_unknown_items} with only the item and {both} with both unknown to the "
              "run's data; the others had no training ratings): see the fallback column",
              file=sys.stderr)
    return 0

"""`recsys recommend RUN_DIR --data DIR --k N --out FILE`: top-K lists for many users, streamed.

Users are scored in chunks (bounded memory) from their known history, which is masked:
``--history before-test`` (default) is what `recsys evaluate` scores the test part from, so the
lists can be scored against the test part by any outside tool; ``all`` adds the test part (lists
for production, after the test period). Each chunk is committed as it finishes (see
recsys.scoring.export), so ``--resume`` continues an interrupted run. Output columns: user, item
(external ids), rank (1 is best), score, cold (True where the user had no history and got the
most popular items). ``--quiet``: no progress bar and no summary line; notes about dropped or
ignored input still go to stderr.

``--engine spark`` scores the same lists with Spark instead (local[*], or the cluster of a
spark-submit): RUN_DIR and the prepared data become an MLflow pyfunc model applied with
``mlflow.pyfunc.spark_udf``; ``--users`` may then be a Parquet table (file or directory) and the
output is a Parquet dataset (a directory of parts). See recsys.workflows.recommend.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.commands.common import add_data_arg, add_force_arg, resolve_data
from recsys.data.ids import coerce_ids, note, read_histories, read_id_file, read_items
from recsys.data.interactions import HISTORIES, Dataset
from recsys.errors import RecsysError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recommend", help="top-K lists for many users (CSV or Parquet)",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `recsys train`")
    add_data_arg(p)
    p.add_argument("--users", default="all", metavar="all|FILE",
                   help="'all' (default) or a file of user ids (a `user` column, or one per line)")
    p.add_argument("--histories", default=None, metavar="FILE.csv",
                   help="user,item rows of new users' histories (external item ids): fold-in")
    p.add_argument("--history", choices=HISTORIES, default=None,
                   help="what a known user is scored from and never recommended again: "
                        "before-test (default) = what `recsys evaluate` scores the test part "
                        "from (everything before it: train, validation, a held-out user's "
                        "fold-in part), for lists evaluated offline against the test part; all = "
                        "everything known, test part included, for production lists after the "
                        "test period. Data without a test part (prepare --split none) gives "
                        "everything either way")
    p.add_argument("--k", type=int, required=True, metavar="N", help="list length")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output .csv or .parquet (an existing file is replaced only when it is a "
                        "list file recsys wrote; one recommend at a time writes it)")
    p.add_argument("--chunk-size", type=int, default=10000, metavar="N",
                   help="users per committed chunk / Parquet row group (default: 10000)")
    p.add_argument("--batch-size", type=int, default=2048, metavar="N",
                   help="users per scoring batch (default: 2048)")
    p.add_argument("--resume", action="store_true",
                   help="keep the chunks an interrupted run with the same inputs committed")
    p.add_argument("--with-titles", action="store_true",
                   help="add a title column (the item titles of a MovieLens dataset)")
    p.add_argument("--allow", default=None, metavar="FILE", help="only recommend these item ids")
    p.add_argument("--deny", default=None, metavar="FILE", help="never recommend these item ids")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="local (default): this process; spark: a Spark job through the MLflow "
                        "pyfunc model (writes a directory of Parquet parts)")
    p.add_argument("--spark-master", default=None, metavar="URL",
                   help="with --engine spark: the master (default: spark-submit's, else "
                        "local[*])")
    add_force_arg(p)
    p.set_defaults(func=run)


def _digest(path: str | Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# -- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from recsys.data.io import check_replaceable_file, clean_stale, has_columns, output_lock
    from recsys.scoring.export import COLUMNS, output_format

    resolve_data(args)
    if args.histories and args.history is not None:
        raise RecsysError("--history chooses the stored history of the data's users; "
                          "--histories scores the users of that file from it alone: drop one")
    args.history = args.history or HISTORIES[0]
    if getattr(args, "engine", "local") == "spark":
        return _spark(args)
    # Everything a user can get wrong is checked before any output exists.
    if args.k < 1:
        raise RecsysError(f"--k must be at least 1 (got {args.k})")
    for flag in ("chunk_size", "batch_size"):
        if getattr(args, flag) < 1:
            raise RecsysError(f"--{flag.replace('_', '-')} must be at least 1")
    output_format(args.out)
    # An existing --out is replaced only when it is a list file recsys wrote.
    check_replaceable_file(args.out, what="list file", ours=has_columns(*COLUMNS))
    if args.histories and args.users != "all":
        raise RecsysError("--histories scores the users in that file; drop --users")
    # One `recommend` at a time writes --out and its hidden partial folder: two would mix
    # their chunks.
    with output_lock(args.out, "recommend"):
        clean_stale(args.out)  # a temporary final file of a run killed while assembling it
        return _recommend(args)


# Local-engine options that the Spark engine does not offer, and why.
SPARK_UNSUPPORTED = {
    "histories": "score new users' histories with the local engine",
    "allow": "filter the lists after scoring, or use the local engine",
    "deny": "filter the lists after scoring, or use the local engine",
    "resume": "Spark reruns failed tasks itself",
    "with_titles": "join the titles to the lists afterwards, or use the local engine",
}


def _spark(args: argparse.Namespace) -> int:
    from recsys.workflows.recommend import spark_recommend

    for flag, instead in SPARK_UNSUPPORTED.items():
        if getattr(args, flag, None):
            raise RecsysError(f"--{flag} is not supported with --engine spark; {instead}")
    spark_recommend(args.run_dir, args.data, str(args.out), k=args.k,
                    users=None if args.users == "all" else str(args.users),
                    history=args.history, master=args.spark_master, force=args.force,
                    quiet=bool(getattr(args, "quiet", False)))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from recsys.models.base import resolve_device
    from recsys.rundir import check_run_data, load_run, read_run
    from recsys.scoring.export import ChunkedWriter
    from recsys.scoring.serving import TopKPredictor, item_popularity
    from recsys.scoring.topk import item_mask
    from recsys.workflows.recommend import UserRows, item_titles, score_to_file

    run_info = read_run(args.run_dir)
    data = Dataset.load(args.data)
    titles = item_titles(data) if args.with_titles else None
    n_items = len(data.items)
    if args.k > n_items:
        raise RecsysError(f"--k {args.k} is larger than the catalogue ({n_items} items)")
    allow = read_items(args.allow, data.items, "--allow", need_one=True) if args.allow else None
    deny = read_items(args.deny, data.items, "--deny") if args.deny else None
    if args.histories:
        new_ids, new_history = read_histories(args.histories, data.items)
        users_spec = _digest(args.histories)
    elif args.users == "all":
        users_spec = "all"
    else:
        raw = read_id_file(args.users, "user")
        ids = pd.unique(pd.Series(coerce_ids(raw, data.users, args.users, "user")))
        if len(ids) < len(raw):
            note(f"--users {args.users}: {len(raw) - len(ids)} duplicated ids scored once")
        unknown = int((data.users.index(np.asarray(ids)) < 0).sum())
        if unknown:
            note(f"--users {args.users}: {unknown} of {len(ids)} users are unknown; "
                  "scored with popularity (cold=true)")
        users_spec = _digest(args.users)

    model, _ = load_run(args.run_dir)
    # --histories scores only the file's users: the data's users and their history are unused.
    check_run_data(args.run_dir, run_info, model, data, args.data, force=args.force,
                   users=not args.histories)
    device = resolve_device(args.device)
    # A transductive model (item-based CFGAN) observes every known interaction here, as
    # `recsys evaluate` declares it: the lists it is scored by are these.
    predictor = TopKPredictor(model, data.users, data.items, data.known_history(args.history),
                              item_popularity(data.train.matrix), device=device,
                              batch_size=args.batch_size, history_kind=args.history,
                              banned=item_mask(n_items, allow, deny, device))
    if args.histories:
        users = UserRows.new(new_ids, new_history)
    else:
        users = UserRows.known(predictor, data.users.ids if args.users == "all" else
                               np.asarray(ids))

    # What decides the lists: the trained run (not its later metrics), data, users, options.
    fingerprint = {"run": {k: run_info.get(k) for k in ("model", "created")},
                   "data": _digest(Path(args.data) / "metadata.json"),
                   "users": users_spec, "history": args.history, "k": args.k,
                   "chunk_size": args.chunk_size,
                   "allow": _digest(args.allow), "deny": _digest(args.deny),
                   "device": device.type, "titles": args.with_titles}
    writer = ChunkedWriter(args.out, fingerprint, resume=args.resume)
    quiet = bool(getattr(args, "quiet", False))
    scored = score_to_file(predictor, users, writer, k=args.k, chunk_size=args.chunk_size,
                           quiet=quiet, titles=titles)
    if not quiet:
        # scored.rows: every row of the finished file, a resumed run's earlier chunks included.
        print(f"wrote {args.out}: {scored.users} users ({scored.cold} cold in this run), "
              f"{scored.rows} rows in {scored.seconds:.1f} s "
              f"({scored.users / max(scored.seconds, 1e-9):,.0f} users/s)", file=sys.stderr)
    return 0

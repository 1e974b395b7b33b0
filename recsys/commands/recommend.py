"""`recsys recommend RUN_DIR --data DIR --k N --out FILE`: top-K lists for many users, streamed.

Users are scored in chunks (bounded memory) from their known history, which is masked:
``--history before-test`` (default) is what `recsys evaluate` scores the test part from, so the
lists can be scored against the test part by any outside tool; ``all`` adds the test part (lists
for production, after the test period). Each chunk is committed as it finishes (see
recsys.scoring.export), so ``--resume`` continues an interrupted run. Output columns: user, item
(external ids), rank (1 is best), score, cold (True where the user had no history and got the
most popular items; with ``--user-features``, a model that reads user features, such as cvae,
scores them from their features instead: see below). ``--quiet``: no progress bar and no summary
line; notes about dropped or ignored input still go to stderr.

``--user-features F.csv`` (with or without ``--histories H.csv``): the users of F and H are new
users; those of F bring features (the columns of the file the prepared data's user features
were made from, encoded with the data's stored encoding: a category it never had and a missing
number add nothing). A user of F without rows in H has no history (cold=true) and is scored
from their features by a model that reads them (`Recommender.scores_user_features`), or gets
the popularity list from any other model; a user in both is scored from history and features.
A summary line says how many cold users were scored from features and how many got popularity.

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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.commands.common import add_data_arg, add_force_arg, resolve_data
from recsys.data.ids import coerce_ids, note, read_histories, read_id_file, read_items
from recsys.data.interactions import HISTORIES, PLAIN_INTEGER, Dataset
from recsys.errors import RecsysError

if TYPE_CHECKING:
    from recsys.models.base import Recommender


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recommend", help="top-K lists for many users (CSV or Parquet)",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `recsys train`")
    add_data_arg(p)
    p.add_argument("--users", default="all", metavar="all|FILE",
                   help="'all' (default) or a file of user ids (a `user` column, or one per line)")
    p.add_argument("--histories", default=None, metavar="FILE.csv",
                   help="user,item rows of new users' histories (external item ids): fold-in")
    p.add_argument("--user-features", default=None, metavar="FILE",
                   help="new users' features (CSV or Parquet: a user column and the feature "
                        "columns the data was prepared with): users without rows in "
                        "--histories are scored from them (cold) by a model that reads user "
                        "features, e.g. cvae; other models give them popularity")
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
    new_users = _new_users_flag(args)
    if new_users and args.history is not None:
        raise RecsysError("--history chooses the stored history of the data's users; "
                          f"{new_users} scores the users of that file from it alone: drop one")
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
    if new_users and args.users != "all":
        raise RecsysError(f"{new_users} scores the users in that file; drop --users")
    # One `recommend` at a time writes --out and its hidden partial folder: two would mix
    # their chunks.
    with output_lock(args.out, "recommend"):
        clean_stale(args.out)  # a temporary final file of a run killed while assembling it
        return _recommend(args)


# Local-engine options that the Spark engine does not offer, and why.
SPARK_UNSUPPORTED = {
    "histories": "score new users' histories with the local engine",
    "user_features": "score new users from their features with the local engine",
    "allow": "filter the lists after scoring, or use the local engine",
    "deny": "filter the lists after scoring, or use the local engine",
    "resume": "Spark reruns failed tasks itself",
    "with_titles": "join the titles to the lists afterwards, or use the local engine",
}


def _new_users_flag(args: argparse.Namespace) -> str | None:
    """The flag(s) naming new users to score (--histories, --user-features), or None."""
    flags = [f for f, v in (("--histories", args.histories),
                            ("--user-features", getattr(args, "user_features", None))) if v]
    return " with ".join(flags) or None


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
    from recsys.scoring.serving import (
        TopKPredictor,
        item_popularity,
        read_user_features,
        user_feature_encoding,
    )
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
    new_users = _new_users_flag(args)
    featured = None
    if args.user_features:
        featured = read_user_features(args.user_features, user_feature_encoding(data))
    if new_users:
        new_ids, new_history = _new_users(args, data, featured)
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
                   users=not new_users)
    device = resolve_device(args.device)
    # A transductive model (item-based CFGAN) observes every known interaction here, as
    # `recsys evaluate` declares it: the lists it is scored by are these.
    predictor = TopKPredictor(model, data.users, data.items, data.known_history(args.history),
                              item_popularity(data.train.matrix), device=device,
                              batch_size=args.batch_size, history_kind=args.history,
                              banned=item_mask(n_items, allow, deny, device),
                              user_encoding=user_feature_encoding(data))
    if featured is not None:
        # The features by the ids the lists name (read as text, an id may be written 7 there).
        at = pd.Index(_as_text(new_ids)).get_indexer(featured[0])
        predictor.give_features(new_ids[at], featured[1])
        _note_cold(args.user_features, model, new_ids, new_history, featured[0])
    if new_users:
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
                   "user_features": _digest(args.user_features),
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


def _new_users(args: argparse.Namespace, data: Dataset,
               featured: tuple[np.ndarray, np.ndarray] | None
               ) -> tuple[np.ndarray, sp.csr_matrix]:
    """The new users' ids (as the lists will name them) and history rows: those of
    --histories, then the users of --user-features without a history there (an empty row)."""
    if args.histories:
        ids, history = read_histories(args.histories, data.items)
    else:
        ids, history = np.empty(0, dtype=object), sp.csr_matrix((0, len(data.items)),
                                                               dtype=np.float32)
    if featured is None:
        return ids, history
    text = _as_text(ids)
    extra = featured[0][~np.isin(featured[0], text)]
    if not len(extra):
        return ids, history
    # Named as written, integers where every id is one written plainly (as read_histories does).
    every = np.concatenate([text, extra])
    if pd.Series(every, dtype=object).str.fullmatch(PLAIN_INTEGER).all():
        every = every.astype(np.int64)
    empty = sp.csr_matrix((len(extra), len(data.items)), dtype=np.float32)
    return every, sp.vstack([history, empty]).tocsr()


def _as_text(ids: np.ndarray) -> np.ndarray:
    return pd.Series(ids, dtype=object).astype(str).to_numpy(dtype=object)


def _note_cold(path: str, model: Recommender, ids: np.ndarray, history: sp.csr_matrix,
               featured_ids: np.ndarray) -> None:
    """One line on how the new users without history are scored (the cold column flags them
    all): from their features by a model that reads them, else with popularity."""
    cold = np.diff(history.indptr) == 0
    with_features = cold & np.isin(_as_text(ids), featured_ids)
    if model.scores_user_features:
        note(f"--user-features {path}: {int(cold.sum())} users without history (cold=true): "
             f"{int(with_features.sum())} scored from their features by {model.name}, "
             f"{int((cold & ~with_features).sum())} without features given popularity")
    else:
        warm = int((~cold).sum())
        others = f"; the {warm} with a history are scored from it alone" if warm else ""
        note(f"--user-features {path}: model '{model.name}' does not read user features; its "
             f"{int(cold.sum())} users without history get the popularity list (cold=true)"
             f"{others}")

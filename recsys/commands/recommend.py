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
output is a Parquet dataset (a directory of parts). See recsys.scoring.spark.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.commands.evaluate import add_force_arg
from recsys.data.interactions import HISTORIES, PLAIN_INTEGER, Dataset, Vocabulary
from recsys.errors import RecsysError

INT_SENTINEL = np.iinfo(np.int64).min  # what Vocabulary.coerce gives a non-integer id


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recommend", help="top-K lists for many users (CSV or Parquet)",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `recsys train`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared dataset directory")
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


# -- reading the id files ----------------------------------------------------------------------


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _check_fields(frame: pd.DataFrame, path: Path) -> None:
    """pandas turns the extra leading field of rows longer than the header into the index
    (shifting every column by one): such rows are an error, not data."""
    if not isinstance(frame.index, pd.RangeIndex):
        raise RecsysError(f"{path}: rows have more fields than the header "
                          f"({', '.join(map(str, frame.columns))}); check the delimiter and "
                          "quoting")


def read_id_file(path: str | Path, column: str, allow_empty: bool = False) -> np.ndarray:
    """Ids from a CSV with a ``column`` header, a plain file with one id per line, or a Parquet
    file with a ``column`` column."""
    from recsys.data.readers import check_readable

    path = Path(path)
    if not path.exists():
        raise RecsysError(f"{path}: no such file")
    check_readable(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet_ids(path, column, allow_empty)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        header = [c.strip().strip('"') for c in first.rstrip("\r\n").split(",")]
        if column in header:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif len(header) > 1:
            raise RecsysError(f"{path}: expected a '{column}' column (header: {first.strip()}) "
                              "or one id per line")
        else:
            try:
                frame = pd.read_csv(path, header=None, names=[column], dtype=str,
                                    keep_default_na=False, skip_blank_lines=True)
            except pd.errors.EmptyDataError:  # nothing but blank lines: no ids (checked below)
                frame = pd.DataFrame({column: pd.Series([], dtype=str)})
        _check_fields(frame, path)
        ids = frame[column]
    except RecsysError:
        raise
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise RecsysError(f"{path}: cannot read ids ({exc})") from None
    ids = ids.astype(str).str.strip()
    if len(ids) == 0 and not allow_empty:
        raise RecsysError(f"{path}: the file holds no {column} ids; expected a header "
                          f"'{column}' and one id per row, or one id per line")
    blank = np.flatnonzero((ids == "").to_numpy())
    if len(blank):
        raise RecsysError(f"{path}: row {int(blank[0]) + 1}: empty {column} id")
    return ids.to_numpy(dtype=object)


def _read_parquet_ids(path: Path, column: str, allow_empty: bool) -> np.ndarray:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # not Parquet, truncated
        raise RecsysError(f"{path}: cannot read ids ({str(exc).splitlines()[0]})") from None
    if column not in frame.columns:
        raise RecsysError(f"{path}: expected a '{column}' column (columns: "
                          f"{', '.join(map(str, frame.columns)) or 'none'})")
    ids = frame[column]
    if len(ids) == 0 and not allow_empty:
        raise RecsysError(f"{path}: the table holds no {column} ids")
    missing = np.flatnonzero(ids.isna().to_numpy())
    if len(missing):
        raise RecsysError(f"{path}: row {int(missing[0]) + 1}: empty {column} id")
    text = ids.astype(str).str.strip()
    blank = np.flatnonzero((text == "").to_numpy())
    if len(blank):
        raise RecsysError(f"{path}: row {int(blank[0]) + 1}: empty {column} id")
    return text.to_numpy(dtype=object)


def coerce_ids(raw: np.ndarray, vocab: Vocabulary, path: str | Path, what: str) -> np.ndarray:
    """Raw string ids cast to the vocabulary's id type; a non-integer id for an integer
    vocabulary is a malformed file (it could never match). Ids are compared as written: for
    an integer vocabulary '007' is no id (never 7), for a text one it is '007' only."""
    ids = vocab.coerce(raw)
    if vocab.is_integer:
        bad = np.flatnonzero(ids == INT_SENTINEL)
        if len(bad):
            value = str(raw[bad[0]]).strip()
            why = "is not an integer" if not re.fullmatch(r"[+-]?\d+", value) else \
                "is not written as an integer id is (ids are compared as written: '007' or '+7' " \
                "is not 7)"
            raise RecsysError(f"{path}: row {int(bad[0]) + 1}: {what} id '{raw[bad[0]]}' {why} "
                              f"(this dataset's {what} ids are integers)")
    return ids


def read_items(path: str | Path, vocab: Vocabulary, flag: str, need_one: bool = False
               ) -> np.ndarray:
    """Internal ids of the known items listed in an allow/deny file (unknown ones reported)."""
    raw = read_id_file(path, "item", allow_empty=not need_one)  # an empty deny list is fine
    index = vocab.index(coerce_ids(raw, vocab, path, "item"))
    if need_one and not (index >= 0).any():
        raise RecsysError(f"{flag} {path}: none of its items is in the catalogue")
    unknown = int((index < 0).sum())
    if unknown:
        _note(f"{flag} {path}: {unknown} of {len(index)} item ids are not in the catalogue; "
              "ignored")
    return np.unique(index[index >= 0])


def read_histories(path: str | Path, items: Vocabulary) -> tuple[np.ndarray, sp.csr_matrix]:
    """New users' histories: (their external ids in order of appearance, binary CSR)."""
    from recsys.data.readers import check_readable

    path = Path(path)
    if not path.exists():
        raise RecsysError(f"{path}: no such file")
    check_readable(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise RecsysError(f"{path}: cannot read histories ({exc})") from None
    _check_fields(frame, path)
    missing = [c for c in ("user", "item") if c not in frame.columns]
    if missing:
        raise RecsysError(f"{path}: missing column {', '.join(missing)} (expected user,item rows "
                          f"with external item ids; header: {', '.join(map(str, frame.columns))})")
    users = frame["user"].astype(str).str.strip().to_numpy(dtype=object)
    blank = np.flatnonzero(users == "")
    if len(blank):
        raise RecsysError(f"{path}: row {int(blank[0]) + 2}: empty user id")
    item_idx = items.index(coerce_ids(frame["item"].astype(str).str.strip().to_numpy(dtype=object),
                                      items, path, "item"))
    codes, uniques = pd.factorize(pd.Series(users), sort=False)
    ok = item_idx >= 0
    if not ok.any():
        raise RecsysError(f"--histories {path}: none of its items is in the catalogue; nothing to "
                          "score from (are the item ids those of the training data?)")
    if not ok.all():
        _note(f"--histories {path}: {int((~ok).sum())} of {len(item_idx)} rows name items not in "
              "the catalogue; ignored")
    hist = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (codes[ok], item_idx[ok])),
                         shape=(len(uniques), len(items)))
    hist.sum_duplicates()
    hist.data[:] = 1.0
    ext = np.asarray(uniques, dtype=object)
    # The lists name these users as written: integers only where each is one written plainly
    # ('007' stays '007').
    if pd.Series(ext, dtype=object).str.fullmatch(PLAIN_INTEGER).all():
        as_int = Vocabulary(np.empty(0, np.int64)).coerce(ext)
        if not (as_int == INT_SENTINEL).any():
            ext = as_int
    return ext, hist


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

    if args.histories and args.history is not None:
        raise RecsysError("--history chooses the stored history of the data's users; "
                          "--histories scores the users of that file from it alone: drop one")
    args.history = args.history or HISTORIES[0]
    if getattr(args, "engine", "local") == "spark":
        from recsys.scoring.spark import run_recommend

        return run_recommend(args)
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


def _recommend(args: argparse.Namespace) -> int:
    from recsys.data.io import WriteError, write_advice
    from recsys.models.base import resolve_device
    from recsys.run import check_run_data, load_run, read_run
    from recsys.scoring.export import ChunkedWriter, lists_schema, lists_table
    from recsys.scoring.topk import item_mask, place_model, topk_chunk

    run_info = read_run(args.run_dir)
    data = Dataset.load(args.data)
    n_items = len(data.items)
    if args.k > n_items:
        raise RecsysError(f"--k {args.k} is larger than the catalogue ({n_items} items)")
    allow = read_items(args.allow, data.items, "--allow", need_one=True) if args.allow else None
    deny = read_items(args.deny, data.items, "--deny") if args.deny else None

    known = data.known_history(args.history)
    if args.histories:
        user_ids, history = read_histories(args.histories, data.items)
        internal = np.full(len(user_ids), -1, dtype=np.int64)
        users_spec = _digest(args.histories)
    else:
        # One extra empty row: users unknown to the data index it (and so are cold).
        history = sp.vstack([known, sp.csr_matrix((1, n_items))]).tocsr()
        if args.users == "all":
            internal = np.arange(len(data.users), dtype=np.int64)
            user_ids = data.users.ids
            users_spec = "all"
        else:
            raw = read_id_file(args.users, "user")
            ids = pd.unique(pd.Series(coerce_ids(raw, data.users, args.users, "user")))
            if len(ids) < len(raw):
                _note(f"--users {args.users}: {len(raw) - len(ids)} duplicated ids scored once")
            user_ids = np.asarray(ids)
            internal = data.users.index(user_ids)
            unknown = int((internal < 0).sum())
            if unknown:
                _note(f"--users {args.users}: {unknown} of {len(internal)} users are unknown; "
                      "scored with popularity (cold=true)")
            users_spec = _digest(args.users)
        rows = np.where(internal >= 0, internal, len(data.users))

    model, _ = load_run(args.run_dir)
    # --histories scores only the file's users: the data's users and their history are unused.
    check_run_data(args.run_dir, run_info, model, data, args.data, force=args.force,
                   users=not args.histories)
    device = resolve_device(args.device)
    place_model(model, device)
    observe = getattr(model, "observe", None)
    if callable(observe):
        # A transductive model (item-based CFGAN) conditions on every known interaction at
        # once, as `recsys evaluate` declares it: the lists it is scored by are these.
        observe(known)
    banned = item_mask(n_items, allow, deny, device)
    import torch  # here, not at import time: `recsys --help` and `prepare` stay fast

    popularity = torch.from_numpy(
        np.diff(data.train.matrix.tocsc().indptr).astype(np.float32)).to(device)

    # What decides the lists: the trained run (not its later metrics), data, users, options.
    fingerprint = {"run": {k: run_info.get(k) for k in ("model", "created")},
                   "data": _digest(Path(args.data) / "metadata.json"),
                   "users": users_spec, "history": args.history, "k": args.k,
                   "chunk_size": args.chunk_size,
                   "allow": _digest(args.allow), "deny": _digest(args.deny),
                   "device": device.type}
    writer = ChunkedWriter(args.out, fingerprint, resume=args.resume)
    schema = lists_schema(user_ids, data.items.ids)
    n = len(user_ids)
    n_chunks = -(-n // args.chunk_size)
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    start = time.perf_counter()
    cold_users = 0
    quiet = bool(getattr(args, "quiet", False))
    try:
        # disable=None: no bar when stderr is not a terminal either.
        with tqdm(total=n, unit="users", unit_scale=True, disable=True if quiet else None,
                  file=sys.stderr, desc="recommend") as bar:
            for c in range(n_chunks):
                lo, hi = c * args.chunk_size, min(n, (c + 1) * args.chunk_size)
                if writer.committed(c):
                    bar.update(hi - lo)
                    continue
                chunk_rows = (history[np.arange(lo, hi)] if args.histories
                              else history[rows[lo:hi]])
                items, scores, cold = topk_chunk(
                    model, internal[lo:hi], chunk_rows, args.k, device=device, banned=banned,
                    cold_scores=popularity, batch_size=args.batch_size)
                table = lists_table(user_ids[lo:hi], items, scores, cold, data.items.ids)
                writer.write(c, table.cast(schema))
                cold_users += int(cold.sum())
                bar.update(hi - lo)
        writer.finish(schema)
    except WriteError as exc:
        # A full disk (or a place that stopped being writable): the partial output would only
        # fill it further; an interrupted run keeps it for --resume.
        writer.discard()
        raise WriteError(f"--out {args.out}: {write_advice(exc.errno)} (the partial output was "
                         "removed)", exc.errno) from exc
    seconds = time.perf_counter() - start
    if not quiet:
        # writer.rows: every row of the finished file, a resumed run's earlier chunks included.
        print(f"wrote {args.out}: {n} users ({cold_users} cold in this run), {writer.rows} rows "
              f"in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} users/s)", file=sys.stderr)
    return 0


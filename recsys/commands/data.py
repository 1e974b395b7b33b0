"""`recsys datasets` (the MovieLens registry) and `recsys prepare` (raw ratings -> prepared split).

    recsys prepare ml-100k --split random --test-fraction 0.2 --seed 0 --out DIR
    recsys prepare --input ratings.csv --columns user=uid,item=iid --split loo --out DIR
    recsys prepare --train-file TRAIN.csv --test-file TEST.csv [--valid-file VALID.csv] --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys.errors import RecsysError


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("datasets", help="list the MovieLens datasets `prepare` knows",
                       description="List the MovieLens registry: name, format, size, licence, and "
                                   "whether it is embedded, cached or to be downloaded.")
    d.add_argument("--cache", help="cache directory (default $RECSYS_CACHE or data/cache)")
    d.set_defaults(func=run_datasets)

    from recsys.data.split import SPLITS

    p = sub.add_parser(
        "prepare", help="load, filter and split ratings into a prepared dataset",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?",
                   help="registry name (see `recsys datasets`); omit with --input/--train-file")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    g = p.add_argument_group("split")
    g.add_argument("--split", default="random", choices=SPLITS, metavar="SPLIT",
                   help=f"protocol: {', '.join(SPLITS)} (default %(default)s)")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="per-user (or global) test fraction; strong: scored share of held-out "
                        "users' items (default %(default)s)")
    g.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of each user's training interactions moved to validation; "
                        "0 = none; loo: >0 holds out one more (default %(default)s)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--heldout-users", type=int, default=None,
                   help="strong: validation users = test users = N (default 10%% of users)")
    g.add_argument("--loo-order", choices=("last", "random"), default="last",
                   help="loo: hold out the latest or a random interaction (default %(default)s)")
    f = p.add_argument_group("preprocessing")
    f.add_argument("--implicit-threshold", type=float, default=None, metavar="T",
                   help="ratings >= T become positives (1.0), others are removed; "
                        "without it the data stay explicit ratings")
    f.add_argument("--min-user-interactions", type=int, default=0, metavar="N")
    f.add_argument("--min-item-interactions", type=int, default=0, metavar="N")
    f.add_argument("--kcore", action="store_true",
                   help="repeat the minimum-count filters until both hold (k-core)")
    s = p.add_argument_group("sources")
    s.add_argument("--mirror", help="base URL or local folder with the MovieLens zips "
                                    "(default $RECSYS_MIRROR)")
    s.add_argument("--cache", help="download cache (default $RECSYS_CACHE or data/cache)")
    s.add_argument("--path", help="an already extracted dataset folder to read")
    s.add_argument("--input", help="your own rating log (CSV/TSV/Parquet)")
    s.add_argument("--train-file", help="bring-your-own split: training interactions (CSV)")
    s.add_argument("--valid-file", help="bring-your-own split: validation interactions")
    s.add_argument("--test-file", help="bring-your-own split: test interactions")
    s.add_argument("--sep", help="field separator of --input/--train-file (default: sniffed)")
    s.add_argument("--columns", help="map our fields to your column names, e.g. "
                                     "user=uid,item=iid,rating=score,timestamp=ts")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)


def run_datasets(args: argparse.Namespace) -> int:
    from recsys.data import movielens as ml

    cache = Path(args.cache) if args.cache else ml.default_cache()
    rows = [(s.name, s.format, s.size, ml.status(s.name, cache), s.licence)
            for s in ml.REGISTRY.values()]
    head = ("name", "format", "size", "local", "licence")
    widths = [max(len(str(r[i])) for r in [*rows, head]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"\ncache: {cache}   mirror: {ml.default_mirror() or '(none: GroupLens)'}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from recsys.data.prepare import (
        PrepareOptions,
        prepare_file,
        prepare_files,
        prepare_movielens,
        summary,
    )
    from recsys.data.readers import parse_column_mapping

    out = Path(args.out)
    _check_out(out)
    own = args.train_file or args.test_file or args.valid_file
    sources = sum(bool(x) for x in (args.dataset, args.input, own))
    if sources != 1:
        raise RecsysError("give exactly one source: a DATASET name, --input FILE, or "
                          "--train-file/--test-file")
    for flag, value in (("--heldout-users", args.heldout_users),
                        ("--min-user-interactions", args.min_user_interactions),
                        ("--min-item-interactions", args.min_item_interactions)):
        if value is not None and value < 0:
            raise RecsysError(f"{flag} {value}: must be >= 0")
    options = PrepareOptions(
        split=args.split, test_fraction=args.test_fraction, valid_fraction=args.valid_fraction,
        seed=args.seed, implicit_threshold=args.implicit_threshold,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions, kcore=args.kcore,
        heldout_users=args.heldout_users, loo_order=args.loo_order)
    columns = parse_column_mapping(args.columns)
    if own:
        if not (args.train_file and args.test_file):
            raise RecsysError("bring-your-own split needs both --train-file and --test-file")
        ds = prepare_files(args.train_file, args.test_file, args.valid_file, options,
                           sep=args.sep, columns=columns)
    elif args.input:
        ds = prepare_file(args.input, options, sep=args.sep, columns=columns)
    else:
        ds = prepare_movielens(args.dataset, options, path=args.path, mirror=args.mirror,
                               cache=args.cache, progress=not args.quiet)
    for note in ds.meta.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    unseen = ds.meta["dropped"]["unseen_items"]
    if any(unseen.values()):
        print("note: interactions with items unseen in training, excluded from evaluation: "
              + ", ".join(f"{k} {v:,}" for k, v in unseen.items() if v), file=sys.stderr)
    no_history = {k: v for k, v in ds.meta["dropped"]["no_history"].items() if v["users"]}
    if no_history:
        print("note: target interactions of users with no history before them (no history to "
              "score from), excluded: " + ", ".join(
                  f"{k} {v['interactions']:,} ({v['users']:,} users)"
                  for k, v in no_history.items()), file=sys.stderr)
    ds.save(out)
    print(summary(ds))
    print(f"written to {out}")
    return 0


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not a prepared dataset (saving replaces --out)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / "metadata.json").is_file())):
        raise RecsysError(f"--out {out}: exists and is not a prepared dataset; choose a new or "
                          "empty directory")

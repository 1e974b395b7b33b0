"""`recsys datasets` (the MovieLens registry) and `recsys prepare` (raw ratings -> prepared split).

    recsys prepare ml-100k --split random --test-fraction 0.2 --seed 0 --out DIR
    recsys prepare --input ratings.csv --columns user=uid,item=iid --split loo --out DIR
    recsys prepare --train-file TRAIN.csv --test-file TEST.csv [--valid-file VALID.csv] --out DIR
    recsys prepare ml-100k --split none --out DIR   # production: everything trains (+ validation)
    recsys prepare ml-100k --split cold-items --cold-item-fraction 0.1 --out DIR  # item cold start

Without --valid-file, --valid-fraction of each user's training interactions (seeded by --seed)
becomes the validation part. A flag that does not apply to the source or the --split chosen is
refused (one line, exit 2), never ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recsys.data.prepare import PrepareOptions
from recsys.data.split import SPLITS
from recsys.errors import RecsysError


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("datasets", help="list the MovieLens datasets `prepare` knows",
                       description="List the MovieLens registry: name, format, size, licence, and "
                                   "whether it is embedded, cached or to be downloaded.")
    d.add_argument("--cache", help="cache directory (default $RECSYS_CACHE or data/cache)")
    d.set_defaults(func=run_datasets)

    # Defaults are None so that `check_flags` can tell a flag given from one left out; the
    # values come from PrepareOptions (`resolve_options`), the one home of the defaults.
    d = PrepareOptions()
    p = sub.add_parser(
        "prepare", help="load, filter and split ratings into a prepared dataset",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?",
                   help="registry name (see `recsys datasets`); omit with --input/--train-file")
    p.add_argument("--out", required=True,
                   help="output directory (written atomically; an existing one is replaced only "
                        "when it is a prepared dataset recsys wrote)")
    g = p.add_argument_group("split")
    g.add_argument("--split", choices=SPLITS, metavar="SPLIT",
                   help=f"protocol: {', '.join(SPLITS)} (default {d.split}); none: everything "
                        "trains, no test part (production); cold-items: a share of the items "
                        "held out entirely, test only (needs item features); not with "
                        "--train-file")
    g.add_argument("--test-fraction", type=float,
                   help="per-user (or global) test fraction; strong: scored share of held-out "
                        f"users' items (default {d.test_fraction})")
    g.add_argument("--valid-fraction", type=float,
                   help="share of each user's training interactions moved to validation; "
                        "0 = none; loo: >0 holds out one more; not with --valid-file "
                        f"(default {d.valid_fraction})")
    g.add_argument("--seed", type=int,
                   help=f"for what is drawn at random (default {d.seed})")
    g.add_argument("--heldout-users", type=int,
                   help="strong: validation users = test users = N (default 10%% of users)")
    g.add_argument("--loo-order", choices=("last", "random"),
                   help=f"loo: hold out the latest or a random interaction (default {d.loo_order})")
    g.add_argument("--cold-item-fraction", type=float, metavar="F",
                   help="cold-items: share of the items held out of train and valid, every "
                        f"interaction with them test (default {d.cold_item_fraction})")
    f = p.add_argument_group("preprocessing")
    f.add_argument("--implicit-threshold", type=float, metavar="T",
                   help="ratings >= T become positives (1.0), others are removed; "
                        "without it the data stay explicit ratings")
    f.add_argument("--min-user-interactions", type=int, metavar="N",
                   help=f"drop users with fewer (default {d.min_user_interactions})")
    f.add_argument("--min-item-interactions", type=int, metavar="N",
                   help=f"drop items with fewer (default {d.min_item_interactions})")
    f.add_argument("--kcore", action="store_true",
                   help="repeat the minimum-count filters until both hold (k-core)")
    s = p.add_argument_group("sources")
    s.add_argument("--mirror", help="base URL or local folder with the MovieLens zips, used when "
                                    "the dataset is not in the cache (default $RECSYS_MIRROR)")
    s.add_argument("--cache", help="download cache (default $RECSYS_CACHE or data/cache)")
    s.add_argument("--path", help="an already extracted dataset folder to read")
    s.add_argument("--input", help="your own rating log (CSV/TSV/Parquet)")
    s.add_argument("--train-file", help="bring-your-own split: training interactions (CSV)")
    s.add_argument("--valid-file", help="bring-your-own split: validation interactions (default: "
                                        "--valid-fraction of each user's training ones)")
    s.add_argument("--test-file", help="bring-your-own split: test interactions")
    s.add_argument("--sep", help="field separator of --input/--train-file (default: sniffed)")
    s.add_argument("--columns", help="map our fields to your column names, e.g. "
                                     "user=uid,item=iid,rating=score,timestamp=ts")
    x = p.add_argument_group("side information (MovieLens: genres and year of each movie; "
                             "ml-100k and ml-1m: age, gender, occupation of each user)")
    x.add_argument("--user-features", metavar="FILE",
                   help="CSV/Parquet: a user id column ('user', or the first) plus feature "
                        "columns; numbers are standardised, text one-hot, 'a|b' split "
                        "(replaces the dataset's own user features)")
    x.add_argument("--item-features", metavar="FILE",
                   help="the same for items (an 'item' id column, or the first)")
    # --quiet (no summary, no progress bar) and --debug come from recsys.cli, as for every command.
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
    from recsys.data.interactions import check_dataset_out
    from recsys.data.io import output_lock

    options = check_flags(args)
    out = Path(args.out)
    # Saving replaces --out: only a prepared dataset may be there. One `prepare` at a time
    # writes it (the lock also guards the temporaries beside it).
    check_dataset_out(out)
    with output_lock(out, "prepare"):
        return _prepare(args, options, out)


def _prepare(args: argparse.Namespace, options: PrepareOptions, out: Path) -> int:
    from recsys.data.prepare import prepare_file, prepare_files, prepare_movielens, summary
    from recsys.data.readers import parse_column_mapping

    quiet = bool(getattr(args, "quiet", False))
    columns = parse_column_mapping(args.columns)
    features = {"user": getattr(args, "user_features", None),
                "item": getattr(args, "item_features", None)}
    if source_kind(args) == "files":
        ds = prepare_files(args.train_file, args.test_file, args.valid_file, options,
                           sep=args.sep, columns=columns, features=features)
    elif args.input:
        ds = prepare_file(args.input, options, sep=args.sep, columns=columns, features=features)
    else:
        ds = prepare_movielens(args.dataset, options, path=args.path, mirror=args.mirror,
                               cache=args.cache, progress=not quiet, features=features)
    for note in ds.meta.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    unseen = ds.meta["dropped"]["unseen_items"]
    if any(unseen.values()):
        print("note: interactions with items unseen in train and valid, excluded from evaluation: "
              + ", ".join(f"{k} {v:,}" for k, v in unseen.items() if v), file=sys.stderr)
    no_history = {k: v for k, v in ds.meta["dropped"]["no_history"].items() if v["users"]}
    if no_history:
        print("note: target interactions of users with no history before them (no history to "
              "score from), excluded: " + ", ".join(
                  f"{k} {v['interactions']:,} ({v['users']:,} users)"
                  for k, v in no_history.items()), file=sys.stderr)
    ds.save(out)
    if not quiet:  # also when called without the CLI's stdout redirect (`recsys compare`)
        print(summary(ds))
        print(f"written to {out}")
    return 0


# -- which flag applies where ------------------------------------------------------------------

SOURCE_WORDS = {"dataset": "a registry DATASET", "input": "--input FILE",
                "files": "--train-file/--test-file"}


@dataclass(frozen=True)
class Given:
    """What a `prepare` command line chose: the source kind, the protocol ("given" for
    bring-your-own files), the resolved options and the flags themselves."""

    source: str
    split: str
    options: PrepareOptions
    args: argparse.Namespace


@dataclass(frozen=True)
class Applies:
    """Where a flag is used: these source kinds, these protocols (None: all), and ``when`` the
    other values allow it (``unless`` says why not)."""

    sources: tuple[str, ...] = tuple(SOURCE_WORDS)
    splits: tuple[str, ...] | None = None
    note: str = ""
    when: Callable[[Given], bool] | None = None
    unless: str = ""


def _carves(g: Given) -> bool:
    """Validation carved at random from the training part (none, ml-100k folds, own files)."""
    return (g.split in ("none", "given") or g.split.startswith("ml100k-")) \
        and g.options.valid_fraction > 0 and not g.args.valid_file


def _draws(g: Given) -> bool:
    """Something is drawn at random, so --seed matters."""
    return g.split in ("random", "strong", "cold-items") or _carves(g) \
        or (g.split == "loo" and g.options.loo_order == "random")


def _delimited(g: Given) -> bool:
    """Some file read is delimited text (a Parquet file has no separator)."""
    from recsys.data.readers import is_parquet

    files = (g.args.input, g.args.train_file, g.args.valid_file, g.args.test_file)
    return any(f and not is_parquet(f) for f in files)


def _downloads(g: Given) -> bool:
    from recsys.data.movielens import embedded_path

    return g.args.path is None and embedded_path(g.args.dataset) is None


_HOLDOUT = ("random", "temporal-global", "temporal-user", "strong")
_NOT_STRONG = tuple(s for s in (*SPLITS, "given") if s != "strong")
_DOWNLOAD_ONLY = ("nothing is downloaded or cached: {dataset} is read from --path or ships with "
                  "recsys")

# Every `prepare` flag (by its dest) and where it applies: `check_flags` refuses a flag given
# anywhere else, so none is silently ignored. A flag missing here fails the test that walks the
# parser's actions.
APPLIES: dict[str, Applies] = {
    "dataset": Applies(sources=("dataset",)),
    "out": Applies(),
    "split": Applies(sources=("dataset", "input"), note="bring-your-own files are their own split"),
    "test_fraction": Applies(splits=_HOLDOUT,
                             note="loo holds out one interaction, cold-items whole items "
                                  "(--cold-item-fraction), the ml-100k folds and your own files "
                                  "bring their test part, none has none"),
    "valid_fraction": Applies(splits=_NOT_STRONG,
                              note="strong's validation users are set by --heldout-users",
                              when=lambda g: not (g.args.valid_file
                                                  and g.options.valid_fraction > 0),
                              unless="--valid-file is the validation part; give one or the other"),
    "seed": Applies(when=_draws,
                    unless="nothing is drawn at random with {where} and these options (temporal "
                           "splits, loo --loo-order last and no validation carve use no seed)"),
    "heldout_users": Applies(splits=("strong",)),
    "loo_order": Applies(splits=("loo",)),
    "cold_item_fraction": Applies(splits=("cold-items",)),
    "implicit_threshold": Applies(),
    "min_user_interactions": Applies(),
    "min_item_interactions": Applies(),
    "kcore": Applies(when=lambda g: g.options.min_user_interactions > 0
                     or g.options.min_item_interactions > 0,
                     unless="it repeats the minimum-count filters, and neither "
                            "--min-user-interactions nor --min-item-interactions is given"),
    "mirror": Applies(sources=("dataset",), when=_downloads, unless=_DOWNLOAD_ONLY),
    "cache": Applies(sources=("dataset",), when=_downloads, unless=_DOWNLOAD_ONLY),
    "path": Applies(sources=("dataset",)),
    "input": Applies(sources=("input",)),
    "train_file": Applies(sources=("files",)),
    "valid_file": Applies(sources=("files",)),
    "test_file": Applies(sources=("files",)),
    "sep": Applies(sources=("input", "files"), when=_delimited,
                   unless="Parquet files have no field separator"),
    "columns": Applies(sources=("input", "files")),
    "user_features": Applies(),
    "item_features": Applies(),
    "quiet": Applies(),
    "debug": Applies(),
}


def _protocol_words(split: str) -> str:
    return "bring-your-own files" if split == "given" else f"--split {split}"


def flag_name(dest: str) -> str:
    return "DATASET" if dest == "dataset" else "--" + dest.replace("_", "-")


def source_kind(args: argparse.Namespace) -> str:
    """dataset, input or files; exactly one source must be given."""
    given = [flag_name(d) for d in ("dataset", "input", "train_file", "valid_file", "test_file")
             if getattr(args, d, None)]
    kinds = {k for k, on in (("dataset", args.dataset), ("input", args.input),
                             ("files", args.train_file or args.test_file or args.valid_file))
             if on}
    if len(kinds) != 1:
        raise RecsysError("give exactly one source: a DATASET name, --input FILE, or "
                          "--train-file/--test-file"
                          + (f" (got {', '.join(given)})" if given else ""))
    kind = kinds.pop()
    if kind == "files" and not (args.train_file and args.test_file):
        raise RecsysError("bring-your-own split needs both --train-file and --test-file")
    return kind


def resolve_options(args: argparse.Namespace) -> PrepareOptions:
    """The options of a command line: the flags given, PrepareOptions' defaults for the rest."""
    names = {f.name for f in dataclasses.fields(PrepareOptions)} - {"extra"}
    return PrepareOptions(**{n: getattr(args, n) for n in names
                             if getattr(args, n, None) is not None})


def check_flags(args: argparse.Namespace) -> PrepareOptions:
    """Refuse, in one line, a flag that does not apply to the chosen source and protocol (the
    APPLIES table) or a negative count; return the resolved options."""
    kind = source_kind(args)
    options = resolve_options(args)
    g = Given(kind, "given" if kind == "files" else options.split, options, args)
    for dest, rule in APPLIES.items():
        value = getattr(args, dest, None)
        if value is None or value is False:  # not given (identity: 0 and 0.0 are given values)
            continue
        flag = flag_name(dest)
        note = f" ({rule.note})" if rule.note else ""
        if kind not in rule.sources:
            where = " or ".join(SOURCE_WORDS[k] for k in rule.sources)
            raise RecsysError(f"{flag} applies to {where}, not to {SOURCE_WORDS[kind]}{note}; "
                              "drop it")
        where = _protocol_words(g.split)
        if rule.splits is not None and g.split not in rule.splits:
            shown = [_protocol_words(s) for s in rule.splits if not s.startswith("ml100k-")]
            if len(shown) < len(rule.splits):
                shown.append("the ml-100k folds")
            raise RecsysError(f"{flag} applies to {', '.join(shown)} only, not to {where}{note}; "
                              "drop it")
        if rule.when is not None and not rule.when(g):
            raise RecsysError(f"{flag}: {rule.unless.format(where=where, dataset=args.dataset)}; "
                              "drop it")
    for flag, value in (("--heldout-users", options.heldout_users),
                        ("--min-user-interactions", options.min_user_interactions),
                        ("--min-item-interactions", options.min_item_interactions)):
        if value is not None and value < 0:
            raise RecsysError(f"{flag} {value}: must be >= 0")
    return options


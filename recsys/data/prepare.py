"""load -> preprocess -> split -> `Dataset`: the library function behind `recsys prepare`.

The metadata of the result records where the data came from (dataset name, SHA-256 of every
source file) and every parameter that shaped it, so a prepared folder can be traced and rebuilt.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data import split as S
from recsys.data.features import SIDES, Features, encode_features, read_feature_file
from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.data.preprocess import Encoded, PreprocessOptions, preprocess, preprocess_log
from recsys.data.readers import RatingLog, join_ids, read_rating_log
from recsys.errors import RecsysError


@dataclass
class PrepareOptions:
    """Every knob of `prepare`; ``to_dict`` is what the metadata records."""

    split: str = "random"
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    seed: int = 0
    implicit_threshold: float | None = None
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    kcore: bool = False
    heldout_users: int | None = None
    loo_order: str = "last"
    cold_item_fraction: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocess_options(self) -> PreprocessOptions:
        return PreprocessOptions(self.implicit_threshold, self.min_user_interactions,
                                 self.min_item_interactions, self.kcore)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        if self.split != "cold-items":
            # Recorded only where it shaped the data, so that every other split's metadata (and
            # the digest runs keep of it) is what it was before the cold-items split existed.
            del out["cold_item_fraction"]
        out.update(self.extra)
        return out


# -- feature sources -------------------------------------------------------------------------


@dataclass
class FeatureSource:
    """A table of one side's features (id column first) and where it came from."""

    frame: pd.DataFrame
    source: str
    sha256: str | None = None


FeatureFiles = dict[str, str | os.PathLike[str] | None]


def read_feature_files(files: FeatureFiles | None) -> dict[str, FeatureSource]:
    """``{"user": path, "item": path}`` read up front, so that a bad file fails before the
    ratings are prepared."""
    from recsys.data.io import sha256_file

    out = {}
    for side, path in (files or {}).items():
        if path is not None:
            out[side] = FeatureSource(read_feature_file(path, side), str(path),
                                      sha256_file(path))
    return out


def movielens_features(spec: Any, folder: Path, item_info: pd.DataFrame | None
                       ) -> dict[str, FeatureSource]:
    """What a MovieLens folder ships: genres and year of each movie, age, gender and
    occupation of each user (ml-100k, ml-1m)."""
    from recsys.data import movielens
    from recsys.data.io import sha256_file

    out = {}
    if item_info is not None and spec.movies_file is not None:
        path = folder / spec.movies_file
        out["item"] = FeatureSource(movielens.item_feature_frame(item_info), str(path),
                                    sha256_file(path))
    users = movielens.read_user_features(spec, folder)
    if users is not None:
        frame, path = users
        out["user"] = FeatureSource(frame, str(path), sha256_file(path))
    return out


def check_cold_items_features(options: PrepareOptions, sources: dict[str, FeatureSource],
                               where: str) -> None:
    """The cold-items split holds items out of training entirely: without item features nothing
    could rank them, so such data is refused before the ratings are read."""
    if options.split == "cold-items" and "item" not in sources:
        raise RecsysError(f"--split cold-items: {where} has no item features, and the held-out "
                          "items can only be ranked from them; give --item-features FILE")


def with_features(ds: Dataset, sources: dict[str, FeatureSource]) -> Dataset:
    """``ds`` with the features of ``sources`` encoded over its vocabularies, recorded in its
    metadata (columns, encoding, counts, digest) and their notes added to its notes."""
    if not sources:
        return ds
    tables, records = {}, {}
    for side in SIDES:
        if side in sources:
            src = sources[side]
            encoded = encode_features(src.frame, ds.users if side == "user" else ds.items,
                                      side=side, source=src.source, sha256=src.sha256)
            tables[side], records[side] = encoded.table, encoded.record
            ds.meta.setdefault("notes", []).extend(encoded.notes)
    ds.features = Features(user=tables.get("user"), item=tables.get("item"))
    ds.meta["features"] = records
    return ds


# -- sources ---------------------------------------------------------------------------------


def prepare_movielens(name: str, options: PrepareOptions, *, path: str | None = None,
                      mirror: str | None = None, cache: str | None = None,
                      progress: bool = True, features: FeatureFiles | None = None) -> Dataset:
    """A registry dataset (embedded, cached, mirrored or downloaded) through ``options``, with
    the features its files have; ``features`` files replace them side by side."""
    from recsys.data import movielens

    given = read_feature_files(features)
    spec, folder = movielens.resolve(name, path=path, mirror=mirror, cache=cache,
                                     progress=progress)
    item_info = movielens.read_item_info(spec, folder)
    sources = {**movielens_features(spec, folder, item_info), **given}
    check_cold_items_features(options, sources, name)
    source: dict[str, Any] = {"dataset": name, "source_dir": str(folder)}
    if options.split.startswith("ml100k-"):
        if name != "ml-100k":
            raise RecsysError(f"--split {options.split} is ml-100k's own folds; use it with "
                              "ml-100k, or pick another split")
        fold = options.split.removeprefix("ml100k-")
        names = ["user", "item", "rating", "timestamp"]
        logs = {"train": read_rating_log(folder / f"{fold}.base", sep="\t", names=names),
                "test": read_rating_log(folder / f"{fold}.test", sep="\t", names=names)}
        return with_features(_from_parts(logs, options, source, item_info, name), sources)
    # MovieLens has one rating per (user, movie), so rows below the threshold can be skipped
    # while reading without changing what the duplicate policy sees.
    log = movielens.read_ratings(spec, folder, min_rating=options.implicit_threshold)
    return with_features(prepare_log(log, options, source=source, item_info=item_info,
                                     name=name, consume=True), sources)


def prepare_file(path: str | os.PathLike[str], options: PrepareOptions, *, sep: str | None = None,
                 columns: dict[str, str] | None = None, features: FeatureFiles | None = None
                 ) -> Dataset:
    """A user's own rating log (CSV/TSV/Parquet) through ``options``."""
    if options.split.startswith("ml100k-"):
        raise RecsysError(f"--split {options.split} needs the ml-100k dataset, not --input")
    sources = read_feature_files(features)
    check_cold_items_features(options, sources, str(path))
    log = read_rating_log(path, sep=sep, columns=columns)
    return with_features(prepare_log(log, options, source={"dataset": Path(path).name},
                                     name=Path(path).name, consume=True), sources)


def prepare_files(train: str | os.PathLike[str], test: str | os.PathLike[str],
                  valid: str | os.PathLike[str] | None, options: PrepareOptions, *,
                  sep: str | None = None, columns: dict[str, str] | None = None,
                  features: FeatureFiles | None = None) -> Dataset:
    """Bring-your-own split: the user's train/(valid)/test files, ids kept as given."""
    sources = read_feature_files(features)
    logs = {"train": read_rating_log(train, sep=sep, columns=columns)}
    if valid is not None:
        logs["valid"] = read_rating_log(valid, sep=sep, columns=columns)
    logs["test"] = read_rating_log(test, sep=sep, columns=columns)
    # A validation file is the validation part: nothing is carved, and the metadata says so.
    options = dataclasses.replace(options, split="given",
                                  valid_fraction=0.0 if valid is not None else
                                  options.valid_fraction)
    return with_features(_from_parts(logs, options, {"dataset": Path(train).stem}, None,
                                     Path(train).stem), sources)


# -- the pipeline ----------------------------------------------------------------------------


def prepare_log(log: RatingLog, options: PrepareOptions, *, source: dict[str, Any],
                item_info: pd.DataFrame | None = None, name: str = "", consume: bool = False
                ) -> Dataset:
    """One rating log: preprocess, split by ``options.split``, build the parts.

    With ``consume`` the log's columns are handed over and freed as soon as they are encoded
    (the log is empty afterwards), which lowers peak memory on large files.
    """
    pre = options.preprocess_options()
    if log.threshold_applied is not None:
        if log.threshold_applied != options.implicit_threshold:
            raise ValueError("the log was read with another threshold than the options'")
        if len(log) == 0:
            raise RecsysError(f"{log.source}: no rating is >= the implicit threshold "
                              f"{options.implicit_threshold}; lower --implicit-threshold")
        pre.implicit_threshold = None  # already applied while reading
    if consume:
        data, report = preprocess_log(log, pre, source=str(log.source))
    else:
        data, report = preprocess(log.user, log.item, log.rating, log.timestamp, pre,
                                  source=str(log.source))
    if log.threshold_applied is not None:
        report["below_threshold_dropped"] = log.below_threshold_dropped
        report["rating_scale"] = log.rating_range
        report["rows_in"] = log.rows_read - log.missing_dropped
    if options.split == "none":
        options = dataclasses.replace(options, test_fraction=0.0)  # recorded: no test part
    labels, split_info, cold_items = _split(data, options)
    meta = _base_meta(name, source, {"ratings": log}, options, report)
    return _build(data, labels, split_info, meta, item_info,
                  need_eval=options.split != "none", cold_items=cold_items)


def _from_parts(logs: dict[str, RatingLog], options: PrepareOptions, source: dict[str, Any],
                item_info: pd.DataFrame | None, name: str) -> Dataset:
    """Given parts (bring-your-own or canonical folds): one table with a part column."""
    codes = {"train": S.TRAIN, "valid": S.VALID, "test": S.TEST}
    train = logs["train"]
    for part, log in logs.items():
        if part != "train" and not _shares_ids(log.user, train.user):
            raise RecsysError(f"{log.source}: none of its users appear in {train.source}; both "
                              "files must use the same user ids (check the user column, or map "
                              "it with --columns user=NAME)")
    with_rating = [log.rating is not None for log in logs.values()]
    if any(with_rating) and not all(with_rating):
        missing = next(log.source for log in logs.values() if log.rating is None)
        raise RecsysError(f"{missing}: no rating column, while the other files have one; give "
                          "all files a rating column or none")
    with_time = all(log.timestamp is not None for log in logs.values())

    def cat(get: Any) -> np.ndarray:
        return np.concatenate([get(log) for log in logs.values()])

    # One id rule over all the files: text in one makes the column text in all.
    user = join_ids([log.user for log in logs.values()])
    item = join_ids([log.item for log in logs.values()])
    rating = cat(lambda lg: lg.rating) if all(with_rating) else None
    timestamp = cat(lambda lg: lg.timestamp) if with_time else None
    part = np.concatenate([np.full(len(log), codes[p], np.int8) for p, log in logs.items()])
    # Without timestamps "latest" means "later in the input": train, valid, test, in that order.
    data, report = preprocess(user, item, rating, timestamp, options.preprocess_options(),
                              extra={"part": part},
                              source=", ".join(str(log.source) for log in logs.values()))
    labels = data.extra.pop("part")
    if "valid" not in logs:
        # The canonical folds and training files without a validation file: carve it from the
        # training part (never from the test file), so early stopping and tuning have something
        # to look at.
        labels = S.carve_valid(labels, data.user, data.n_users, options.valid_fraction,
                               options.seed)
    meta = _base_meta(name, source, logs, options, report)
    return _build(data, labels, {"given_parts": list(logs)}, meta, item_info,
                  given_sources={p: str(log.source) for p, log in logs.items()})


def _shares_ids(values: np.ndarray, train: np.ndarray) -> bool:
    if (values.dtype.kind == "i") != (train.dtype.kind == "i"):
        values, train = values.astype(str), train.astype(str)
    return bool(pd.Index(values).isin(pd.Index(train)).any())


def _split(data: Encoded, o: PrepareOptions
           ) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None]:
    """Labels, the split's record and (cold-items only) the held-out items' mask."""
    info: dict[str, Any] = {}
    cold_items = None
    if o.split == "random":
        labels = S.split_random(data.user, data.n_users, o.test_fraction, o.valid_fraction,
                                o.seed)
    elif o.split == "temporal-user":
        labels = S.split_temporal_user(data.user, data.item, data.timestamp, data.n_users,
                                       o.test_fraction, o.valid_fraction)
    elif o.split == "temporal-global":
        labels, info = S.split_temporal_global(data.timestamp, o.test_fraction, o.valid_fraction)
    elif o.split == "loo":
        labels = S.split_loo(data.user, data.item, data.timestamp, data.n_users, o.loo_order,
                             valid=o.valid_fraction > 0, seed=o.seed)
    elif o.split == "strong":
        labels, info = S.split_strong(data.user, data.item, data.n_users, data.n_items,
                                      o.heldout_users, o.test_fraction, o.seed)
    elif o.split == "cold-items":
        labels, info, cold_items = S.split_cold_items(data.user, data.item, data.n_users,
                                                      data.n_items, o.cold_item_fraction,
                                                      o.valid_fraction, o.seed)
    elif o.split == "none":
        labels = S.carve_valid(np.full(len(data.user), S.TRAIN, np.int8), data.user,
                               data.n_users, o.valid_fraction, o.seed)
    else:
        from recsys.errors import closest

        raise RecsysError(f"unknown split '{o.split}'{closest(o.split, S.SPLITS)}; choose from "
                          f"{', '.join(S.SPLITS)}")
    return labels, info, cold_items


def _base_meta(name: str, source: dict[str, Any], logs: dict[str, RatingLog],
               options: PrepareOptions, report: dict[str, Any]) -> dict[str, Any]:
    notes = [n for log in logs.values() for n in log.notes]
    return {
        "dataset": name,
        **source,
        "source_files": {str(log.source.name if k == "ratings" else f"{k}:{log.source.name}"):
                         {"path": str(log.source), "sha256": log.sha256, "rows": log.rows_read}
                         for k, log in logs.items()},
        "missing_value_rows_dropped": sum(log.missing_dropped for log in logs.values()),
        "preprocessing": options.preprocess_options().to_dict(),
        "split": {k: v for k, v in options.to_dict().items()
                  if k in ("split", "test_fraction", "valid_fraction", "seed", "heldout_users",
                           "loo_order", "cold_item_fraction")},
        "options": options.to_dict(),
        "implicit": options.implicit_threshold is not None,
        "preprocess_report": report,
        "notes": notes,
    }


def _build(data: Encoded, labels: np.ndarray, split_info: dict[str, Any], meta: dict[str, Any],
           item_info: pd.DataFrame | None, given_sources: dict[str, str] | None = None,
           need_eval: bool = True, cold_items: np.ndarray | None = None) -> Dataset:
    """The parts of ``data`` by ``labels``. ``need_eval``: refuse a split that leaves nothing
    to evaluate (off for `--split none`, which is meant to train on everything).
    ``cold_items``: items kept in the catalogue with no train or valid interaction (the
    cold-items split's held-out items)."""
    labels, dropped = S.drop_unseen(labels, data.user, data.item, data.n_users, data.n_items,
                                    cold_items)
    # Strong generalisation drops held-out users' unseen items before their fold-in split.
    for part, n in split_info.get("unseen_item_interactions_dropped", {}).items():
        dropped["unseen_items"][part] += n
    if not (labels == S.TRAIN).any():
        if given_sources:
            raise RecsysError(f"{given_sources['train']}: no training interaction is left (every "
                              "pair is repeated in a later file, and the latest copy wins)")
        raise RecsysError("the split left no training interactions; lower --test-fraction")
    eval_codes = [c for c in (S.VALID, S.TEST) if (labels == c).any()]
    if given_sources and "test" in given_sources and not (labels == S.TEST).any():
        raise RecsysError(f"{given_sources['test']}: no test interaction is left (its users or "
                          "items never occur in training); nothing could be evaluated")
    if not eval_codes and need_eval:
        lost = [f"{n:,} held-out interactions name items never seen in training"
                for n in [sum(dropped["unseen_items"].values())] if n]
        lost += [f"{n:,} belong to users without history"
                 for n in [sum(v["interactions"] for v in dropped["no_history"].values())] if n]
        why = f" ({'; '.join(lost)})" if lost else ""
        raise RecsysError(f"the split left nothing to evaluate: no valid or test interactions{why}"
                          "; raise --test-fraction, lower the filters, or pick another --split")
    rating_scale = [float(data.rating.min()), float(data.rating.max())]
    raw_scale = meta["preprocess_report"].get("rating_scale")
    # Vocabularies: users with anything left; items that occur in train or valid (the
    # catalogue: the final model is refitted on both, see `S.drop_unseen`), and the cold-items
    # split's held-out items.
    keep = labels >= S.TRAIN
    used_users = np.bincount(data.user[keep], minlength=data.n_users) > 0
    fit_rows = keep & (labels <= S.VALID)
    used_items = np.bincount(data.item[fit_rows], minlength=data.n_items) > 0
    if cold_items is not None:
        used_items |= cold_items
    remap_u = (np.cumsum(used_users) - 1).astype(np.int32)
    remap_i = (np.cumsum(used_items) - 1).astype(np.int32)
    users = Vocabulary(data.user_ids[used_users])
    items = Vocabulary(data.item_ids[used_items])
    shape = (len(users), len(items))
    masks = {name: mask for name, code in S.PART_LABELS.items()
             for mask in [labels == code] if mask.any()}
    # Column by column, each of `data`'s columns is released once split into the parts, so the
    # whole table and all its parts never coexist (they did at the former peak of `prepare`).
    # `data` is emptied: no caller reads it afterwards.
    stamps = {n: None if data.timestamp is None else data.timestamp[m] for n, m in masks.items()}
    data.timestamp = None
    ratings = {n: data.rating[m] for n, m in masks.items()}
    data.rating = np.empty(0, np.float32)
    cols = {n: remap_i[data.item[m]] for n, m in masks.items()}
    data.item = np.empty(0, np.int32)
    parts: dict[str, Interactions] = {}
    for name, mask in masks.items():
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(remap_u[data.user[mask]], minlength=shape[0]), out=indptr[1:])
        matrix = sp.csr_matrix((ratings.pop(name), cols.pop(name), indptr), shape=shape,
                               copy=False)
        parts[name] = Interactions(matrix, users, items, stamps.pop(name))
    data.user = np.empty(0, np.int32)
    if item_info is not None:
        item_info = _align_item_info(item_info, items)
    meta.update({
        "implicit": meta["implicit"],
        "rating_scale": raw_scale or rating_scale,
        "split_info": split_info,
        "dropped": {
            "missing_values": meta["missing_value_rows_dropped"],
            "duplicates": meta["preprocess_report"]["duplicates_dropped"],
            "below_threshold": meta["preprocess_report"]["below_threshold_dropped"],
            "min_counts": meta["preprocess_report"]["min_count_dropped"],
            "unseen_items": dropped["unseen_items"],
            "no_history": dropped["no_history"],
        },
        "counts": {"users": shape[0], "items": shape[1],
                   "interactions": {n: p.nnz for n, p in parts.items()}},
    })
    if given_sources:
        meta["given_files"] = given_sources
    return Dataset(parts, meta, item_info)


def _align_item_info(info: pd.DataFrame, items: Vocabulary) -> pd.DataFrame:
    info = info.drop_duplicates("item", keep="last")
    idx = items.index(info["item"].to_numpy())
    info = info.loc[idx >= 0].copy()
    info["_pos"] = idx[idx >= 0]
    return info.sort_values("_pos").drop(columns="_pos").reset_index(drop=True)


def summary(ds: Dataset) -> str:
    """A few lines for the end of `recsys prepare`."""
    m = ds.meta
    lines = [f"{m.get('dataset') or 'data'}: {len(ds.users):,} users x {len(ds.items):,} items, "
             f"{'implicit (1.0 = rating >= ' + str(m['options']['implicit_threshold']) + ')' if ds.implicit else 'explicit ratings'}"]  # noqa: E501
    for name, part in ds.parts.items():
        lines.append(f"  {name:<14} {part.nnz:>11,} interactions  "
                     f"{len(part.active_users()):>9,} users")
    lines.append(f"  valid: {_valid_origin(ds)}")
    for side in SIDES:
        table = ds.features.side(side)
        if table is not None:
            lines.append(f"  {side} features: {table.dim:,} columns from "
                         f"{Path(m['features'][side]['source']).name}")
    if m["split"].get("split") == "cold-items":
        lines.append(f"  cold items: {m['split_info']['cold_items']:,} held out of train and "
                     "valid, in the test part only")
    d = m["dropped"]
    unseen = sum(d["unseen_items"].values())
    no_hist = sum(v["interactions"] for v in d["no_history"].values())
    lines.append(f"  dropped: {d['missing_values']:,} rows with missing values, "
                 f"{d['duplicates']:,} duplicates, {d['below_threshold']:,} below threshold, "
                 f"{d['min_counts']:,} by minimum counts, {unseen:,} with items unseen in "
                 f"train and valid, {no_hist:,} of users without history")
    return "\n".join(lines)


def _valid_origin(ds: Dataset) -> str:
    """How the validation part was made, in words (for the summary)."""
    m, sp = ds.meta, ds.meta["split"]
    if "valid" not in ds.parts:
        return "none"
    if "valid" in m.get("given_files", {}):
        return f"from {m['given_files']['valid']}"
    share, seed = f"{sp['valid_fraction'] * 100:g}%", sp["seed"]
    by_split = {
        "random": f"{share} of each user's interactions left after the test holdout (seed {seed})",
        "temporal-user": f"each user's latest {share} of the interactions before the test part",
        "temporal-global": f"the latest {share} of the interactions before the test cut",
        "loo": "one more interaction per user, "
               + ("the latest before the test one" if sp["loo_order"] == "last"
                  else f"at random (seed {seed})"),
        "strong": f"{m['split_info'].get('heldout_users', '?')} held-out users, folded in "
                  f"(seed {seed})",
    }
    return by_split.get(sp["split"],  # none, the ml-100k folds, training files: the carve
                        f"{share} of each user's training interactions (seed {seed})")

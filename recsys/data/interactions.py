"""The data model: id vocabularies, interaction matrices and prepared datasets.

An `Interactions` is a users x items CSR matrix (ratings, or 1.0 for implicit data) with the
vocabularies that map internal row/column indices back to the original (external) ids. A
`Dataset` is a prepared split: several named parts that share one vocabulary, saved as
CSR ``.npz`` files + Parquet vocabularies + ``metadata.json``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.features import (
    FEATURE_FILES,
    Features,
    load_features,
    metadata_record,
    save_features,
)
from recsys.data.io import check_replaceable, read_json, replace_dir, write_json
from recsys.errors import RecsysError

FORMAT_VERSION = 1

# Parts in the order they become known. The history a model sees when a part is evaluated is the
# sum of every part before it (see `Dataset.history`).
PART_ORDER = ("train", "valid_history", "valid", "test_history", "test")

# What a known user is scored from (and masked with) when lists are written: see
# `Dataset.known_history`.
HISTORIES = ("before-test", "all")

# The kind in a prepared dataset's marker (recsys.data.io.replace_dir), and the files a dataset
# written before markers existed may hold: only such a folder is replaced without a marker.
DATASET_KIND = "dataset"
_DATASET_FILES = frozenset({"metadata.json", "users.parquet", "items.parquet",
                            "item_info.parquet", *FEATURE_FILES,
                            *(f"{part}.npz" for part in PART_ORDER)})


class Vocabulary:
    """External ids <-> internal indices (0..n-1). Ids are int64 when all integral, else str."""

    def __init__(self, ids: Any) -> None:
        ids = np.asarray(ids)
        if ids.dtype.kind in "iu":
            ids = ids.astype(np.int64)
        elif ids.dtype.kind != "O" or not all(isinstance(x, str) for x in ids):
            ids = ids.astype(str).astype(object)
        self.ids: np.ndarray = ids
        self._index = pd.Index(ids)
        if not self._index.is_unique:
            raise ValueError("vocabulary ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and np.array_equal(self.ids, other.ids)

    @property
    def is_integer(self) -> bool:
        return self.ids.dtype.kind == "i"

    def coerce(self, values: Any) -> np.ndarray:
        """Cast raw values (e.g. read from a CSV) to this vocabulary's id type, where possible."""
        values = np.asarray(values)
        if self.is_integer and values.dtype.kind not in "iu":
            return _exact_int64(values)
        if not self.is_integer:
            return values.astype(str).astype(object)
        return values.astype(np.int64)

    def index(self, values: Any) -> np.ndarray:
        """Internal indices of external ids; -1 where an id is unknown."""
        return self._index.get_indexer(self.coerce(values)).astype(np.int64)

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(indices)]

    def to_frame(self, name: str) -> pd.DataFrame:
        return pd.DataFrame({name: self.ids})


_INT64_MAX = str(np.iinfo(np.int64).max)  # 19 digits; the most negative is one more
# An integer id written plainly, the one spelling an integer vocabulary's ids have (the reading
# rule of recsys.data.readers): '007' and '+7' are other ids than 7.
PLAIN_INTEGER = r"(?:0|-?[1-9][0-9]*)"


def _exact_int64(values: np.ndarray) -> np.ndarray:
    """Raw ids (text) as int64, exactly; int64's minimum where a value is no integer or does not
    fit. Decimal strings are parsed as integers, never through a float: via a float,
    '9007199254740993' would become another user's id (9007199254740992)."""
    out = np.full(len(values), np.iinfo(np.int64).min, dtype=np.int64)
    if not len(values):
        return out
    text = pd.Series(values, dtype=object).astype(str).str.strip()
    integer = text.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
    # Ids are compared as written: '007' or '+7' is no integer id ('7' is; see readers).
    digits = text.str.fullmatch(PLAIN_INTEGER).to_numpy(dtype=bool)
    if digits.any():
        raw = text[digits]
        magnitude = raw.str.lstrip("-")
        negative = raw.str.startswith("-")
        bound = np.where(negative, str(int(_INT64_MAX) + 1), _INT64_MAX)
        length = magnitude.str.len().to_numpy()
        # Same length: the string order is the numeric order.
        fits = (length < 19) | ((length == 19) & (magnitude.to_numpy(dtype=str) <= bound))
        keep = np.flatnonzero(digits)[fits]
        if len(keep):
            out[keep] = pd.to_numeric(raw[fits]).to_numpy(dtype=np.int64)
    other = ~integer
    if other.any():  # "5.0", "1e3": integral floats small enough to be exact
        numeric = pd.to_numeric(text[other], errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok = (np.isfinite(numeric) & (numeric == np.round(numeric))
                  & (np.abs(numeric) <= 2.0**53))
        out[np.flatnonzero(other)[ok]] = numeric[ok].astype(np.int64)
    return out


@dataclass
class Interactions:
    """A users x items CSR matrix with its vocabularies (and timestamps aligned with ``.data``)."""

    matrix: sp.csr_matrix
    users: Vocabulary
    items: Vocabulary
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.matrix.shape != (len(self.users), len(self.items)):
            raise ValueError(
                f"matrix shape {self.matrix.shape} != vocabularies "
                f"({len(self.users)}, {len(self.items)})"
            )

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    def binary(self) -> sp.csr_matrix:
        """The 0/1 matrix of observed interactions (float32)."""
        out = self.matrix.copy().astype(np.float32)
        out.data[:] = 1.0
        return out

    def active_users(self) -> np.ndarray:
        """Internal ids of users with at least one interaction."""
        return np.flatnonzero(np.diff(self.matrix.indptr))

    def to_frame(self) -> pd.DataFrame:
        """Long format with internal indices: user, item, rating[, timestamp]."""
        coo = self.matrix.tocoo()
        frame = pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                              "rating": coo.data.astype(np.float32)})
        if self.timestamps is not None:
            frame["timestamp"] = self.timestamps
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, users: Vocabulary, items: Vocabulary) -> Interactions:
        """Build from long format with *internal* indices (columns user, item, rating[, timestamp]).

        Duplicated (user, item) pairs must have been resolved before (see preprocessing).
        """
        order = np.lexsort((frame["item"].to_numpy(), frame["user"].to_numpy()))
        frame = frame.iloc[order]
        rows = frame["user"].to_numpy(np.int64)
        cols = frame["item"].to_numpy(np.int64)
        if "rating" in frame:
            values = frame["rating"].to_numpy(np.float32)
        else:
            values = np.ones(len(frame), np.float32)
        indptr = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(users)), out=indptr[1:])
        matrix = sp.csr_matrix((values, cols.astype(np.int32), indptr),
                               shape=(len(users), len(items)))
        timestamps = frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame else None
        return cls(matrix, users, items, timestamps)

    def with_matrix(self, matrix: sp.csr_matrix, timestamps: np.ndarray | None = None
                    ) -> Interactions:
        return Interactions(matrix.tocsr(), self.users, self.items, timestamps)


@dataclass
class EvalSplit:
    """What evaluation of one part needs: the history the model sees (and that is masked before
    ranking) and the held-out target interactions, over the same users x items space."""

    history: sp.csr_matrix
    target: sp.csr_matrix
    users: np.ndarray  # internal ids of the users that have at least one target interaction
    skipped_users: int = 0  # users with target interactions but no history at all


@dataclass
class Dataset:
    """A prepared dataset: named parts over one shared users x items vocabulary."""

    parts: dict[str, Interactions]
    meta: dict[str, Any] = field(default_factory=dict)
    item_info: pd.DataFrame | None = None  # external item id + title/genres where known
    # User and item side information aligned with the vocabularies (recsys.data.features); the
    # metadata's "features" section records their columns, encoding and digest.
    features: Features = field(default_factory=Features)

    @property
    def train(self) -> Interactions:
        return self.parts["train"]

    @property
    def users(self) -> Vocabulary:
        return self.train.users

    @property
    def items(self) -> Vocabulary:
        return self.train.items

    @property
    def implicit(self) -> bool:
        return bool(self.meta.get("implicit", False))

    @property
    def rating_scale(self) -> tuple[float, float] | None:
        scale = self.meta.get("rating_scale")
        return (float(scale[0]), float(scale[1])) if scale else None

    def has(self, part: str) -> bool:
        return part in self.parts

    def history(self, part: str) -> sp.csr_matrix:
        """Everything known before ``part``: the input a model scores from, masked in ranking."""
        if part not in PART_ORDER:
            raise RecsysError(f"unknown part '{part}'; expected one of {', '.join(PART_ORDER)}")
        return self._sum(PART_ORDER[: PART_ORDER.index(part)])

    def _sum(self, names: Iterable[str]) -> sp.csr_matrix:
        """The float32 sum of the named parts this dataset has (the one home of that sum)."""
        total = sp.csr_matrix(self.train.matrix.shape, dtype=np.float32)
        for name in names:
            if name in self.parts:
                total = total + self.parts[name].matrix.astype(np.float32)
        return total.tocsr()

    def known_history(self, which: str = "before-test") -> sp.csr_matrix:
        """The history a known user is scored from and masked with when lists are written
        (`recsys recommend`, the pyfunc model, Spark scoring): the one home of that rule.

        ``before-test`` (default): what `recsys evaluate` scores the test part from,
        ``history("test")``, so that lists can be scored against the test part by any outside
        tool; data without a test part (``prepare --split none``) gives every part. ``all``:
        every part, test included: for production lists written after the test period.
        """
        if which not in HISTORIES:
            raise RecsysError(f"unknown history '{which}'; expected one of {', '.join(HISTORIES)}")
        if which == "before-test" and self.has("test"):
            return self.history("test")
        return self._sum(self.parts)

    def eval_split(self, part: str) -> EvalSplit:
        if part not in self.parts:
            raise RecsysError(f"the prepared data has no '{part}' part (it has: "
                              f"{', '.join(self.parts)})")
        history = self.history(part)
        target = self.parts[part].matrix
        has_target = np.diff(target.indptr) > 0
        has_history = np.diff(history.indptr) > 0
        users = np.flatnonzero(has_target & has_history)
        return EvalSplit(history, target, users, int((has_target & ~has_history).sum()))

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write atomically: the directory appears complete or not at all. An existing
        ``directory`` is replaced only when it is a prepared dataset (see `check_dataset_out`)."""
        with replace_dir(directory, DATASET_KIND, what="prepared dataset",
                         format_version=FORMAT_VERSION, legacy=_is_unmarked_dataset) as tmp:
            self.users.to_frame("user").to_parquet(tmp / "users.parquet", index=False)
            self.items.to_frame("item").to_parquet(tmp / "items.parquet", index=False)
            if self.item_info is not None:
                self.item_info.to_parquet(tmp / "item_info.parquet", index=False)
            save_features(self.features, tmp)
            for name, part in self.parts.items():
                m = part.matrix.tocsr()
                arrays = {"data": m.data.astype(np.float32), "indices": m.indices,
                          "indptr": m.indptr, "shape": np.asarray(m.shape)}
                if part.timestamps is not None:
                    arrays["timestamps"] = part.timestamps
                # Uncompressed: compression was two thirds of `prepare`'s time at ML-20M scale.
                np.savez(tmp / f"{name}.npz", **arrays)
            meta = dict(self.meta)
            meta["format_version"] = FORMAT_VERSION
            meta["parts"] = {name: {"users": int(len(p.active_users())), "interactions": p.nnz}
                             for name, p in self.parts.items()}
            meta["n_users"], meta["n_items"] = len(self.users), len(self.items)
            recorded = metadata_record(self.features, meta.pop("features", None))
            if recorded is not None:
                meta["features"] = recorded
            write_json(tmp / "metadata.json", meta)

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        directory = Path(directory)
        meta_path = directory / "metadata.json"
        if not meta_path.is_file():
            raise RecsysError(f"{directory} is not a prepared dataset (no metadata.json); "
                              "create one with `recsys prepare`")
        try:
            meta = read_json(meta_path)
            if not isinstance(meta, dict):
                raise RecsysError(f"{meta_path}: expected a JSON object; the prepared dataset "
                                  "is damaged: run `recsys prepare` again")
            users = Vocabulary(pd.read_parquet(directory / "users.parquet")["user"].to_numpy())
            items = Vocabulary(pd.read_parquet(directory / "items.parquet")["item"].to_numpy())
            parts = {}
            for name in PART_ORDER:
                path = directory / f"{name}.npz"
                if not path.exists():
                    continue
                try:
                    with np.load(path, allow_pickle=False) as z:
                        matrix = sp.csr_matrix((z["data"], z["indices"], z["indptr"]),
                                               shape=tuple(z["shape"]))
                        ts = z["timestamps"] if "timestamps" in z else None
                except (OSError, ValueError, KeyError) as exc:
                    # numpy's own message for a file that is not an .npz suggests unpickling
                    # it; never pass that on.
                    raise RecsysError(f"{path}: not a valid part file ({type(exc).__name__}); "
                                      "the prepared dataset is damaged: run `recsys prepare` "
                                      "again") from None
                parts[name] = Interactions(matrix, users, items, ts)
            info_path = directory / "item_info.parquet"
            item_info = pd.read_parquet(info_path) if info_path.exists() else None
            features = load_features(directory, meta, {"user": len(users), "item": len(items)})
        except RecsysError:
            raise
        except Exception as exc:  # a corrupt or partial directory: say which, not a traceback
            raise RecsysError(f"{directory}: cannot read prepared dataset ({exc})") from exc
        if "train" not in parts:
            raise RecsysError(f"{directory}: prepared dataset has no train.npz")
        return cls(parts, meta, item_info, features)


def check_dataset_out(directory: str | Path, flag: str = "--out") -> None:
    """Refuse (one line) a ``directory`` that saving a dataset must not replace: anything but a
    new or empty folder, or a prepared dataset holding only its own files."""
    check_replaceable(directory, DATASET_KIND, what="prepared dataset", flag=flag,
                      legacy=_is_unmarked_dataset)


def _is_unmarked_dataset(folder: Path) -> bool:
    """A prepared dataset written before markers existed: nothing but a dataset's files, and a
    metadata.json that is ours (a JSON object with a format_version)."""
    entries = set(os.listdir(folder))
    if "metadata.json" not in entries or not entries <= _DATASET_FILES:
        return False
    try:
        meta = read_json(folder / "metadata.json")
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" in meta

"""Side information: user and item feature matrices aligned with a dataset's vocabularies.

A feature source is a table with an id column and feature columns (a CSV/Parquet file given to
`recsys prepare --user-features/--item-features`, or what MovieLens ships: genres and year of a
movie, age, gender and occupation of a user). `encode_features` turns it into a float32 matrix
whose rows follow the dataset's user (or item) vocabulary:

- a numeric column is standardised (mean 0, standard deviation 1 over the rows that have
  features; a missing value becomes the mean, 0);
- a text column is categorical: one column per value (``name=value``), 1.0 where it holds; a
  multi-valued field (``Action|Comedy``, or a Parquet list of strings) sets one column per value;
- anything else (dates, binary, nested values, text with more distinct values than a category
  set may have) is refused in one line naming the file and the column.

Feature rows whose id the dataset does not know are counted and ignored; ids without a feature
row get a zero vector, counted. The encoding (each source column's kind, mean and deviation or
its category values) is the feature set's vocabulary, recorded in the dataset's metadata beside
the SHA-256 of the matrix, so that the dataset's digest covers its features and new rows (cold
users) can be encoded the same way (`apply_encoding`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.errors import RecsysError

SIDES = ("user", "item")
MULTI_SEPARATOR = "|"
# More distinct values than this in a text column: free text or ids, not a category set (a
# one-hot matrix that wide would also be larger than the interactions it describes).
MAX_CATEGORIES = 1000
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T].*)?$")


@dataclass(frozen=True)
class FeatureTable:
    """One side's features: ``values`` (n_ids x n_columns, float32) in vocabulary order."""

    values: np.ndarray
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.columns):
            raise ValueError(f"feature values {self.values.shape} do not match "
                             f"{len(self.columns)} column names")

    @property
    def dim(self) -> int:
        return len(self.columns)

    def digest(self) -> str:
        """SHA-256 of the column names and the values (what the dataset's metadata records)."""
        h = hashlib.sha256("\0".join(self.columns).encode("utf-8"))
        h.update(np.ascontiguousarray(self.values, dtype="<f4").tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Features:
    """The side information of a dataset, on `Dataset.features` and `FitContext.features`;
    either side may be absent (None)."""

    user: FeatureTable | None = None
    item: FeatureTable | None = None

    def side(self, name: str) -> FeatureTable | None:
        return self.user if name == "user" else self.item

    def __bool__(self) -> bool:
        return self.user is not None or self.item is not None


@dataclass
class Encoded:
    """A feature table and how it was made (the metadata's record of it)."""

    table: FeatureTable
    record: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- reading a feature file ------------------------------------------------------------------


def read_feature_file(path: str | os.PathLike[str], side: str) -> pd.DataFrame:
    """A CSV (separator sniffed) or Parquet feature file as a frame whose first column is the
    id (the column named ``side`` when there is one). CSV cells are kept as text; the column
    kinds are decided by `encode_features`."""
    from recsys.data.readers import check_readable, is_parquet, sniff_separator

    path = Path(path)
    flag = f"--{side}-features"
    if not path.is_file():
        raise RecsysError(f"{flag} {path}: file not found (check the path)")
    check_readable(path)
    try:
        if is_parquet(path):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep=sniff_separator(path), dtype=str,
                                keep_default_na=False, na_values=[""], engine="c")
    except RecsysError:
        raise
    except Exception as exc:  # pyarrow, pandas' parser, bad bytes: one line naming the file
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecsysError(f"{flag} {path}: cannot parse the feature file ({text[:200]})"
                          ) from None
    if frame.shape[1] < 2 or len(frame) == 0:
        raise RecsysError(f"{flag} {path}: expected a header with an id column and at least one "
                          "feature column, and one row per id")
    names = [str(c) for c in frame.columns]
    frame.columns = names
    id_column = side if side in names else names[0]
    return frame[[id_column, *[c for c in names if c != id_column]]]


# -- encoding --------------------------------------------------------------------------------


def _column_kind(values: pd.Series, where: str) -> str:
    """numeric, categorical or multi (multi-valued categorical); one line for anything else."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "categorical"  # a Parquet dictionary column, or codes a source marks as such
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype) or isinstance(dtype, pd.PeriodDtype):
        raise RecsysError(f"{where}: holds dates, neither numeric nor categorical; give a "
                          "number instead (e.g. the year)")
    present = values.dropna()
    if present.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).all() and len(present):
        return "multi"
    if not present.map(lambda v: isinstance(v, str)).all():
        kinds = sorted({type(v).__name__ for v in present if not isinstance(v, str)})
        raise RecsysError(f"{where}: holds {', '.join(kinds)} values, neither numeric nor "
                          "categorical; give numbers or text")
    text = present.str.strip()
    text = text[text != ""]  # an empty cell is a missing value
    if len(text) and pd.to_numeric(text, errors="coerce").notna().all():
        return "numeric"
    if len(text) and text.str.match(_ISO_DATE).all():
        raise RecsysError(f"{where}: holds dates, neither numeric nor categorical; give a "
                          "number instead (e.g. the year)")
    return "multi" if text.str.contains(MULTI_SEPARATOR, regex=False).any() else "categorical"


def _tokens(values: pd.Series, kind: str) -> pd.Series:
    """Each row's category values as a list (empty where missing)."""
    values = values.astype(object)
    if kind == "multi":
        def split(v: Any) -> list[str]:
            if isinstance(v, str):
                return [t.strip() for t in v.split(MULTI_SEPARATOR) if t.strip()]
            if isinstance(v, (list, tuple, np.ndarray)):
                return [str(t).strip() for t in v if t is not None and str(t).strip()]
            return []
        return values.map(split)
    return values.map(lambda v: [] if v is None or (isinstance(v, float) and np.isnan(v))
                      else [str(v).strip()] if str(v).strip() else [])


def _numeric(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(np.float64)


def encode_features(frame: pd.DataFrame, vocab: Any, *, side: str, source: str,
                    sha256: str | None = None) -> Encoded:
    """Encode ``frame`` (id column first, then feature columns) into a matrix whose rows follow
    ``vocab`` (a `Vocabulary`); the record describes the encoding for the metadata."""
    where_file = f"{source}"
    ids = frame.iloc[:, 0]
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0]) + 2
        raise RecsysError(f"{where_file}: row {row} has no {side} id")
    index = vocab.index(ids.to_numpy())
    raw = pd.Series(ids.to_numpy()).astype(str)
    repeated = raw.duplicated(keep=False).to_numpy()
    if repeated.any():
        first = raw[repeated].iloc[0]
        raise RecsysError(f"{where_file}: {side} id {first} appears on "
                          f"{int((raw == first).sum())} rows; give one row per {side}")
    known = index >= 0
    unknown = int((~known).sum())
    frame = frame.loc[known]
    rows = index[known]
    encoding: list[dict[str, Any]] = []
    blocks: list[np.ndarray] = []
    columns: list[str] = []
    for name in frame.columns[1:]:
        where = f"{where_file}: column '{name}'"
        kind = _column_kind(frame[name], where)
        if kind == "numeric":
            x = _numeric(frame[name])
            finite = np.isfinite(x)
            mean = float(x[finite].mean()) if finite.any() else 0.0
            std = float(x[finite].std()) if finite.any() else 0.0
            spec: dict[str, Any] = {"column": name, "kind": "numeric", "mean": mean, "std": std}
        else:
            tokens = _tokens(frame[name], kind)
            values = sorted({t for row in tokens for t in row})
            if len(values) > MAX_CATEGORIES:
                raise RecsysError(f"{where}: {len(values):,} distinct text values, neither "
                                  f"numeric nor categorical (a category set has at most "
                                  f"{MAX_CATEGORIES:,}); drop the column or map it to fewer "
                                  "values")
            spec = {"column": name, "kind": kind, "values": values}
        encoding.append(spec)
        block, names = _apply_column(frame[name], spec)
        blocks.append(block)
        columns.extend(names)
    dense = np.zeros((len(vocab), len(columns)), dtype=np.float32)
    if len(rows):
        dense[rows] = np.hstack(blocks) if blocks else np.zeros((len(rows), 0), np.float32)
    without = int(len(vocab) - len(rows))
    table = FeatureTable(dense, tuple(columns))
    notes = []
    if unknown:
        notes.append(f"{source}: {unknown:,} feature rows name {side}s the data does not have; "
                     "ignored")
    if without:
        notes.append(f"{source}: {without:,} of {len(vocab):,} {side}s have no feature row; "
                     "they get a zero feature vector")
    record = {"source": source, "columns": list(columns), "encoding": encoding,
              "rows": int(len(ids)), "unknown_ids_ignored": unknown,
              "ids_without_features": without, "sha256": table.digest()}
    if sha256 is not None:
        record["source_sha256"] = sha256
    return Encoded(table, record, notes)


def _apply_column(values: pd.Series, spec: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    name = spec["column"]
    if spec["kind"] == "numeric":
        x = _numeric(values)
        std = spec["std"] if spec["std"] > 0 else 1.0
        out = np.where(np.isfinite(x), (x - spec["mean"]) / std, 0.0)
        if spec["std"] <= 0:
            out = np.zeros_like(out)  # a constant column carries nothing
        return out.astype(np.float32)[:, None], [name]
    position = {v: j for j, v in enumerate(spec["values"])}
    out = np.zeros((len(values), len(position)), dtype=np.float32)
    tokens = _tokens(values, spec["kind"])
    r = np.repeat(np.arange(len(tokens)), tokens.map(len).to_numpy())
    c = np.array([position.get(t, -1) for row in tokens for t in row], dtype=np.int64)
    keep = c >= 0  # a value the encoding has never seen (a cold user's) sets nothing
    out[r[keep], c[keep]] = 1.0
    return out, [f"{name}={v}" for v in spec["values"]]


def apply_encoding(frame: pd.DataFrame, encoding: list[dict[str, Any]], *, source: str
                   ) -> np.ndarray:
    """Rows of ``frame`` (id column first) encoded as the dataset's features were: the same
    columns in the same order; a recorded source column missing from ``frame`` is refused."""
    blocks = []
    for spec in encoding:
        if spec["column"] not in frame.columns:
            raise RecsysError(f"{source}: no column '{spec['column']}' (the prepared data's "
                              "features were made from it)")
        blocks.append(_apply_column(frame[spec["column"]].reset_index(drop=True), spec)[0])
    if not blocks:
        return np.zeros((len(frame), 0), np.float32)
    return np.hstack(blocks).astype(np.float32)


# -- persistence -----------------------------------------------------------------------------


def feature_file(side: str) -> str:
    return f"{side}_features.npy"


FEATURE_FILES = tuple(feature_file(s) for s in SIDES)


def save_features(features: Features, directory: Path) -> None:
    for side in SIDES:
        table = features.side(side)
        if table is not None:
            np.save(directory / feature_file(side), table.values, allow_pickle=False)


def metadata_record(features: Features, recorded: Any) -> dict[str, Any] | None:
    """The metadata's "features" section for ``features``: what prepare recorded of each side
    (source, encoding, counts), with the columns and digest of the tables actually saved; None
    without features, so that a dataset without them has the metadata (and digest) it had
    before features existed."""
    recorded = recorded if isinstance(recorded, dict) else {}
    out = {}
    for side in SIDES:
        table = features.side(side)
        if table is not None:
            out[side] = {**recorded.get(side, {}), "columns": list(table.columns),
                         "sha256": table.digest()}
    return out or None


def load_features(directory: Path, meta: dict[str, Any], n_ids: dict[str, int]) -> Features:
    """The features the metadata records (none for a dataset prepared without them, or before
    features existed); a file whose shape or digest differs from the record is refused."""
    recorded = meta.get("features")
    if not isinstance(recorded, dict):
        return Features()
    tables: dict[str, FeatureTable] = {}
    for side, record in recorded.items():
        path = directory / feature_file(side)
        try:
            values = np.load(path, allow_pickle=False)
            table = FeatureTable(np.asarray(values, dtype=np.float32),
                                 tuple(str(c) for c in record["columns"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecsysError(f"{path}: not a valid feature file ({type(exc).__name__}); the "
                              "prepared dataset is damaged: run `recsys prepare` again") from None
        if table.values.shape[0] != n_ids[side] or table.digest() != record.get("sha256"):
            raise RecsysError(f"{path}: does not match the {side} features metadata.json "
                              "records; the prepared dataset is damaged: run `recsys prepare` "
                              "again")
        tables[side] = table
    return Features(user=tables.get("user"), item=tables.get("item"))

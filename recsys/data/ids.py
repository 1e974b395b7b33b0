"""Id files a user hands the commands: users to score, allow/deny item lists, new users'
histories (CSV with a header, one id per line, or Parquet).

Ids are compared as written: for an integer vocabulary '007' is no id (never 7), for a text one
it is '007' only. A malformed file is one line naming the file and row (`RecsysError`); ids the
data does not know are counted in a note and ignored.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.interactions import PLAIN_INTEGER, Vocabulary
from recsys.errors import RecsysError

INT_SENTINEL = np.iinfo(np.int64).min  # what Vocabulary.coerce gives a non-integer id


def note(message: str) -> None:
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
    from recsys.data.readers import check_readable, is_parquet

    path = Path(path)
    if not path.exists():
        raise RecsysError(f"{path}: no such file")
    check_readable(path)
    if is_parquet(path):
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
        note(f"{flag} {path}: {unknown} of {len(index)} item ids are not in the catalogue; "
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
        note(f"--histories {path}: {int((~ok).sum())} of {len(item_idx)} rows name items not in "
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

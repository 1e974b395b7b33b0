"""Reading rating logs: CSV/TSV/Parquet files (or headerless MovieLens formats) into arrays.

A rating log is four aligned columns: ``user``, ``item`` (ids as found: int64 when integral,
else str), ``rating`` (float32, optional) and ``timestamp`` (int64 seconds, optional). Files are
parsed by pyarrow (multi-threaded, no per-row Python) and every way a file can be wrong ends in
one `RecsysError` line naming the file, the row and the column.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.data.io import sha256_file
from recsys.errors import RecsysError

FIELDS = ("user", "item", "rating", "timestamp")
REQUIRED = ("user", "item")
# Header names recognised without a --columns mapping (compared case-insensitively).
ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "user_id", "uid", "users"),
    "item": ("item", "itemid", "item_id", "iid", "movieid", "movie_id", "items"),
    "rating": ("rating", "ratings", "score", "value"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date"),
}
PARQUET_SUFFIXES = (".parquet", ".pq")
_SEPARATORS = (",", "\t", ";", "|")
_SEP_NAMES = {",": "comma", "\t": "tab", ";": "';'", "|": "'|'", ":": "':'", " ": "space"}


class _TextIds(Exception):
    """An id column parsed as floats holds integers too large to be exact: re-read it as text."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


@dataclass
class RatingLog:
    """Aligned columns of one rating file, plus what was rejected while reading it."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None
    timestamp: np.ndarray | None
    source: Path
    sha256: str = ""
    rows_read: int = 0
    missing_dropped: int = 0  # rows with an empty user, item, rating or timestamp
    notes: list[str] = field(default_factory=list)
    # Set when rows below an implicit threshold were skipped while reading (``min_rating``):
    threshold_applied: float | None = None
    below_threshold_dropped: int = 0
    rating_range: list[float] | None = None  # [min, max] of every rating read

    def __len__(self) -> int:
        return len(self.user)


def parse_column_mapping(spec: str | None) -> dict[str, str]:
    """``user=uid,item=iid,rating=score`` -> {"user": "uid", ...} (our field -> file column)."""
    if not spec:
        return {}
    out: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not value:
            raise RecsysError(f"--columns {spec!r}: expected field=COLUMN pairs such as "
                              "user=uid,item=iid")
        if key not in FIELDS:
            from recsys.errors import closest

            raise RecsysError(f"--columns: unknown field '{key}'{closest(key, FIELDS)}; "
                              f"fields are {', '.join(FIELDS)}")
        out[key] = value
    return out


def sniff_separator(path: Path, encoding: str = "utf-8") -> str:
    """The separator of a delimited file, judged from its first line (tab for .tsv)."""
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    with open(path, "rb") as f:
        first = f.readline(1 << 16).decode(encoding, errors="replace")
    counts = {s: first.count(s) for s in _SEPARATORS}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


def is_parquet(path: str | os.PathLike[str]) -> bool:
    """Read as Parquet (by its suffix), not as delimited text."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def read_rating_log(
    path: str | os.PathLike[str],
    *,
    sep: str | None = None,
    columns: dict[str, str] | None = None,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    require_rating: bool = False,
    hash_file: bool = True,
    min_rating: float | None = None,
) -> RatingLog:
    """Read a rating log.

    ``columns`` maps our fields to the file's column names (missing fields are looked up by
    their usual names, see `ALIASES`). ``names`` gives the column names of a headerless file;
    names starting with ``_`` are skipped (used for the empty fields between ``::`` separators).
    ``min_rating`` skips rows rated below it while reading (counted), which keeps peak memory
    near the size of what is kept; only valid where each (user, item) pair occurs once, since
    the duplicate policy must otherwise see the low ratings too.

    The file is parsed in blocks, each turned into compact numpy columns straight away, so the
    parser's own buffers never hold the whole file.
    """
    path = Path(path)
    if not path.is_file():
        hint = "it is a directory; pass the rating file inside it" if path.is_dir() else \
            "check the path"
        raise RecsysError(f"{path}: file not found ({hint})")
    if path.stat().st_size == 0:
        raise RecsysError(f"{path}: the file is empty; expected a header and rating rows")
    # The source hash goes into the prepared dataset's metadata; hashing in a thread overlaps it
    # with parsing (hashlib and pyarrow both release the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(sha256_file, path) if hash_file else None
        if is_parquet(path):
            table = _read_parquet(path)
            fields = _resolve_columns(table.column_names, columns or {}, path)
            table = table.select(list(fields.values())).rename_columns(list(fields))
            try:
                log = _collect(table.to_batches(max_chunksize=1 << 20), path, list(fields), 0,
                               require_rating, min_rating)
            except _TextIds as exc:
                raise RecsysError(f"{path} column '{fields[exc.field]}': ids are floats beyond "
                                  "2^53, which cannot be told apart; store them as strings or "
                                  "64-bit integers") from None
        else:
            log = _read_delimited(path, sep, columns, names, encoding, require_rating,
                                  min_rating)
        log.sha256 = digest.result() if digest else ""
    return log


# -- parsing ---------------------------------------------------------------------------------


def _resolve_columns(available: list[str], columns: dict[str, str], path: Path
                     ) -> dict[str, str]:
    """Our field -> the file's column name, for the fields present."""
    lower = {c.lower().strip(): c for c in available}
    found: dict[str, str] = {}
    for f in FIELDS:
        if f in columns:
            if columns[f] not in available:
                raise RecsysError(
                    f"{path}: no column '{columns[f]}' (mapped to {f} by --columns); the file's "
                    f"columns are {', '.join(available)}")
            found[f] = columns[f]
            continue
        for alias in ALIASES[f]:
            if alias in lower:
                found[f] = lower[alias]
                break
    for f in REQUIRED:
        if f not in found:
            if len(available) == 1:
                sep = next((s for s in (";", "\t", "|", ",", ":", " ") if s in available[0]),
                           None)
                arg = "$'\\t'" if sep == "\t" else repr(sep)
                guess = f"; the file looks {_SEP_NAMES[sep]}-separated: pass --sep {arg}" \
                    if sep else ""
                raise RecsysError(f"{path}: only one column ('{available[0][:60]}') was found, "
                                  f"so the delimiter is wrong{guess}")
            raise RecsysError(f"{path}: no '{f}' column (columns: {', '.join(available)}); "
                              f"rename it or map it with --columns {f}=NAME")
    return found


def _read_delimited(path: Path, sep: str | None, columns: dict[str, str] | None,
                    names: list[str] | None, encoding: str, require_rating: bool,
                    min_rating: float | None) -> RatingLog:
    sep = sep if sep is not None else sniff_separator(path, encoding)
    if sep in ("\\t", "tab", "TAB"):
        sep = "\t"
    if len(sep) != 1:
        raise RecsysError(f"--sep {sep!r}: the separator must be one character")
    header_rows = 0 if names else 1
    if names:
        file_columns = list(names)
        fields = {n: n for n in names if not n.startswith("_")}
    else:
        file_columns = _header(path, sep, encoding)
        fields = _resolve_columns(file_columns, columns or {}, path)
    if require_rating and "rating" not in fields:
        raise RecsysError(f"{path}: no 'rating' column (columns: {', '.join(file_columns)}); "
                          "map one with --columns rating=NAME")
    back = {v: k for k, v in fields.items()}
    text_ids: set[str] = set()
    while True:
        types: dict[str, pa.DataType] = {fields[f]: pa.string() for f in text_ids}
        if "rating" in fields:
            types[fields["rating"]] = pa.float32()
        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=names, encoding=encoding,
                                               block_size=1 << 22),
                parse_options=pacsv.ParseOptions(delimiter=sep),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(fields.values()), column_types=types,
                    null_values=[""], strings_can_be_null=True,
                    quoted_strings_can_be_null=True))
            batches = (b.rename_columns([back[c] for c in b.schema.names]) for b in reader)
            return _collect(batches, path, list(fields), header_rows, require_rating,
                            min_rating)
        except _TextIds as exc:
            # Integers beyond int64 were parsed as (inexact) floats: they are opaque labels.
            text_ids.add(exc.field)
            continue
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            _check_utf8(path, encoding)
            # Types are inferred from the first block; ids that turn out to be text later on
            # are read again as text.
            failed = _failed_field(str(exc), file_columns, back)
            if failed in ("user", "item") and failed not in text_ids \
                    and "conversion error" in str(exc):
                text_ids.add(failed)
                continue
            raise _explain_arrow_error(exc, path, fields, sep, encoding, header_rows,
                                       file_columns) from None


def _failed_field(message: str, file_columns: list[str], back: dict[str, str]) -> str | None:
    import re

    match = re.search(r"CSV column #(\d+)", message)
    if not match or int(match.group(1)) >= len(file_columns):
        return None
    return back.get(file_columns[int(match.group(1))])


def _header(path: Path, sep: str, encoding: str) -> list[str]:
    # A byte-order mark (Excel writes one) is not part of the first column's name.
    utf8 = encoding.lower().replace("-", "").replace("_", "") == "utf8"
    try:
        with open(path, encoding="utf-8-sig" if utf8 else encoding, newline="") as f:
            line = f.readline()
    except UnicodeDecodeError:
        _check_utf8(path, encoding)
        raise
    import csv

    return [c.strip() for c in next(csv.reader([line], delimiter=sep))]


def _check_utf8(path: Path, encoding: str) -> None:
    """On a parse error, first rule out bytes that are not valid in the file's encoding."""
    if encoding.lower().replace("-", "") not in ("utf8", "utf_8"):
        return
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecsysError(f"{path} row {line}: bytes that are not UTF-8 "
                          f"({data[exc.start:exc.start + 4]!r}); re-save the file as UTF-8"
                          ) from None


def _explain_arrow_error(exc: Exception, path: Path, fields: dict[str, str], sep: str,
                         encoding: str, header_rows: int, file_columns: list[str]
                         ) -> RecsysError:
    msg = str(exc).splitlines()[0]
    failed = _failed_field(msg, file_columns, {v: k for k, v in fields.items()})
    if "conversion error" in msg and failed == "timestamp":
        return RecsysError(f"{path} column '{fields['timestamp']}': {msg.split(': ', 1)[-1]}; "
                           "timestamps must be numbers or dates")
    if "conversion error" in msg and "rating" in fields:
        # Re-read the rating column as text to find the first value that is not a number.
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(
                column_names=None if header_rows else file_columns, encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(
                include_columns=[fields["rating"]],
                column_types={fields["rating"]: pa.string()}, null_values=[""],
                strings_can_be_null=True))
        raw = table.column(0).to_numpy(zero_copy_only=False)
        import pandas as pd

        numeric = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce")
        bad = np.flatnonzero(numeric.isna().to_numpy() & pd.notna(raw))
        if len(bad):
            row = int(bad[0]) + 1 + header_rows
            return RecsysError(f"{path} row {row} column '{fields['rating']}': {raw[bad[0]]!r} "
                               "is not a number; fix or remove the row")
    if "Expected" in msg and "columns" in msg:
        return RecsysError(f"{path}: rows have differing numbers of fields ({msg}); check the "
                           f"delimiter (--sep, now {_SEP_NAMES.get(sep, repr(sep))}) and quoting")
    return RecsysError(f"{path}: cannot parse ({msg})")


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RecsysError(f"{path}: not a readable Parquet file ({exc})") from None


# -- columns to arrays -----------------------------------------------------------------------


def _collect(batches: Iterator[pa.RecordBatch], path: Path, present: list[str],
             header_rows: int, require_rating: bool, min_rating: float | None) -> RatingLog:
    """Record batches -> compact numpy columns, block by block; rows with an empty field are
    rejected (counted), ratings must be finite numbers."""
    if require_rating and "rating" not in present:
        raise RecsysError(f"{path}: no 'rating' column (columns: {', '.join(present)}); map "
                          "one with --columns rating=NAME")
    chunks: dict[str, list[np.ndarray]] = {f: [] for f in present}
    rows = missing = below = 0
    lo, hi = np.inf, -np.inf
    notes: list[str] = []
    pool = pa.default_memory_pool()
    for k, batch in enumerate(batches):
        n = batch.num_rows
        empty = None
        for f in present:
            col = batch.column(f)
            if col.null_count:
                m = col.is_null().to_numpy(zero_copy_only=False)
                empty = m if empty is None else empty | m
        keep = None if empty is None else ~empty
        if empty is not None:
            missing += int(empty.sum())
        for f in ("user", "item"):
            if f in present and pa.types.is_floating(batch.column(f).type):
                _check_float_ids(batch.column(f), keep, path, f, rows + 1 + header_rows)
        if "rating" in present:
            col = batch.column("rating")
            if not pa.types.is_floating(col.type) and not pa.types.is_integer(col.type):
                raise RecsysError(f"{path} column 'rating': values are {col.type}, not numbers")
            r = col.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            bad = ~np.isfinite(r) if keep is None else ~np.isfinite(r) & keep
            if bad.any():
                first = int(np.argmax(bad))
                raise RecsysError(f"{path} row {rows + first + 1 + header_rows} column "
                                  f"'rating': {r[first]} is not a valid rating; fix or remove "
                                  "the row")
            valid = r if keep is None else r[keep]
            if len(valid):
                lo, hi = min(lo, float(valid.min())), max(hi, float(valid.max()))
            if min_rating is not None:
                positive = r >= np.float32(min_rating)
                below += int((~positive if keep is None else ~positive & keep).sum())
                keep = positive if keep is None else keep & positive
        for f in present:
            if f == "rating" and min_rating is not None:
                continue  # every kept rating is a positive: the value is not needed
            a = batch.column(f)
            if keep is not None:
                a = a.filter(pa.array(keep))
            chunks[f].append(_compact(a, f, path, notes, rows, header_rows))
        rows += n
        del batch
        if k % 16 == 15:
            pool.release_unused()  # hand the parser's freed blocks back as we go
    if rows == 0:
        raise RecsysError(f"{path}: no rating rows after the header")
    if missing == rows:
        raise RecsysError(f"{path}: every row has an empty user, item, rating or timestamp")
    cols = {f: _concat(chunks.pop(f)) for f in list(chunks) if chunks[f]}
    pool.release_unused()
    user, item = _ids(cols["user"], path, "user", notes), _ids(cols["item"], path, "item", notes)
    rating = cols.get("rating") if min_rating is None else None
    return RatingLog(user, item, rating, cols.get("timestamp"), path, rows_read=rows,
                     missing_dropped=missing, notes=list(dict.fromkeys(notes)),
                     threshold_applied=min_rating, below_threshold_dropped=below,
                     rating_range=[lo, hi] if "rating" in present and lo <= hi else None)


def _check_float_ids(col: pa.Array, keep: np.ndarray | None, path: Path, name: str,
                     first_row: int) -> None:
    """Ids that came out as floats: NaN, infinite or fractional ones are errors (naming the
    row); integers too large to be exact in a float are re-read as text (`_TextIds`)."""
    v = col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(v) | (v != np.round(v))
    if keep is not None:
        bad &= keep
    if bad.any():
        i = int(np.argmax(bad))
        what = "are fractional numbers" if np.isfinite(v[i]) else "are not numbers"
        raise RecsysError(f"{path} row {first_row + i} column '{name}': ids {what} "
                          f"('{float(v[i]):g}'); ids must be integers or text")
    big = np.abs(v) > 2.0**53
    if keep is not None:
        big &= keep
    if big.any():
        raise _TextIds(name)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    if any(p.dtype == object for p in parts):
        return np.concatenate([p.astype(object) for p in parts])
    return np.concatenate(parts)


def _compact(col: pa.Array, name: str, path: Path, notes: list[str], rows: int,
             header_rows: int) -> np.ndarray:
    """One block of one column as the smallest numpy array that holds it."""
    if name == "timestamp":
        return _timestamps(col, path)
    a = col.to_numpy(zero_copy_only=False)
    if name == "rating":
        return a.astype(np.float32, copy=False)
    if a.dtype.kind in "iu" and len(a):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            notes.append(f"{path} column '{name}' has negative ids; they are kept as ids "
                         "(labels, not numbers)")
        # int32 halves the memory of ids; blocks that need int64 upcast the whole column.
        if -(2**31) <= lo and hi < 2**31:
            return a.astype(np.int32)
    return a


def _ids(values: np.ndarray, path: Path, name: str, notes: list[str]) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values
    if values.dtype.kind == "f":
        if np.all(values == np.round(values)):
            return values.astype(np.int64)
        raise RecsysError(f"{path} column '{name}': ids are fractional numbers; ids must be "
                          "integers or text")
    return values.astype(str).astype(object)


def _timestamps(col: pa.Array | pa.ChunkedArray, path: Path) -> np.ndarray:
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        col = pc.cast(col, pa.timestamp("s")) if pa.types.is_date(col.type) else col
        return (col.to_numpy(zero_copy_only=False).astype("datetime64[s]")
                .astype(np.int64))
    if pa.types.is_integer(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if pa.types.is_floating(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.int64)
    import pandas as pd

    raw = pd.Series(col.to_numpy(zero_copy_only=False))
    # A text column may still hold numbers (seconds) beside the one value that is neither.
    numeric = pd.to_numeric(raw, errors="coerce")
    dates = raw[numeric.isna()]
    with warnings.catch_warnings():
        # pandas warns when it falls back to per-element parsing; failures are reported below.
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(dates, errors="coerce", utc=True)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        raise RecsysError(f"{path} column 'timestamp': {dates.iloc[bad[0]]!r} is neither a number "
                          "nor a date; fix the value or leave the column out")
    out = numeric.to_numpy(dtype=np.float64, na_value=0.0).astype(np.int64)
    out[numeric.isna().to_numpy()] = parsed.astype("int64").to_numpy() // 10**9
    return out

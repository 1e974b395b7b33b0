"""Reading rating logs: CSV/TSV/Parquet files (or headerless MovieLens formats) into arrays.

A rating log is four aligned columns: ``user``, ``item``, ``rating`` (float32, optional) and
``timestamp`` (int64 epoch seconds, optional). Files are parsed by pyarrow in blocks (no per-row
Python); delimited files may be compressed (gzip, bzip2, xz, zstd: told by their first bytes).
Every way a file can be wrong ends in one `RecsysError` line naming the file, the row and the
column.

Ids are the text in the file, without surrounding spaces, kept exactly: ``007`` and ``7`` are
two users. A column is stored as int64 only when every id in it is an integer written plainly
(``0`` or ``-?[1-9][0-9]*``, within int64), so that the number spells the text exactly; one padded
(``007``), signed (``+7``) or non-numeric id, or one beyond int64, makes the whole column text.
Numbers written as floats (``7.0``, ``1e3``: what spreadsheets write for integer columns) are
read as those integers, and a fractional, NaN or infinite id is refused with its row, unless
the column is text anyway. `recsys.data.prepare` applies the same rule over every file of a
source (`join_ids`), so an id means one thing in the train and the test file.

Timestamps: see `_Stamps`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import lzma
import os
import re
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
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
_PADDED_INTEGER = r"^\s*(?:\+[0-9]+|-?0[0-9]+|-0)\s*$"  # 007, +7, -0: integers, not plainly
_NUMBER = r"^\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*$"
_SEPARATORS = (",", "\t", ";", "|")
_SEP_NAMES = {",": "comma", "\t": "tab", ";": "';'", "|": "'|'", ":": "':'", " ": "space"}
_BLOCK_SIZE = 1 << 22  # bytes per parsed block; also the longest row the parser accepts
# First bytes of the compressed formats read directly (a zip holds files, not one stream).
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"),
          (b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"))
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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
        if key in out:
            raise RecsysError(f"--columns {spec!r}: {key} is mapped twice; give each field once")
        out[key] = value
    _one_role_per_column(out, "--columns")
    return out


def _one_role_per_column(fields: dict[str, str], where: str) -> None:
    """A file column can be one field only (``user=item,item=item`` would read it twice)."""
    seen: dict[str, str] = {}
    for f, column in fields.items():
        if column in seen:
            raise RecsysError(f"{where}: column '{column}' is given two roles ({seen[column]} and "
                              f"{f}); map each field to its own column")
        seen[column] = f


def check_readable(path: str | os.PathLike[str]) -> None:
    """One line for a path that exists but cannot be read as a file (a directory, no
    permission); callers say in their own words that a path does not exist."""
    path = Path(path)
    if path.is_dir():
        raise RecsysError(f"{path}: it is a directory; pass the file inside it")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        hint = "; check its permissions" if isinstance(exc, PermissionError) else ""
        raise RecsysError(f"{path}: cannot read the file ({exc.strerror or exc}){hint}") from None


def compression(path: str | os.PathLike[str]) -> str | None:
    """gzip, bz2, xz or zstd when the file starts like one (whatever its suffix), else None."""
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            if name == "zip":
                raise RecsysError(f"{path}: a zip archive, which may hold several files; unzip it "
                                  "and pass the rating file inside (gzip, bzip2, xz and zstd "
                                  "files are read directly)")
            return name
    return None


def open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    """The file's bytes, decompressed where it is compressed."""
    source = _arrow_source(Path(path))
    # pyarrow's streams cannot readline.
    return io.BufferedReader(source) if isinstance(source, pa.NativeFile) else source


def _arrow_source(path: Path) -> Any:
    """What the CSV parser reads: a native (GIL-free) decompressing stream where pyarrow has
    the codec."""
    kind = compression(path)
    if kind is None:
        return open(path, "rb")
    if kind == "xz":  # pyarrow has no xz codec
        return lzma.open(path, "rb")
    if kind == "gzip":  # pyarrow's gzip stream takes a truncated file for a whole one
        return gzip.open(path, "rb")
    return pa.input_stream(str(path), compression=kind)


def _stem_suffix(path: Path) -> str:
    """The suffix that tells the format (``r.tsv.gz`` -> ``.tsv``)."""
    if path.suffix.lower() in (".gz", ".bz2", ".xz", ".zst", ".zstd") and "." in path.stem:
        return Path(path.stem).suffix.lower()
    return path.suffix.lower()


def sniff_separator(path: Path, encoding: str = "utf-8") -> str:
    """The separator of a delimited file, judged from its first line (tab for .tsv)."""
    if _stem_suffix(path) in (".tsv", ".tab"):
        return "\t"
    with _reading(path), open_binary(path) as f:
        first = f.readline(1 << 16).decode(encoding, errors="replace")
    counts = {s: first.count(s) for s in _SEPARATORS}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A damaged compressed stream (truncated gzip, bad zstd frame) as one line."""
    try:
        yield
    except (OSError, EOFError, lzma.LZMAError, zlib.error, pa.ArrowInvalid) as exc:
        if isinstance(exc, pa.ArrowInvalid) and not compression(path):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecsysError(f"{path}: cannot decompress ({msg}); the file is truncated or "
                          "damaged") from None


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
    if not path.exists():
        raise RecsysError(f"{path}: file not found (check the path)")
    check_readable(path)
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
            log = _collect(table.to_batches(max_chunksize=1 << 20), path, fields, 0,
                           require_rating, min_rating)
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
            if alias in lower and lower[alias] not in columns.values():
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
    _one_role_per_column(found, str(path))
    return found


def _read_delimited(path: Path, sep: str | None, columns: dict[str, str] | None,
                    names: list[str] | None, encoding: str, require_rating: bool,
                    min_rating: float | None) -> RatingLog:
    compression(path)  # a zip is refused before anything else reads it
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
    # Ids and timestamps as text: the rules of this module decide what they are, not the
    # parser's guess from the first block (which reads 007 as 7). Ratings as float64, so that
    # a value beyond float32 is told apart from an "inf" in the file.
    types: dict[str, pa.DataType] = {c: pa.string() for f, c in fields.items() if f != "rating"}
    if "rating" in fields:
        types[fields["rating"]] = pa.float64()
    try:
        with _reading(path), _arrow_source(path) as source:
            reader = pacsv.open_csv(
                source,
                # The header as `_header` read it (spaces and a byte-order mark stripped).
                read_options=pacsv.ReadOptions(column_names=file_columns,
                                               skip_rows=header_rows, encoding=encoding,
                                               block_size=_BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(delimiter=sep),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(fields.values()), column_types=types,
                    null_values=[""], strings_can_be_null=True,
                    quoted_strings_can_be_null=True))
            batches = (b.rename_columns([back[c] for c in b.schema.names]) for b in reader)
            return _collect(batches, path, fields, header_rows, require_rating, min_rating)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        _check_utf8(path, encoding)
        raise _explain_arrow_error(exc, path, fields, sep, encoding, header_rows,
                                   file_columns) from None


def _failed_field(message: str, file_columns: list[str], back: dict[str, str]) -> str | None:
    match = re.search(r"CSV column #(\d+)", message)
    if not match or int(match.group(1)) >= len(file_columns):
        return None
    return back.get(file_columns[int(match.group(1))])


def _header(path: Path, sep: str, encoding: str) -> list[str]:
    # A byte-order mark (Excel writes one) is not part of the first column's name.
    utf8 = encoding.lower().replace("-", "").replace("_", "") == "utf8"
    try:
        with _reading(path), open_binary(path) as raw:
            line = io.TextIOWrapper(raw, encoding="utf-8-sig" if utf8 else encoding,
                                    newline="").readline()
    except UnicodeDecodeError:
        _check_utf8(path, encoding)
        raise
    return [c.strip() for c in next(csv.reader([line], delimiter=sep))]


def _check_utf8(path: Path, encoding: str) -> None:
    """On a parse error, first rule out bytes that are not valid in the file's encoding."""
    if encoding.lower().replace("-", "") not in ("utf8", "utf_8"):
        return
    line, pending = 1, b""
    with _reading(path), open_binary(path) as f:
        while True:
            block = f.read(1 << 20)
            data = pending + block
            try:
                _, used = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as exc:
                line += data.count(b"\n", 0, exc.start)
                raise RecsysError(f"{path} row {line}: bytes that are not UTF-8 "
                                  f"({data[exc.start:exc.start + 4]!r}); re-save the file as "
                                  "UTF-8") from None
            line += data.count(b"\n", 0, used)
            pending = data[used:]
            if not block:
                return


def _explain_arrow_error(exc: Exception, path: Path, fields: dict[str, str], sep: str,
                         encoding: str, header_rows: int, file_columns: list[str]
                         ) -> RecsysError:
    msg = str(exc).splitlines()[0]
    failed = _failed_field(msg, file_columns, {v: k for k, v in fields.items()})
    if "straddl" in msg or "out of sync" in msg:
        return _explain_long_row(path)
    if "conversion error" in msg and failed == "rating":
        # Re-read the rating column as text to find the first value that is not a number.
        with _reading(path), open_binary(path) as source:
            table = pacsv.read_csv(
                source, read_options=pacsv.ReadOptions(
                    column_names=file_columns, skip_rows=header_rows, encoding=encoding,
                    block_size=_BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(delimiter=sep),
                convert_options=pacsv.ConvertOptions(
                    include_columns=[fields["rating"]],
                    column_types={fields["rating"]: pa.string()}, null_values=[""],
                    strings_can_be_null=True))
        raw = table.column(0).to_numpy(zero_copy_only=False)
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


def _explain_long_row(path: Path) -> RecsysError:
    """The parser reads blocks of `_BLOCK_SIZE` bytes and a row must fit in about one: name the
    first line that is longer, or else the quote that opens a field and never closes (which
    makes the rest of the file one field)."""
    line = 0
    odd_quote = None
    with _reading(path), open_binary(path) as f:
        for raw in iter(lambda: f.readline(_BLOCK_SIZE + 1), b""):
            line += 1
            if len(raw) > _BLOCK_SIZE:
                size = len(raw)
                while not raw.endswith(b"\n") and (raw := f.readline(_BLOCK_SIZE)):
                    size += len(raw)
                return RecsysError(f"{path} row {line}: the row is {size / 2**20:.1f} MB long; "
                                   f"rows of a rating file may hold at most "
                                   f"{_BLOCK_SIZE >> 20} MB (is this a rating file?)")
            if odd_quote is None and raw.count(b'"') % 2:
                odd_quote = line
    where = f" from row {odd_quote}, which has an odd number of '\"'" if odd_quote else ""
    return RecsysError(f"{path}: a quoted field runs on for more than {_BLOCK_SIZE >> 20} MB"
                       f"{where}; close the quote or remove it")


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RecsysError(f"{path}: not a readable Parquet file ({exc})") from None


# -- columns to arrays -----------------------------------------------------------------------


def _collect(batches: Iterator[pa.RecordBatch], path: Path, fields: dict[str, str],
             header_rows: int, require_rating: bool, min_rating: float | None) -> RatingLog:
    """Record batches (columns named by our fields) -> compact numpy columns, block by block;
    rows with an empty field are rejected (counted), ratings must be finite float32 numbers.
    ``fields`` maps our fields to the file's column names (for messages)."""
    present = list(fields)
    if require_rating and "rating" not in present:
        raise RecsysError(f"{path}: no 'rating' column (columns: {', '.join(present)}); map "
                          "one with --columns rating=NAME")
    ids = {f: _Ids(path, fields[f]) for f in ("user", "item")}
    stamps = _Stamps(path, fields["timestamp"]) if "timestamp" in present else None
    ratings: list[np.ndarray] = []
    rows = missing = below = 0
    lo, hi = np.inf, -np.inf
    pool = pa.default_memory_pool()
    for k, batch in enumerate(batches):
        n = batch.num_rows
        first_row = rows + 1 + header_rows
        empty = None
        for f in present:
            col = batch.column(f)
            if col.null_count:
                m = col.is_null().to_numpy(zero_copy_only=False)
                empty = m if empty is None else empty | m
        valid = None if empty is None else ~empty  # rows whose values are checked
        if empty is not None:
            missing += int(empty.sum())
        keep = valid  # rows kept
        if "rating" in present:
            r = _ratings(batch.column("rating"), valid, path, fields["rating"], first_row)
            ok = r if valid is None else r[valid]
            if len(ok):
                lo, hi = min(lo, float(ok.min())), max(hi, float(ok.max()))
            if min_rating is not None:
                positive = r >= np.float32(min_rating)
                below += int((~positive if valid is None else ~positive & valid).sum())
                keep = positive if keep is None else keep & positive
            else:  # with a threshold every kept rating is a positive: the value is not needed
                ratings.append(r if keep is None else r[keep])
        for f in ("user", "item"):
            ids[f].add(batch.column(f), valid, keep, first_row)
        if stamps is not None:
            stamps.add(batch.column("timestamp"), valid, keep, first_row)
        rows += n
        del batch
        if k % 16 == 15:
            pool.release_unused()  # hand the parser's freed blocks back as we go
    if rows == 0:
        raise RecsysError(f"{path}: no rating rows after the header")
    if missing == rows:
        raise RecsysError(f"{path}: every row has an empty user, item, rating or timestamp")
    notes: list[str] = []
    user, item = ids["user"].finish(notes), ids["item"].finish(notes)
    timestamp = stamps.finish(notes) if stamps is not None else None
    rating = _concat(ratings) if "rating" in present and min_rating is None else None
    if rating is not None:
        notes.extend(_far_outside(rating, path, fields["rating"]))
    pool.release_unused()
    return RatingLog(user, item, rating, timestamp, path, rows_read=rows,
                     missing_dropped=missing, notes=notes, threshold_applied=min_rating,
                     below_threshold_dropped=below,
                     rating_range=[lo, hi] if "rating" in present and lo <= hi else None)


def _ratings(col: pa.Array, valid: np.ndarray | None, path: Path, name: str, first_row: int
             ) -> np.ndarray:
    """One block of ratings as float32; NaN, infinite and float32-overflowing values (checked
    rows only) are errors naming the row."""
    if not pa.types.is_floating(col.type) and not pa.types.is_integer(col.type):
        raise RecsysError(f"{path} column '{name}': values are {col.type}, not numbers")
    r = col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(r) | (np.abs(r) > _FLOAT32_MAX)
    if valid is not None:
        bad &= valid
    if bad.any():
        i = int(np.argmax(bad))
        why = (f"{r[i]:g} overflows float32 (ratings are stored as 32-bit floats, at most about "
               "3.4e38)" if np.isfinite(r[i]) else f"{r[i]} is not a valid rating")
        raise RecsysError(f"{path} row {first_row + i} column '{name}': {why}; fix or remove "
                          "the row")
    return r.astype(np.float32)


def _far_outside(rating: np.ndarray, path: Path, name: str) -> list[str]:
    """A note (not an error) for ratings far from the scale the others keep to: the range of
    the middle 99% widened by its own width (at least 1) on each side; on a 1-5 scale, below
    -3 or above 9 (a -5 or 1e9 typed by mistake). Files of fewer than 50 ratings get none."""
    if len(rating) < 50:  # too few to tell a scale from its outliers
        return []
    # One partial sort for both ends (np.quantile would sort a copy twice).
    a, b = int(np.ceil(0.005 * (len(rating) - 1))), int(np.floor(0.995 * (len(rating) - 1)))
    ends = np.partition(rating, [a, b])
    lo, hi = float(ends[a]), float(ends[b])
    del ends
    margin = max(hi - lo, 1.0)
    far = (rating < lo - margin) | (rating > hi + margin)
    n = int(far.sum())
    if not n:
        return []
    example = float(rating[np.argmax(far)])
    return [f"{path} column '{name}': {n:,} rating{'s lie' if n > 1 else ' lies'} far outside "
            f"the scale of the others (99% are within [{lo:g}, {hi:g}]; e.g. {example:g}); "
            "check the file"]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


def _any(mask: pa.Array) -> bool:
    return pc.any(mask).as_py() is True


def _plain_int64(col: pa.Array) -> pa.Array | None:
    """The block as int64 when every value is an integer written plainly (the spelling of
    `recsys.data.interactions.PLAIN_INTEGER`), else None. The cast refuses signs, spaces,
    decimals and overflow; leading zeros (which it accepts) are looked for separately, which is
    much cheaper than printing the numbers back."""
    try:
        ints = pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # Most blocks have no id starting with 0 and no negative one: two cheap tests settle them.
    zero = pc.starts_with(col, "0")
    if _any(zero) and _any(pc.and_(zero, pc.greater(pc.binary_length(col), 1))):
        return None
    low = pc.min(ints).as_py()
    if low is not None and low <= 0 and _any(pc.starts_with(col, "-0")):
        return None
    return ints


def _filtered(a: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    return a if keep is None else a[keep]


class _Ids:
    """One id column of one file, block by block, by the rule in the module docstring.

    A block is kept as compact integers when its ids are plain integers, as text (an arrow
    string array, far smaller than Python strings) otherwise, and as both when its ids are
    floats (``7.0``), whose text is needed if a later block turns the column to text."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.blocks: list[tuple[np.ndarray | None, pa.Array | None]] = []
        self.text = False  # some id is no number, or an integer not written plainly
        self.float_error: str | None = None  # a fractional/NaN id: refused unless text

    def add(self, col: pa.Array, valid: np.ndarray | None, keep: np.ndarray | None,
            first_row: int) -> None:
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_integer(col.type):
            self._ints(pc.fill_null(col, 0), keep)
            return
        if pa.types.is_floating(col.type):  # Parquet: no text to fall back on
            v = col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            error = self._check_floats(v, valid, first_row)
            if error or (np.abs(np.nan_to_num(v)) > 2.0**53).any():
                raise RecsysError(error or f"{self.path} column '{self.name}': ids are floats "
                                  "beyond 2^53, which cannot be told apart; store them as "
                                  "strings or 64-bit integers")
            self._ints(pa.array(np.nan_to_num(v).astype(np.int64)), keep)
            return
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            try:
                col = pc.cast(col, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise RecsysError(f"{self.path} column '{self.name}': ids are {col.type}; "
                                  "expected integers or text") from None
        ints = _plain_int64(col)
        if ints is None:
            col = pc.utf8_trim_whitespace(col)  # spaces around an id are not part of it
            ints = _plain_int64(col)
        if ints is not None:
            self._ints(pc.fill_null(ints, 0), keep)
            return
        text = col if keep is None else col.filter(pa.array(keep))
        if not self.text and not _any(pc.match_substring_regex(col, _PADDED_INTEGER)):
            try:
                floats = pc.cast(col, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                floats = None
            if floats is not None:
                v = floats.to_numpy(zero_copy_only=False)
                big = np.abs(np.nan_to_num(v)) > 2.0**53  # integers beyond int64: exact as text
                if not _filtered(big, valid).any():
                    self.float_error = self.float_error or self._check_floats(v, valid, first_row)
                    ints_f = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0).astype(np.int64)
                    self.blocks.append((_compact_ints(_filtered(ints_f, keep)), text))
                    return
        self.text = True
        self.blocks.append((None, text))

    def _ints(self, ints: pa.Array, keep: np.ndarray | None) -> None:
        a = _filtered(ints.to_numpy(zero_copy_only=False), keep)
        self.blocks.append((_compact_ints(a), None))

    def _check_floats(self, v: np.ndarray, valid: np.ndarray | None, first_row: int
                      ) -> str | None:
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | (v != np.round(v))
        if valid is not None:
            bad &= valid
        if not bad.any():
            return None
        i = int(np.argmax(bad))
        what = "are fractional numbers" if np.isfinite(v[i]) else "are not numbers"
        return (f"{self.path} row {first_row + i} column '{self.name}': ids {what} "
                f"('{float(v[i]):g}'); ids must be integers or text")

    def finish(self, notes: list[str]) -> np.ndarray:
        if self.text:
            # large_string: Parquet's text may come as it, and a column may pass 2 GB.
            parts = [pc.cast(t if t is not None else pa.array(i.astype(str)), pa.large_string())
                     for i, t in self.blocks]
            self.blocks = []
            return pa.chunked_array(parts, type=pa.large_string()) \
                .to_numpy(zero_copy_only=False).astype(object)
        if self.float_error:
            raise RecsysError(self.float_error)
        parts = [i for i, _ in self.blocks]
        self.blocks = []
        out = _concat(parts) if parts else np.empty(0, np.int64)
        if len(out) and out.min() < 0:
            notes.append(f"{self.path} column '{self.name}' has negative ids; they are kept as "
                         "ids (labels, not numbers)")
        return out


def _compact_ints(a: np.ndarray) -> np.ndarray:
    """int32 when the block fits (half the memory of ids); blocks that need int64 upcast the
    whole column when they are joined."""
    if len(a) and -(2**31) <= int(a.min()) and int(a.max()) < 2**31:
        return a.astype(np.int32)
    return a.astype(np.int64, copy=False)


def join_ids(arrays: list[np.ndarray]) -> np.ndarray:
    """The id columns of several files of one source under one rule: integers only when every
    file's are (each file's text ids keep their spelling; plain integers print back exactly)."""
    if all(a.dtype.kind in "iu" for a in arrays):
        return np.concatenate(arrays)
    return np.concatenate([a.astype(str).astype(object) for a in arrays])


_MS_FROM = 1e11  # as epoch seconds: the year 5138; as milliseconds: March 1973
_TOO_LARGE = 1e14  # as milliseconds: the year 5138


class _Stamps:
    """One timestamp column, block by block, to int64 epoch seconds (floored), by one rule:

    * numbers are epoch seconds; a column whose every number is at least 1e11 in magnitude
      (as seconds, after the year 5138) holds epoch milliseconds and is divided by 1000, with a
      note; seconds and milliseconds in one column, or a number of 1e14 or more, are refused;
    * dates (text) are ISO 8601 in any of its forms (``2020-01-01``, ``2020/01/01 10:00``,
      ``2020-01-01T10:00:00+02:00``), or else all in the one format of the column's first date
      (``01/01/2020``: month first unless that first date, or another in its block, needs day
      first; ``Jan 1 2020``); dates without a zone are UTC; Parquet dates and times likewise;
    * numbers and dates in one column are refused, naming the first row of the other kind.
    """

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.chunks: list[np.ndarray] = []
        self.kind: str | None = None  # numbers or dates, from the column's first value
        self.first: tuple[int, str] = (0, "")  # its row and value
        self.fmt: str | None = None  # the dates' format
        self.scale: dict[bool, tuple[int, float]] = {}  # is-milliseconds -> first row, value

    def _where(self, row: int) -> str:
        return f"{self.path} row {row} column '{self.name}'"

    def add(self, col: pa.Array, valid: np.ndarray | None, keep: np.ndarray | None,
            first_row: int) -> None:
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        check = np.ones(len(col), bool) if valid is None else valid
        rows = np.flatnonzero(check)
        if not len(rows):
            self.chunks.append(np.empty(0, np.int64))
            return
        t = col.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            self._kind("dates", first_row + int(rows[0]), str(col[int(rows[0])]))
            if pa.types.is_date(t):
                col = pc.cast(col, pa.timestamp("s"))
            seconds = (pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
                       .astype("datetime64[s]").astype(np.int64))
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            seconds = self._numbers(col, check, first_row)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            seconds = self._text(col, check, first_row)
        else:
            raise RecsysError(f"{self.path} column '{self.name}': timestamps are {t}; expected "
                              "numbers (epoch seconds) or dates")
        self.chunks.append(_filtered(seconds, keep))

    def _kind(self, kind: str, row: int, value: str) -> None:
        if self.kind is None:
            self.kind, self.first = kind, (row, value)
        elif kind != self.kind:
            words = {"numbers": "a number", "dates": "a date"}
            raise RecsysError(
                f"{self._where(row)}: {value!r} is {words[kind]}, while row {self.first[0]} "
                f"({self.first[1]!r}) and the rows before are {self.kind}; a timestamp column "
                "holds either numbers (epoch seconds) or dates, not both")

    def _numbers(self, col: pa.Array, check: np.ndarray, first_row: int) -> np.ndarray:
        v = col.to_numpy(zero_copy_only=False)
        if v.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(v) & check
            if bad.any():
                i = int(np.argmax(bad))
                raise RecsysError(f"{self._where(first_row + i)}: {v[i]} is not a time; fix or "
                                  "remove the row")
            v = np.floor(np.nan_to_num(v)).astype(np.int64)
        v = v.astype(np.int64, copy=False)
        rows = np.flatnonzero(check)
        self._kind("numbers", first_row + int(rows[0]), str(v[rows[0]]))
        size = np.abs(v)
        huge = (size >= _TOO_LARGE) & check
        if huge.any():
            i = int(np.argmax(huge))
            raise RecsysError(f"{self._where(first_row + i)}: {v[i]} is too large for epoch "
                              "seconds or milliseconds; store seconds")
        ms = (size >= _MS_FROM) & check
        for scale, mask in ((True, ms), (False, check & ~ms)):
            if scale not in self.scale and mask.any():
                i = int(np.argmax(mask))
                self.scale[scale] = (first_row + i, int(v[i]))
        return v

    def _text(self, col: pa.Array, check: np.ndarray, first_row: int) -> np.ndarray:
        # Rows that are dropped anyway (an empty field) are not looked at.
        trimmed = pc.if_else(pa.array(check), pc.utf8_trim_whitespace(col), "0")
        for numeric_type in (pa.int64(), pa.float64()):
            try:
                numbers = pc.cast(trimmed, numeric_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            return self._numbers(numbers, check, first_row)
        raw = trimmed.to_numpy(zero_copy_only=False)
        numeric = pc.match_substring_regex(trimmed, _NUMBER).to_numpy(zero_copy_only=False)
        numeric = numeric.astype(bool) & check
        dated = check & ~numeric
        first = int(np.flatnonzero(check)[0])
        if (self.kind or ("numbers" if numeric[first] else "dates")) == "numbers":
            i = int(np.argmax(dated))  # text among numbers: a date, or no time at all
            self._refuse_other(raw[i], first_row + i)
            self._kind("numbers", first_row + first, raw[first])
            self._kind("dates", first_row + i, raw[i])
        self._kind("dates", first_row + first, raw[first])
        if numeric.any():
            i = int(np.argmax(numeric))
            self._kind("numbers", first_row + i, raw[i])
        values = pd.Series(raw[dated], dtype=object)
        at = np.flatnonzero(dated) + first_row
        if self.fmt is None:
            self.fmt = self._date_format(values, at)
        parsed = _parse_dates(values, self.fmt)
        failed = np.flatnonzero(parsed.isna().to_numpy())
        if len(failed):
            value, row = values.iloc[failed[0]], int(at[failed[0]])
            self._refuse_other(value, row)
            shown = "ISO 8601" if self.fmt == "ISO8601" else self.fmt
            raise RecsysError(f"{self._where(row)}: {value!r} is not a date in the column's "
                              f"format ({shown}, as in row {self.first[0]}: {self.first[1]!r})")
        out = np.zeros(len(col), np.int64)
        out[dated] = (parsed.dt.tz_convert(None).to_numpy().astype("datetime64[s]")
                      .astype(np.int64))
        return out

    def _refuse_other(self, value: str, row: int) -> None:
        """A value out of place that is no time at all (rather than a date among numbers, or
        a date in another format) gets its own words."""
        if not _is_date(value):
            raise RecsysError(f"{self._where(row)}: {value!r} is neither a number nor a date; "
                              "fix the value or leave the column out")

    def _date_format(self, values: pd.Series, at: np.ndarray) -> str:
        """ISO 8601 when every date of the first block is one, else the format of the first
        date, month first unless only day first reads the whole block."""
        if _parse_dates(values, "ISO8601").notna().all():
            return "ISO8601"
        from pandas.tseries.api import guess_datetime_format

        first = values.iloc[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pandas' dayfirst hint
            guesses = [guess_datetime_format(first), guess_datetime_format(first, dayfirst=True)]
        formats = list(dict.fromkeys(g for g in guesses if g))
        if not formats:
            raise RecsysError(f"{self._where(int(at[0]))}: {first!r} is neither a number nor a "
                              "date; fix the value or leave the column out")
        for fmt in formats:
            if _parse_dates(values, fmt).notna().all():
                return fmt
        return formats[0]  # the first failing value is reported by the caller

    def finish(self, notes: list[str]) -> np.ndarray:
        out = _concat(self.chunks) if self.chunks else np.empty(0, np.int64)
        self.chunks = []
        if len(self.scale) == 2:
            first_ms = self.scale[True][0] < self.scale[False][0]
            row, value = self.scale[not first_ms]
            other_row, other = self.scale[first_ms]
            unit, other_unit = ("seconds", "milliseconds") if first_ms else \
                ("milliseconds", "seconds")
            raise RecsysError(f"{self._where(row)}: {value} reads as epoch {unit}, while row "
                              f"{other_row} ({other}) reads as {other_unit} (from 1e11 on); "
                              "use one unit for the whole column")
        if self.scale.get(True):
            out = out // 1000
            notes.append(f"{self.path} column '{self.name}': every value is 1e11 or more, so "
                         "they are read as epoch milliseconds (as seconds they would lie after "
                         "the year 5000) and stored as seconds")
        return out


def _parse_dates(values: pd.Series, fmt: str) -> pd.Series:
    return pd.to_datetime(values, format=fmt, utc=True, errors="coerce")


def _is_date(value: Any) -> bool:
    """Whether pandas reads ``value`` as a date in any format (for messages only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(pd.Series([value], dtype=object), format="mixed", utc=True,
                                errors="coerce")
    return bool(parsed.notna().all())

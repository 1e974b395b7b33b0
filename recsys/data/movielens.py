"""The MovieLens registry: where each set comes from, how it is verified, and how it is parsed.

Sources, in order: ``--path DIR`` (an extracted folder), the embedded ``data/ml-latest-small``,
the cache (``RECSYS_CACHE``, default ``<repo>/data/cache``), a mirror (``--mirror`` or
``RECSYS_MIRROR``: a base URL or a local directory holding the same zip names), and GroupLens.

Verification: a download from GroupLens must match the MD5 that GroupLens publishes. A mirror's
zip may have been rebuilt (so its MD5 differs), so a mirror is accepted when the zip matches the
official MD5, or a ``<zip>.sha256`` file beside it, or when the extracted ratings file matches
its known SHA-256 (see ../shared/PROTOCOLS.md), hashed from inside the archive before anything
is extracted. Extraction refuses entries that would land outside the target folder and archives
that would expand to more than `MAX_EXPANSION` times their size, and happens in a temporary
folder renamed only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd

import recsys
from recsys.data.io import atomic_dir, atomic_path, sha256_file
from recsys.data.readers import RatingLog, read_rating_log
from recsys.errors import RecsysError, closest

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
REPO = Path(recsys.__file__).resolve().parents[1]
EMBEDDED_DIR = REPO / "data"
MARKER = ".recsys-source.json"

Format = Literal["u.data", "dat", "csv"]

_NO_REDISTRIBUTION = "research use; no redistribution without GroupLens's permission"
_REDISTRIBUTION = "research use; redistribution allowed under the same licence"


@dataclass(frozen=True)
class MovieLensSpec:
    name: str
    folder: str  # the top folder inside the zip (ml-10m.zip unpacks to ml-10M100K/)
    format: Format
    ratings_file: str
    movies_file: str | None
    md5: str | None  # the MD5 GroupLens publishes for the zip (None: changes with each release)
    ratings_sha256: str | None  # SHA-256 of the extracted ratings file, where known
    size: str
    licence: str
    md5_published_beside: bool = False  # GroupLens serves <zip>.md5 for this (moving) release

    @property
    def zip_name(self) -> str:
        return f"{self.name}.zip"

    @property
    def url(self) -> str:
        return BASE_URL + self.zip_name


# MD5s: ml-100k from ../shared/PROTOCOLS.md; the others as published by GroupLens in the
# <zip>.md5 files beside each archive. Ratings SHA-256s from ../shared/PROTOCOLS.md.
REGISTRY: dict[str, MovieLensSpec] = {s.name: s for s in (
    MovieLensSpec("ml-latest-small", "ml-latest-small", "csv", "ratings.csv", "movies.csv",
                  None, "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8",
                  "100,836 ratings, 610 users, 9,742 movies (1 MB)", _REDISTRIBUTION,
                  md5_published_beside=True),
    MovieLensSpec("ml-100k", "ml-100k", "u.data", "u.data", "u.item",
                  "0e33842e24a9c977be4e0107933c0723",
                  "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                  "100,000 ratings, 943 users, 1,682 movies (5 MB)", _NO_REDISTRIBUTION),
    MovieLensSpec("ml-1m", "ml-1m", "dat", "ratings.dat", "movies.dat",
                  "c4d9eecfca2ab87c1945afe126590906", None,
                  "1,000,209 ratings, 6,040 users, 3,706 movies (6 MB)", _NO_REDISTRIBUTION),
    MovieLensSpec("ml-10m", "ml-10M100K", "dat", "ratings.dat", "movies.dat",
                  "ce571fd55effeba0271552578f2648bd", None,
                  "10,000,054 ratings, 69,878 users, 10,677 movies (63 MB)", _NO_REDISTRIBUTION),
    MovieLensSpec("ml-20m", "ml-20m", "csv", "ratings.csv", "movies.csv",
                  "cd245b17a1ae2cc31bb14903e1204af3", None,
                  "20,000,263 ratings, 138,493 users, 27,278 movies (190 MB)",
                  _NO_REDISTRIBUTION),
    MovieLensSpec("ml-25m", "ml-25m", "csv", "ratings.csv", "movies.csv",
                  "6b51fb2759a8657d3bfcbfc42b592ada", None,
                  "25,000,095 ratings, 162,541 users, 62,423 movies (250 MB)",
                  _NO_REDISTRIBUTION),
    MovieLensSpec("ml-32m", "ml-32m", "csv", "ratings.csv", "movies.csv",
                  "d472be332d4daa821edc399621853b57", None,
                  "32,000,204 ratings, 200,948 users, 87,585 movies (239 MB)",
                  _NO_REDISTRIBUTION),
    MovieLensSpec("ml-latest", "ml-latest", "csv", "ratings.csv", "movies.csv",
                  None, None, "~33M ratings, ~330k users, ~86k movies (~335 MB; changes over time)",
                  _NO_REDISTRIBUTION, md5_published_beside=True),
)}

EMBEDDED = {"ml-latest-small"}

# Genre columns of u.item, in order (ml-100k's u.genre), used when u.genre is absent.
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")


def get_spec(name: str) -> MovieLensSpec:
    if name not in REGISTRY:
        raise RecsysError(f"unknown dataset '{name}'{closest(name, REGISTRY)}; `recsys datasets` "
                          "lists them (your own file: --input FILE or --train-file/--test-file)")
    return REGISTRY[name]


def default_cache() -> Path:
    return Path(os.environ.get("RECSYS_CACHE") or EMBEDDED_DIR / "cache")


def default_mirror() -> str | None:
    return os.environ.get("RECSYS_MIRROR") or None


def embedded_path(name: str) -> Path | None:
    folder = EMBEDDED_DIR / name
    if name in EMBEDDED and (folder / REGISTRY[name].ratings_file).is_file():
        return folder
    return None


def cached_path(spec: MovieLensSpec, cache: Path) -> Path | None:
    folder = cache / spec.folder
    if (folder / MARKER).is_file() and (folder / spec.ratings_file).is_file():
        return folder
    return None


# -- locating and fetching -------------------------------------------------------------------


def resolve(name: str, *, path: str | os.PathLike[str] | None = None,
            mirror: str | None = None, cache: str | os.PathLike[str] | None = None,
            progress: bool = True) -> tuple[MovieLensSpec, Path]:
    """The spec and the folder holding the extracted files of dataset ``name``."""
    spec = get_spec(name)
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise RecsysError(f"--path {folder}: no such directory")
        if not (folder / spec.ratings_file).is_file() and (folder / spec.folder).is_dir():
            folder = folder / spec.folder
        if not (folder / spec.ratings_file).is_file():
            raise RecsysError(f"--path {folder}: no {spec.ratings_file} inside; point it at the "
                              f"extracted {spec.folder}/ folder")
        return spec, folder
    embedded = embedded_path(name)
    if embedded is not None:
        return spec, embedded
    cache_dir = Path(cache) if cache is not None else default_cache()
    found = cached_path(spec, cache_dir)
    if found is not None:
        return spec, found
    mirror = mirror if mirror is not None else default_mirror()
    if mirror:
        return spec, _from_mirror(spec, mirror, cache_dir, progress)
    return spec, _from_grouplens(spec, cache_dir, progress)


def _is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("http", "https", "file", "ftp")


def _drop_bad_copy(zip_path: Path | None, exc: RecsysError) -> RecsysError:
    """A zip in the cache that fails verification or extraction is deleted: kept under its final
    name it would be found again and fail every later run, even once the source is fixed."""
    if zip_path is None or not zip_path.is_file():
        return exc
    zip_path.unlink()
    return RecsysError(f"{exc} (the cached copy was deleted: the next run downloads it again)")


def _from_mirror(spec: MovieLensSpec, mirror: str, cache: Path, progress: bool) -> Path:
    cached = None  # a copy in our cache (not the user's mirror folder): ours to drop if bad
    if _is_url(mirror):
        base = mirror if mirror.endswith("/") else mirror + "/"
        zip_path = cached = cache / spec.zip_name
        if not zip_path.is_file():
            download(base + spec.zip_name, zip_path, progress=progress)
        checksum_file = _try_fetch_text(base + spec.zip_name + ".sha256")
    else:
        root = Path(mirror)
        if not root.is_dir():
            raise RecsysError(f"mirror {mirror}: no such directory (set --mirror or RECSYS_MIRROR "
                              "to a folder holding the MovieLens zips, or to a base URL)")
        zip_path = root / spec.zip_name
        if not zip_path.is_file():
            raise RecsysError(f"mirror {mirror}: no {spec.zip_name} there; copy it in or use "
                              "another mirror")
        side = root / (spec.zip_name + ".sha256")
        checksum_file = side.read_text() if side.is_file() else None
    try:
        return _verify_mirror_copy(spec, mirror, zip_path, checksum_file, cache)
    except RecsysError as exc:
        raise _drop_bad_copy(cached, exc) from None


def _verify_mirror_copy(spec: MovieLensSpec, mirror: str, zip_path: Path,
                        checksum_file: str | None, cache: Path) -> Path:
    verified_by = None
    if checksum_file:
        expected = checksum_file.split()[0].lower() if checksum_file.split() else ""
        actual = sha256_file(zip_path)
        if actual != expected:
            raise RecsysError(f"{zip_path}: SHA-256 {actual} does not match the mirror's "
                              f"{spec.zip_name}.sha256 ({expected}); the copy is corrupt: "
                              "replace it")
        verified_by = f"sha256 of {spec.zip_name} (mirror checksum file)"
    elif spec.md5 and md5_file(zip_path) == spec.md5:
        verified_by = f"official md5 of {spec.zip_name}"
    elif spec.ratings_sha256 is None:
        raise RecsysError(f"{zip_path}: cannot verify this mirror copy (its MD5 is not GroupLens's "
                          f"and no {spec.zip_name}.sha256 is beside it); add that file")
    return extract(zip_path, cache, spec, source=f"mirror {mirror}", verified_by=verified_by)


def _from_grouplens(spec: MovieLensSpec, cache: Path, progress: bool) -> Path:
    zip_path = cache / spec.zip_name
    expected = spec.md5
    if expected is None and spec.md5_published_beside:
        text = _try_fetch_text(spec.url + ".md5")
        if not text:
            raise RecsysError(f"cannot fetch {spec.url}.md5 to verify {spec.zip_name}; check the "
                              "network, or use --mirror/RECSYS_MIRROR")
        expected = text.split()[0].lower()
    if not zip_path.is_file():
        download(spec.url, zip_path, progress=progress, md5=expected)
    try:
        if expected and md5_file(zip_path) != expected:
            raise RecsysError(f"{zip_path}: MD5 does not match GroupLens's ({expected})")
        return extract(zip_path, cache, spec, source=spec.url,
                       verified_by=f"official md5 {expected}")
    except RecsysError as exc:
        raise _drop_bad_copy(zip_path, exc) from None


def _try_fetch_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - http(s)/file only
            return resp.read(1 << 16).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def md5_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, target: Path, *, progress: bool = True, md5: str | None = None) -> Path:
    """Fetch ``url`` to ``target`` through a temporary name; verify ``md5`` before the rename."""
    from tqdm import tqdm

    try:
        resp = urllib.request.urlopen(url, timeout=60)  # noqa: S310
    except (OSError, ValueError) as exc:
        raise RecsysError(f"cannot download {url} ({exc}); check the network, or set --mirror / "
                          "RECSYS_MIRROR to a folder holding the zip") from None
    h = hashlib.md5(usedforsecurity=False)
    total = int(resp.headers.get("Content-Length") or 0) or None
    with resp, atomic_path(target) as tmp, open(tmp, "wb") as out, \
            tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                 disable=not progress, leave=False) as bar:
        received = 0
        while block := resp.read(1 << 20):
            out.write(block)
            h.update(block)
            received += len(block)
            bar.update(len(block))
        out.flush()
        if total is not None and received != total:
            raise RecsysError(f"{url}: download ended after {received} of {total} bytes; run "
                              "again")
        if md5 and h.hexdigest() != md5:
            raise RecsysError(f"{url}: MD5 {h.hexdigest()} does not match the published {md5}; "
                              "nothing was kept: run again, or use another mirror")
    return target


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


# An archive may expand to at most this many times its own size (MovieLens zips expand 3-5
# times; a zip bomb, thousands of times), plus a little for tiny archives.
MAX_EXPANSION = 100
_EXPANSION_SLACK = 1 << 20


def _check_expanded_size(zip_path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse before extraction an archive whose entries declare more bytes than the cap.
    The declared sizes bound what is written: zipfile stops each entry at its declared size
    and checks its CRC."""
    declared = sum(m.file_size for m in members)
    cap = MAX_EXPANSION * zip_path.stat().st_size + _EXPANSION_SLACK
    if declared > cap:
        raise RecsysError(f"{zip_path}: its entries would expand to {declared:,} bytes, more "
                          f"than {MAX_EXPANSION} times the archive's size; refusing to extract "
                          "it (not a MovieLens zip, or damaged)")


def _entry_sha256(zf: zipfile.ZipFile, entry: zipfile.ZipInfo, zip_path: Path) -> str:
    h = hashlib.sha256()
    try:
        with zf.open(entry) as src:
            while block := src.read(1 << 20):
                h.update(block)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise RecsysError(f"{zip_path}: entry '{entry.filename}' is damaged ({exc}); the archive "
                          "is truncated or corrupt: fetch it again") from None
    return h.hexdigest()


def extract(zip_path: Path, cache: Path, spec: MovieLensSpec, *, source: str,
            verified_by: str | None) -> Path:
    """Unpack ``zip_path`` into ``cache/<spec.folder>`` safely; return that folder.

    Entries are checked before anything is written: absolute names, ``..`` components and
    symlinks are refused (zip-slip), so is an archive that would expand to more than
    `MAX_EXPANSION` times its size (zip bomb), and where the archive itself was not verified
    (``verified_by`` None) the ratings entry is hashed from the archive and compared with its
    known SHA-256. The files land in a temporary folder renamed only when complete, so a
    failure leaves nothing behind.
    """
    target = cache / spec.folder
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise RecsysError(f"{zip_path}: not a complete zip archive (truncated download?); "
                          "delete it and download again") from None
    except OSError as exc:
        raise RecsysError(f"{zip_path}: cannot read ({exc})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for m in zf.infolist():
            p = PurePosixPath(m.filename.replace("\\", "/"))
            if p.is_absolute() or ".." in p.parts or (m.filename[1:2] == ":") or _is_symlink(m):
                raise RecsysError(f"{zip_path}: entry '{m.filename}' would be written outside the "
                                  "target folder; refusing to extract this archive")
        tops = {PurePosixPath(m.filename).parts[0] for m in members}
        strip = len(tops) == 1 and any(len(PurePosixPath(m.filename).parts) > 1
                                       for m in members)
        _check_expanded_size(zip_path, members)
        by_name = {PurePosixPath(*PurePosixPath(m.filename).parts[1 if strip else 0:]): m
                   for m in members}
        entry = by_name.get(PurePosixPath(spec.ratings_file))
        if entry is None:
            raise RecsysError(f"{zip_path}: no {spec.ratings_file} inside; is this "
                              f"{spec.zip_name}?")
        digest = None
        if verified_by is None:
            # Not verified as a whole: the ratings inside are checked before anything is
            # written (a bad copy must not fill the disk first).
            digest = _entry_sha256(zf, entry, zip_path)
            if spec.ratings_sha256 and digest != spec.ratings_sha256:
                raise RecsysError(f"{zip_path}: {spec.ratings_file} has SHA-256 {digest}, "
                                  f"expected {spec.ratings_sha256}; the copy is corrupt or "
                                  "another release: replace it")
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_dir(target) as tmp:
            root = tmp.resolve()
            for m in members:
                parts = PurePosixPath(m.filename).parts[1 if strip else 0:]
                dest = (tmp.joinpath(*parts)).resolve()
                if root not in dest.parents:
                    raise RecsysError(f"{zip_path}: entry '{m.filename}' would be written "
                                      "outside the target folder; refusing to extract it")
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(m) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except (zipfile.BadZipFile, EOFError, OSError) as exc:
                    raise RecsysError(f"{zip_path}: entry '{m.filename}' is damaged ({exc}); "
                                      "the archive is truncated or corrupt: fetch it again"
                                      ) from None
            if digest is None:
                digest = sha256_file(tmp / spec.ratings_file)
            if verified_by is None:
                verified_by = f"sha256 of {spec.ratings_file}"
            (tmp / MARKER).write_text(json.dumps({
                "dataset": spec.name, "source": source, "zip": zip_path.name,
                "verified_by": verified_by, "ratings_sha256": digest}, indent=2) + "\n")
    return target


# -- parsing ---------------------------------------------------------------------------------


def read_ratings(spec: MovieLensSpec, folder: Path, min_rating: float | None = None
                 ) -> RatingLog:
    """The ratings of a MovieLens folder as a `RatingLog` (``min_rating``: see
    `read_rating_log`; valid here because MovieLens has one rating per user and movie)."""
    path = folder / spec.ratings_file
    if spec.format == "u.data":
        return read_rating_log(path, sep="\t", names=["user", "item", "rating", "timestamp"],
                               require_rating=True, min_rating=min_rating)
    if spec.format == "dat":
        # `::` separators: read as ':'-separated, where every other field is empty.
        return read_rating_log(path, sep=":", names=["user", "_1", "item", "_2", "rating", "_3",
                                                     "timestamp"], require_rating=True,
                               min_rating=min_rating)
    return read_rating_log(path, sep=",", require_rating=True, min_rating=min_rating)


def read_item_info(spec: MovieLensSpec, folder: Path) -> pd.DataFrame | None:
    """External item id, title and genres (``|``-joined), or None when the file is absent."""
    if spec.movies_file is None or not (folder / spec.movies_file).is_file():
        return None
    path = folder / spec.movies_file
    try:
        if spec.format == "u.data":
            return _read_u_item(path, folder)
        if spec.format == "dat":
            return _read_movies_dat(path)
        frame = pd.read_csv(path, dtype={"movieId": "int64", "title": str, "genres": str},
                            keep_default_na=False)
        return pd.DataFrame({"item": frame["movieId"].to_numpy(np.int64),
                             "title": frame["title"].astype(str),
                             "genres": frame["genres"].astype(str)})
    except (ValueError, KeyError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise RecsysError(f"{path}: cannot parse the movie list ({exc})") from None


# The user file of each format that has one (ml-10m and the csv sets have none).
USER_FILES = {"u.data": "u.user", "dat": "users.dat"}
_YEAR = r"\((\d{4})\)\s*$"


def item_feature_frame(info: pd.DataFrame) -> pd.DataFrame:
    """Genres (multi-valued) and release year (from the title's "(1995)"; missing where the
    title has none) of each movie, from `read_item_info`'s frame."""
    year = pd.to_numeric(info["title"].astype(str).str.extract(_YEAR)[0], errors="coerce")
    return pd.DataFrame({"item": info["item"].to_numpy(), "genres": info["genres"].astype(str),
                         "year": year.to_numpy(dtype=np.float64)})


def read_user_features(spec: MovieLensSpec, folder: Path) -> tuple[pd.DataFrame, Path] | None:
    """Age (numeric), gender and occupation (categorical) of each user, from ml-100k's u.user or
    ml-1m's users.dat; None where the set has no user file. Zip codes are left out: hundreds of
    distinct values, each held by a user or two."""
    name = USER_FILES.get(spec.format)
    if name is None or not (folder / name).is_file():
        return None
    path = folder / name
    try:
        lines = pd.Series([ln for ln in _decode(path).splitlines() if ln.strip()])
        if spec.format == "u.data":  # user|age|gender|occupation|zip
            parts = lines.str.split("|", expand=True)
            user, age, gender, occupation = parts[0], parts[1], parts[2], parts[3]
        else:  # UserID::Gender::Age::Occupation::Zip-code (age and occupation are codes)
            parts = lines.str.split("::", expand=True)
            user, gender, age, occupation = parts[0], parts[1], parts[2], parts[3]
        frame = pd.DataFrame({
            "user": user.astype(np.int64).to_numpy(),
            "age": age.astype(np.float64).to_numpy(),
            "gender": pd.Categorical(gender.astype(str).str.strip()),
            # ml-1m's occupations are numbered: categories, not a quantity.
            "occupation": pd.Categorical(occupation.astype(str).str.strip())})
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise RecsysError(f"{path}: cannot parse the user list ({exc})") from None
    return frame, path


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # ml-100k and ml-1m ship their movie lists in Latin-1
        return raw.decode("latin-1")


def _read_u_item(path: Path, folder: Path) -> pd.DataFrame:
    genre_file = folder / "u.genre"
    genres = ML100K_GENRES
    if genre_file.is_file():
        lines = [ln.rsplit("|", 1)[0] for ln in _decode(genre_file).splitlines() if ln.strip()]
        genres = tuple(lines) or ML100K_GENRES
    lines = [ln for ln in _decode(path).splitlines() if ln.strip()]
    frame = pd.Series(lines).str.split("|", expand=True)
    flags = frame.iloc[:, 5:5 + len(genres)].astype(int).to_numpy().astype(bool)
    names = np.array(genres, dtype=object)
    joined = ["|".join(names[row]) for row in flags]  # one short list per movie, not per rating
    return pd.DataFrame({"item": frame[0].astype(np.int64).to_numpy(),
                         "title": frame[1].astype(str), "genres": joined})


def _read_movies_dat(path: Path) -> pd.DataFrame:
    lines = pd.Series([ln for ln in _decode(path).splitlines() if ln.strip()])
    parts = lines.str.split("::", n=2, expand=True)
    return pd.DataFrame({"item": parts[0].astype(np.int64).to_numpy(),
                         "title": parts[1].astype(str), "genres": parts[2].astype(str)})


def status(name: str, cache: Path | None = None) -> str:
    """Where the dataset is available locally: embedded, cached, or to be downloaded."""
    spec = REGISTRY[name]
    if embedded_path(name) is not None:
        return "embedded"
    if cached_path(spec, cache or default_cache()) is not None:
        return "cached"
    return "download"

"""Downloads end to end through `recsys prepare`, from a mirror folder (or file:// URL) built in
tmp_path: a checksum mismatch, a truncated or damaged archive and an archive with entries that
escape the cache are refused with one line (exit 2); nothing is extracted (let alone outside the
cache), no prepared output appears, and a bad copy fetched into the cache is not kept to fail
again once the mirror is fixed.

The library-level checks live in tests/data/test_movielens.py; their zip helpers are reused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from data.test_movielens import _nothing_extracted, _zip

from reliability.helpers import assert_one_line_error, cli

ML1M_RATINGS = "".join(f"{u}::{i}::{(u * i) % 5 + 1}::{978300000 + u * 100 + i}\n"
                       for u in range(1, 31) for i in range(1, 21))


@pytest.fixture
def site(tmp_path) -> tuple[Path, Path, Path]:
    """(mirror folder, cache, output) under a fresh root."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    return mirror, tmp_path / "cache", tmp_path / "out"


def _prepare(capsys, name: str, mirror: str | Path, cache: Path, out: Path):
    return cli(["prepare", name, "--mirror", mirror, "--cache", cache, "--out", out, "--quiet"],
               capsys)


def _good_ml1m(mirror: Path) -> bytes:
    data = _zip(mirror / "ml-1m.zip", {"ml-1m/ratings.dat": ML1M_RATINGS.encode()}).read_bytes()
    (mirror / "ml-1m.zip.sha256").write_text(hashlib.sha256(data).hexdigest() + "  ml-1m.zip\n")
    return data


def _no_escape(root: Path) -> None:
    """No file named like the planted one anywhere near the cache (or in /tmp)."""
    assert not list(root.rglob("evil*")) and not list(root.parent.glob("evil*"))
    assert not Path("/tmp/evil-abs.txt").exists()


def test_a_good_mirror_copy_is_prepared(site, capsys):
    # The control: the same mirror layout with a sound archive works.
    mirror, cache, out = site
    _good_ml1m(mirror)
    result = _prepare(capsys, "ml-1m", mirror, cache, out)
    assert result.code == 0, result.err
    assert (out / "metadata.json").is_file() and (cache / "ml-1m" / "ratings.dat").is_file()


def test_ratings_checksum_mismatch(site, capsys):
    mirror, cache, out = site
    _zip(mirror / "ml-100k.zip", {"ml-100k/u.data": b"1\t2\t3\t4\n"})
    result = _prepare(capsys, "ml-100k", mirror, cache, out)
    assert_one_line_error(result, "u.data has SHA-256")
    assert _nothing_extracted(cache) and not out.exists()


def test_mirror_checksum_file_mismatch(site, capsys):
    mirror, cache, out = site
    _good_ml1m(mirror)
    (mirror / "ml-1m.zip.sha256").write_text("0" * 64 + "  ml-1m.zip\n")
    result = _prepare(capsys, "ml-1m", mirror, cache, out)
    assert_one_line_error(result, "does not match the mirror's ml-1m.zip.sha256")
    assert _nothing_extracted(cache) and not out.exists()


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_archive(site, capsys, cut):
    # ml-100k: no checksum file needed (its ratings' SHA-256 is known), so only the archive
    # itself can tell that it is cut short.
    mirror, cache, out = site
    whole = _zip(mirror / "ml-100k.zip", {"ml-100k/u.data": ML1M_RATINGS.encode()}).read_bytes()
    (mirror / "ml-100k.zip").write_bytes(whole[: int(len(whole) * cut)])
    result = _prepare(capsys, "ml-100k", mirror, cache, out)
    assert_one_line_error(result, "not a complete zip archive")
    assert _nothing_extracted(cache) and not out.exists()


def test_damaged_archive_entry(site, capsys):
    mirror, cache, out = site
    noise = bytes(np.random.default_rng(0).integers(48, 58, 200_000, dtype=np.uint8))
    data = bytearray(_zip(mirror / "ml-100k.zip", {"ml-100k/u.data": noise}).read_bytes())
    data[100:110] = bytes(10)  # inside the compressed data; the directory is intact
    (mirror / "ml-100k.zip").write_bytes(bytes(data))
    result = _prepare(capsys, "ml-100k", mirror, cache, out)
    assert_one_line_error(result, "is damaged")
    assert _nothing_extracted(cache) and not out.exists()


@pytest.mark.parametrize("entry", ["../evil.txt", "ml-1m/../../evil.txt", "/tmp/evil-abs.txt",
                                   "ml-1m/..\\..\\evil.txt"])
def test_archive_escaping_the_cache(site, capsys, entry):
    mirror, cache, out = site
    data = _zip(mirror / "ml-1m.zip", {"ml-1m/ratings.dat": ML1M_RATINGS.encode(),
                                       entry: b"gotcha"}).read_bytes()
    (mirror / "ml-1m.zip.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    result = _prepare(capsys, "ml-1m", mirror, cache, out)
    assert_one_line_error(result, "would be written outside the target folder")
    assert _nothing_extracted(cache) and not out.exists()
    _no_escape(cache)


def test_a_bad_download_is_not_kept_to_fail_again(site, capsys):
    # A URL mirror: the archive is fetched into the cache first. A truncated fetch is refused,
    # and must not stay in the cache under its final name (where the next run would find it and
    # fail the same way after the mirror is fixed).
    mirror, cache, out = site
    whole = _good_ml1m(mirror)
    (mirror / "ml-1m.zip").write_bytes(whole[: len(whole) // 2])
    result = _prepare(capsys, "ml-1m", mirror.resolve().as_uri(), cache, out)
    assert_one_line_error(result, "does not match the mirror's ml-1m.zip.sha256")
    assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == []
    assert not out.exists()
    (mirror / "ml-1m.zip").write_bytes(whole)  # the mirror is fixed
    result = _prepare(capsys, "ml-1m", mirror.resolve().as_uri(), cache, out)
    assert result.code == 0, result.err
    assert (out / "metadata.json").is_file()

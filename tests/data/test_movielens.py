"""MovieLens registry: parsers for every format, sources (path, embedded, mirror, download),
verification and safe extraction."""

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recsys.data import movielens as ml
from recsys.data.io import sha256_file
from recsys.errors import RecsysError

U_ITEM = ("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
          "2|Caf\xe9 Noir (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n")


def _folder(root: Path, name: str) -> Path:
    """A tiny extracted folder in the format of registry dataset ``name``."""
    spec = ml.REGISTRY[name]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    if spec.format == "u.data":
        (folder / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t5\t891717742\n")
        (folder / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    elif spec.format == "dat":
        (folder / "ratings.dat").write_text("1::1::5::978300760\n2::2::3.5::978302109\n")
        # ml-1m's movies.dat is Latin-1; titles may contain ':'.
        (folder / "movies.dat").write_bytes(
            "1::Toy Story (1995)::Animation|Comedy\n2::Star Wars: Caf\xe9 (1977)::Sci-Fi\n"
            .encode("latin-1"))
    else:
        (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
                                            "2,2,0.5,964981247\n")
        (folder / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Comedy\n'
                                           '2,"American President, The (1995)",Drama|Romance\n')
    return folder


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name", list(ml.REGISTRY))
def test_every_registry_format_parses(tmp_path, name):
    folder = _folder(tmp_path, name)
    spec, found = ml.resolve(name, path=tmp_path) if name not in ml.EMBEDDED else \
        ml.resolve(name, path=folder)
    assert found == folder
    log = ml.read_ratings(spec, found)
    assert log.user.tolist() in ([196, 186], [1, 2])
    assert log.rating.dtype == np.float32 and len(log.timestamp) == 2
    info = ml.read_item_info(spec, found)
    assert info["item"].tolist() == [1, 2]
    assert info["title"][0] == "Toy Story (1995)"
    if spec.format == "csv":
        assert info["title"][1] == "American President, The (1995)"
        assert info["genres"][1] == "Drama|Romance"
    elif spec.format == "dat":
        assert info["title"][1] == "Star Wars: Caf\xe9 (1977)"
        assert log.rating.tolist() == [5.0, 3.5]
    else:
        assert info["title"][1] == "Caf\xe9 Noir (1995)"
        assert info["genres"][0] == "Animation|Children's|Comedy"
        assert info["genres"][1] == "Action|Adventure|Thriller"


def test_registry_has_every_set_with_official_checksums():
    assert set(ml.REGISTRY) == {"ml-latest-small", "ml-100k", "ml-1m", "ml-10m", "ml-20m",
                                "ml-25m", "ml-32m", "ml-latest"}
    assert ml.REGISTRY["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    for spec in ml.REGISTRY.values():
        assert spec.url == f"https://files.grouplens.org/datasets/movielens/{spec.name}.zip"
        assert spec.md5 or spec.md5_published_beside
    with pytest.raises(RecsysError, match="unknown dataset 'ml-20n'.*'ml-20m'"):
        ml.get_spec("ml-20n")


def test_path_without_ratings_file_is_an_error(tmp_path):
    with pytest.raises(RecsysError, match="no u.data inside"):
        ml.resolve("ml-100k", path=tmp_path)


@pytest.mark.realdata
def test_embedded_ml_latest_small_needs_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_MIRROR", str(tmp_path / "nowhere"))
    spec, folder = ml.resolve("ml-latest-small", cache=tmp_path)
    assert folder == ml.REPO / "data" / "ml-latest-small"
    assert sha256_file(folder / "ratings.csv") == spec.ratings_sha256
    log = ml.read_ratings(spec, folder)
    assert len(log) == 100_836 and len(np.unique(log.user)) == 610
    info = ml.read_item_info(spec, folder)
    assert len(info) == 9_742 and info["title"].iloc[0] == "Toy Story (1995)"
    assert ml.status("ml-latest-small") == "embedded"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.realdata
def test_ml100k_from_the_mirror_is_verified_by_the_ratings_sha256(mirror, tmp_path):
    spec, folder = ml.resolve("ml-100k", mirror=str(mirror), cache=tmp_path)
    assert folder == tmp_path / "ml-100k"
    assert sha256_file(folder / "u.data") == \
        "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
    marker = json.loads((folder / ml.MARKER).read_text())
    assert marker["verified_by"] == "sha256 of u.data"
    log = ml.read_ratings(spec, folder)
    assert len(log) == 100_000 and len(np.unique(log.user)) == 943
    assert len(ml.read_item_info(spec, folder)) == 1_682
    # Second call: the verified cache, no mirror needed.
    assert ml.resolve("ml-100k", mirror=str(tmp_path / "gone"), cache=tmp_path)[1] == folder
    assert ml.status("ml-100k", tmp_path) == "cached"


@pytest.mark.realdata
def test_mirror_as_a_file_url(mirror, tmp_path):
    _, folder = ml.resolve("ml-100k", mirror=mirror.resolve().as_uri(), cache=tmp_path,
                           progress=False)
    assert (folder / "u.data").is_file() and (tmp_path / "ml-100k.zip").is_file()


def _nothing_extracted(cache: Path) -> bool:
    return not cache.exists() or all(p.suffix == ".zip" for p in cache.iterdir())


def test_checksum_mismatch_is_refused_and_nothing_kept(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    _zip(mirror / "ml-100k.zip", {"ml-100k/u.data": b"1\t2\t3\t4\n", "ml-100k/u.item": b""})
    with pytest.raises(RecsysError, match=r"u.data has SHA-256 .* expected 06416e59"):
        ml.resolve("ml-100k", mirror=str(mirror), cache=cache)
    assert _nothing_extracted(cache)


def test_mirror_checksum_file_is_checked(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    zpath = _zip(mirror / "ml-1m.zip", {"ml-1m/ratings.dat": b"1::2::3::4\n"})
    (mirror / "ml-1m.zip.sha256").write_text("0" * 64 + "  ml-1m.zip\n")
    with pytest.raises(RecsysError, match="does not match the mirror's ml-1m.zip.sha256"):
        ml.resolve("ml-1m", mirror=str(mirror), cache=cache)
    assert _nothing_extracted(cache)
    (mirror / "ml-1m.zip.sha256").write_text(sha256_file(zpath) + "  ml-1m.zip\n")
    spec, folder = ml.resolve("ml-1m", mirror=str(mirror), cache=cache)
    assert ml.read_ratings(spec, folder).item.tolist() == [2]
    # Without any way to verify (rebuilt zip, no checksum file, no known ratings hash): refused.
    (mirror / "ml-1m.zip.sha256").unlink()
    with pytest.raises(RecsysError, match="cannot verify this mirror copy"):
        ml.resolve("ml-1m", mirror=str(mirror), cache=tmp_path / "cache2")


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil-abs.txt", "ml-100k/../../evil.txt"])
def test_zip_slip_is_refused_with_nothing_outside_the_cache(tmp_path, evil):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    _zip(mirror / "ml-100k.zip", {"ml-100k/u.data": b"1\t2\t3\t4\n", evil: b"gotcha"})
    with pytest.raises(RecsysError, match="outside the target folder"):
        ml.resolve("ml-100k", mirror=str(mirror), cache=cache)
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil-abs.txt").exists()
    assert _nothing_extracted(cache)


def test_symlink_entries_are_refused(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "ml-100k.zip", "w") as zf:
        zf.writestr("ml-100k/u.data", b"1\t2\t3\t4\n")
        link = zipfile.ZipInfo("ml-100k/link")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(RecsysError, match="'ml-100k/link' would be written outside"):
        ml.resolve("ml-100k", mirror=str(mirror), cache=cache)
    assert _nothing_extracted(cache)


def test_truncated_and_damaged_zips_are_refused(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    data = bytes(np.random.default_rng(0).integers(0, 10, 200_000, dtype=np.uint8) + 48)
    whole = _zip(tmp_path / "whole.zip", {"ml-100k/u.data": data}).read_bytes()
    (mirror / "ml-100k.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RecsysError, match="not a complete zip archive"):
        ml.resolve("ml-100k", mirror=str(mirror), cache=cache)
    assert _nothing_extracted(cache)
    # Same length, but bytes flipped inside the compressed data: caught on reading the entry.
    damaged = bytearray(whole)
    damaged[100:110] = bytes(10)
    (mirror / "ml-100k.zip").write_bytes(bytes(damaged))
    with pytest.raises(RecsysError, match="damaged"):
        ml.resolve("ml-100k", mirror=str(mirror), cache=cache)
    assert _nothing_extracted(cache)


def test_official_download_checks_the_published_md5(tmp_path, monkeypatch):
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    zpath = _zip(site / "ml-1m.zip", {"ml-1m/ratings.dat": b"1::2::3::4\n",
                                      "ml-1m/movies.dat": b"2::Heat (1995)::Action\n"})
    digest = hashlib.md5(zpath.read_bytes()).hexdigest()
    monkeypatch.setattr(ml, "BASE_URL", site.as_uri() + "/")
    monkeypatch.setitem(ml.REGISTRY, "ml-1m",
                        dataclasses.replace(ml.REGISTRY["ml-1m"], md5="f" * 32))
    monkeypatch.delenv("RECSYS_MIRROR", raising=False)
    with pytest.raises(RecsysError, match="does not match the published f{32}"):
        ml.resolve("ml-1m", cache=cache, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []  # temp file gone too
    monkeypatch.setitem(ml.REGISTRY, "ml-1m",
                        dataclasses.replace(ml.REGISTRY["ml-1m"], md5=digest))
    spec, folder = ml.resolve("ml-1m", cache=cache, progress=False)
    assert json.loads((folder / ml.MARKER).read_text())["verified_by"].startswith("official md5")
    assert ml.read_item_info(spec, folder)["title"].tolist() == ["Heat (1995)"]

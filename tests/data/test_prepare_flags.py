"""No `recsys prepare` flag is silently ignored.

The walk below takes every option of the real `prepare` parser (so a flag added later has no
case here and fails), and runs it with each source kind: a registry dataset (a tiny ml-1m zip in
a mirror folder), ``--input FILE`` and ``--train-file/--test-file``. Where the flag applies it is
accepted and shows in the result; elsewhere it is refused with one line naming it (exit 2) and
nothing is written. The cases are this test's own statement of the rules, not the code's table.
"""

from __future__ import annotations

import argparse
import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.cli import build_parser, main
from recsys.commands.data import APPLIES
from recsys.data.interactions import Dataset
from recsys.errors import RecsysError

SOURCES = ("dataset", "input", "files")


def _rows(n_users: int) -> list[tuple[int, int, int, int]]:
    """User u rates items 1..6 + u % 15 (so the minimum-count filters bite), in time order."""
    return [(u, i, (u * i) % 5 + 1, 978_300_000 + 100 * u + i)
            for u in range(1, n_users + 1) for i in range(1, 7 + u % 15)]


def _csv(path: Path, rows: list[tuple[int, int, int, int]], sep: str = ",") -> str:
    # `stars` (always 5) lets --columns rating=stars show that it was used.
    lines = [sep.join(("user", "item", "rating", "timestamp", "stars"))]
    lines += [sep.join(map(str, (*r, 5))) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _mirror(folder: Path, n_users: int) -> str:
    folder.mkdir()
    text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in _rows(n_users))
    with zipfile.ZipFile(folder / "ml-1m.zip", "w") as zf:
        zf.writestr("ml-1m/ratings.dat", text)
    digest = hashlib.sha256((folder / "ml-1m.zip").read_bytes()).hexdigest()
    (folder / "ml-1m.zip.sha256").write_text(f"{digest}  ml-1m.zip\n")
    return str(folder)


@dataclass
class World:
    root: Path
    mirror: str
    other_mirror: str  # 25 users instead of 30
    path: str  # an extracted ml-1m folder with 20 users
    input: str
    train: str
    valid: str
    test: str
    runs: int = 0
    cache: dict[tuple[str, ...], Any] = field(default_factory=dict)
    user_features: str = ""
    item_features: str = ""

    def base(self, source: str) -> list[str]:
        return {"dataset": ["ml-1m"], "input": ["--input", self.input],
                "files": ["--train-file", self.train, "--test-file", self.test]}[source]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("flags")
    rows = _rows(30)
    last = {}
    for u, i, _, _ in rows:
        last[u] = max(last.get(u, 0), i)
    extracted = root / "extracted" / "ml-1m"
    extracted.mkdir(parents=True)
    (extracted / "ratings.dat").write_text(
        "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in _rows(20)))
    (root / "users.csv").write_text("user,age,group\n" + "".join(
        f"{u},{20 + u},{'ab'[u % 2]}\n" for u in range(1, 31)))
    (root / "items.csv").write_text("item,genres\n" + "".join(
        f"{i},{'x|y' if i % 2 else 'y'}\n" for i in range(1, 22)))
    return World(user_features=str(root / "users.csv"), item_features=str(root / "items.csv"),
        root=root, mirror=_mirror(root / "mirror", 30), other_mirror=_mirror(root / "m2", 25),
        path=str(extracted), input=_csv(root / "ratings.csv", rows),
        # each user's last two items are test, the one before validation
        train=_csv(root / "train.csv", [r for r in rows if r[1] < last[r[0]] - 2]),
        valid=_csv(root / "valid.csv", [r for r in rows if r[1] == last[r[0]] - 2]),
        test=_csv(root / "test.csv", [r for r in rows if r[1] > last[r[0]] - 2]))


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    data: Dataset | None


@pytest.fixture
def prep(world, tmp_path, monkeypatch, capsys) -> Callable[..., Outcome]:
    """`recsys prepare` with a source kind's base arguments plus ``extra``, in a fresh cache."""
    monkeypatch.setenv("RECSYS_MIRROR", world.mirror)

    def run(source: str, *extra: str) -> Outcome:
        world.runs += 1
        monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / f"cache{world.runs}"))
        out = tmp_path / f"out{world.runs}"
        capsys.readouterr()
        code = main(["prepare", *world.base(source), *extra, "--out", str(out)])
        captured = capsys.readouterr()
        data = Dataset.load(out) if code == 0 else None
        if code:
            assert not out.exists()  # nothing half-written
        return Outcome(code, captured.out, captured.err, data)

    return run


def _share(ds: Dataset, part: str) -> float:
    n = ds.parts[part].nnz if part in ds.parts else 0
    return n / (ds.train.nnz + n)


def _pairs(ds: Dataset, part: str) -> set[tuple[Any, Any]]:
    u, i = ds.parts[part].matrix.nonzero()
    return set(zip(ds.users.ids[u].tolist(), ds.items.ids[i].tolist(), strict=True))


def _differs(a: Dataset, b: Dataset, part: str) -> bool:
    return _pairs(a, part) != _pairs(b, part)


@dataclass
class Case:
    """``argv`` (the flag with a value; may use the world's paths) is accepted with the source
    kinds in ``accepted`` (after ``context``, the other flags that make it apply) and
    ``used(outcome, world, prep, source)`` holds; with any other source kind it is refused."""

    argv: Callable[[World], list[str]]
    accepted: tuple[str, ...]
    used: Callable[[Outcome, World, Callable[..., Outcome], str], bool]
    context: tuple[str, ...] = ()


ALL = SOURCES
OWN = ("input", "files")
SPLITTABLE = ("dataset", "input")


def _seed_used(o: Outcome, w: World, prep: Callable[..., Outcome], source: str) -> bool:
    other = prep(source).data  # seed 0: the random split or carve comes out differently
    return o.data.meta["split"]["seed"] == 7 and _differs(o.data, other, "valid")


def _debug_used(o: Outcome, w: World, prep: Callable[..., Outcome], source: str) -> bool:
    with pytest.raises(RecsysError):  # --debug: the error propagates (a traceback)
        main(["prepare", *w.base(source), "--debug", "--kcore", "--out", str(w.root / "x")])
    return True


CASES: dict[str, Case] = {
    "dataset": Case(lambda w: ["ml-1m"], ("dataset",),
                    lambda o, w, p, s: o.data.meta["dataset"] == "ml-1m"),
    "out": Case(lambda w: [], ALL, lambda o, w, p, s: o.data is not None),
    "split": Case(lambda w: ["--split", "loo"], SPLITTABLE,
                  lambda o, w, p, s: o.data.meta["split"]["split"] == "loo"
                  and (np.diff(o.data.parts["test"].matrix.indptr) <= 1).all()),
    "test_fraction": Case(lambda w: ["--test-fraction", "0.4"], SPLITTABLE,
                          lambda o, w, p, s: abs(o.data.parts["test"].nnz
                                                 / sum(o.data.meta["counts"]["interactions"]
                                                       .values()) - 0.4) < 0.05),
    "valid_fraction": Case(lambda w: ["--valid-fraction", "0.3"], ALL,
                           lambda o, w, p, s: abs(_share(o.data, "valid") - 0.3) < 0.06),
    "seed": Case(lambda w: ["--seed", "7"], ALL, _seed_used),
    "heldout_users": Case(lambda w: ["--heldout-users", "4"], SPLITTABLE,
                          lambda o, w, p, s: o.data.meta["split_info"]["heldout_users"] == 4,
                          context=("--split", "strong")),
    "loo_order": Case(lambda w: ["--loo-order", "random"], SPLITTABLE,
                      lambda o, w, p, s: _differs(o.data, p(s, "--split", "loo").data, "test"),
                      context=("--split", "loo")),
    "cold_item_fraction": Case(lambda w: ["--cold-item-fraction", "0.3"], SPLITTABLE,
                               lambda o, w, p, s: o.data.meta["split_info"]["cold_items"]
                               == round(0.3 * len(o.data.items)),
                               context=("--split", "cold-items", "--item-features",
                                        "{item_features}")),
    "implicit_threshold": Case(lambda w: ["--implicit-threshold", "4"], ALL,
                               lambda o, w, p, s: o.data.implicit
                               and set(o.data.train.matrix.data) == {1.0}),
    "min_user_interactions": Case(
        lambda w: ["--min-user-interactions", "12"], ALL,
        lambda o, w, p, s: 0 < len(o.data.users) < len(p(s).data.users)),
    "min_item_interactions": Case(
        lambda w: ["--min-item-interactions", "15"], ALL,
        lambda o, w, p, s: 0 < len(o.data.items) < len(p(s).data.items)),
    "kcore": Case(lambda w: ["--kcore"], ALL,
                  lambda o, w, p, s: o.data.meta["preprocessing"]["kcore"] is True,
                  context=("--min-user-interactions", "8", "--min-item-interactions", "12")),
    "mirror": Case(lambda w: ["--mirror", w.other_mirror], ("dataset",),
                   lambda o, w, p, s: len(o.data.users) == 25),
    "cache": Case(lambda w: ["--cache", str(w.root / f"own-cache{w.runs}")], ("dataset",),
                  lambda o, w, p, s: o.data.meta["source_dir"].startswith(
                      str(w.root / "own-cache"))),
    "path": Case(lambda w: ["--path", w.path], ("dataset",),
                 lambda o, w, p, s: len(o.data.users) == 20),
    "input": Case(lambda w: ["--input", w.input], ("input",),
                  lambda o, w, p, s: o.data.meta["dataset"] == "ratings.csv"),
    "train_file": Case(lambda w: ["--train-file", w.train], ("files",),
                       lambda o, w, p, s: o.data.meta["given_files"]["train"] == w.train),
    "test_file": Case(lambda w: ["--test-file", w.test], ("files",),
                      lambda o, w, p, s: o.data.meta["given_files"]["test"] == w.test),
    "valid_file": Case(lambda w: ["--valid-file", w.valid], ("files",),
                       lambda o, w, p, s: o.data.meta["given_files"]["valid"] == w.valid
                       and o.data.meta["split"]["valid_fraction"] == 0.0),
    # The separator given is the one read with: a wrong one is refused, naming --sep.
    "sep": Case(lambda w: ["--sep", ","], OWN,
                lambda o, w, p, s: "--sep" in p(s, "--sep", ";").err),
    "columns": Case(lambda w: ["--columns", "rating=stars"], OWN,
                    lambda o, w, p, s: set(o.data.train.matrix.data) == {5.0}),
    "user_features": Case(lambda w: ["--user-features", w.user_features], ALL,
                          lambda o, w, p, s: o.data.features.user.columns
                          == ("age", "group=a", "group=b")),
    "item_features": Case(lambda w: ["--item-features", w.item_features], ALL,
                          lambda o, w, p, s: o.data.features.item.columns
                          == ("genres=x", "genres=y")),
    "quiet": Case(lambda w: ["--quiet"], ALL,
                  lambda o, w, p, s: o.out == "" and "train" in p(s).out),
    "debug": Case(lambda w: ["--debug"], ALL, _debug_used),
}


def _prepare_actions() -> list[argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices["prepare"]._actions if a.dest != "help"]


DESTS = [a.dest for a in _prepare_actions()]


def test_every_flag_has_a_case_and_a_rule():
    assert set(CASES) == set(DESTS), "a prepare flag without a case here (or a stale case)"
    assert set(APPLIES) == set(DESTS), "a prepare flag without a rule in recsys.commands.data"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("dest", DESTS)
def test_flag_is_used_or_refused(world, prep, dest, source):
    case = CASES[dest]
    argv = case.argv(world)
    if source in case.accepted:
        base = world.base(source)
        context = [c.format(item_features=world.item_features) for c in case.context]
        extra = [] if argv and argv[0] in base else [*context, *argv]
        o = prep(source, *extra)
        assert o.code == 0, o.err
        assert case.used(o, world, prep, source), f"{argv} had no effect with {source}"
    else:
        o = prep(source, *argv)
        flag = "DATASET" if dest == "dataset" else argv[0]
        assert o.code == 2 and o.err.count("\n") == 1 and flag in o.err, o.err
        assert "Traceback" not in o.err


# Refused where the other flags make them moot: (source, flags, the flag named).
MOOT = [
    ("input", ["--heldout-users", "3"], "--heldout-users"),          # not strong
    ("input", ["--loo-order", "random"], "--loo-order"),              # not loo
    ("input", ["--split", "loo", "--test-fraction", "0.3"], "--test-fraction"),
    ("input", ["--split", "none", "--test-fraction", "0.3"], "--test-fraction"),
    ("dataset", ["--split", "ml100k-u1", "--test-fraction", "0.3"], "--test-fraction"),
    ("input", ["--split", "strong", "--valid-fraction", "0.2"], "--valid-fraction"),
    ("files", ["--valid-file", "{valid}", "--valid-fraction", "0.2"], "--valid-fraction"),
    ("input", ["--split", "temporal-user", "--seed", "0"], "--seed"),
    ("input", ["--split", "temporal-global", "--seed", "1"], "--seed"),
    ("input", ["--split", "loo", "--seed", "1"], "--seed"),
    ("input", ["--split", "none", "--valid-fraction", "0", "--seed", "1"], "--seed"),
    ("files", ["--valid-file", "{valid}", "--seed", "1"], "--seed"),
    ("input", ["--kcore"], "--kcore"),
    ("input", ["--split", "ml100k-u1"], "--split ml100k-u1"),
    ("dataset", ["--path", "{path}", "--mirror", "{mirror}"], "--mirror"),
    ("dataset", ["--path", "{path}", "--cache", "{root}"], "--cache"),
    ("input", ["--input", "{parquet}", "--sep", ","], "--sep"),
]


@pytest.mark.parametrize("source, flags, named", MOOT)
def test_flag_refused_where_moot(world, prep, source, flags, named):
    (world.root / "r.parquet").touch()  # never read: the flags are checked first
    paths = {"valid": world.valid, "path": world.path, "mirror": world.mirror,
             "root": str(world.root), "parquet": str(world.root / "r.parquet")}
    argv = [f.format(**paths) for f in flags]
    if source == "input" and "--input" in argv:
        source, argv = "input", argv[2:]
        world_input, world.input = world.input, paths["parquet"]
        try:
            o = prep(source, *argv)
        finally:
            world.input = world_input
    else:
        o = prep(source, *argv)
    assert o.code == 2 and o.err.count("\n") == 1 and named in o.err, o.err


def test_mirror_and_cache_refused_for_the_shipped_dataset(tmp_path, capsys):
    for flag in ("--mirror", "--cache"):
        assert main(["prepare", "ml-latest-small", flag, str(tmp_path), "--out",
                     str(tmp_path / "o")]) == 2
        assert f"error: {flag}: nothing is downloaded" in capsys.readouterr().err


def test_explicit_zero_counts_as_given(world, prep):
    """0 is a value given, not an absent flag."""
    o = prep("input", "--split", "strong", "--valid-fraction", "0")
    assert o.code == 2 and "--valid-fraction" in o.err
    o = prep("files", "--valid-file", world.valid, "--valid-fraction", "0")  # no carve: fine
    assert o.code == 0 and o.data.meta["given_files"]["valid"] == world.valid


def test_compare_prepare_section_is_held_to_the_same_rules(tmp_path):
    from recsys.commands.compare import check_prepare

    with pytest.raises(RecsysError, match=r"x.yaml: prepare: --heldout-users applies to "
                                          r"--split strong only"):
        check_prepare({"dataset": "ml-100k", "heldout_users": 3}, str(tmp_path / "d"),
                      where="x.yaml")
    check_prepare({"dataset": "ml-100k", "split": "strong", "heldout_users": 3, "quiet": True},
                  str(tmp_path / "d"), where="x.yaml")

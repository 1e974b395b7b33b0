"""A small, shared world for the reliability suite: a rating file, prepared data (implicit and
explicit) and trained runs (EASE and AutoRec), built once per session in a temporary folder.

Tests must not change it: the bad-input tests check that every file of it is untouched."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from recsys.cli import main
from reliability.helpers import write_ratings


@dataclass(frozen=True)
class World:
    root: Path
    ratings: Path
    data: Path  # implicit (ratings >= 4), with a validation part
    data_x: Path  # explicit ratings
    run_ease: Path  # ease on `data`
    run_autorec: Path  # autorec (explicit) on `data_x`


def _quiet(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, f"recsys {' '.join(argv)} failed: {err.getvalue()}"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    ratings = write_ratings(root / "ratings.csv")
    w = World(root, ratings, root / "data", root / "data_x", root / "run_ease",
              root / "run_autorec")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _quiet(["prepare", "--input", str(ratings), "--implicit-threshold", "4", "--seed", "0",
                "--out", str(w.data), "--quiet"])
        _quiet(["prepare", "--input", str(ratings), "--seed", "0", "--out", str(w.data_x),
                "--quiet"])
        _quiet(["train", "ease", "--data", str(w.data), "--out", str(w.run_ease), "--no-track",
                "--quiet"])
        _quiet(["train", "autorec", "--data", str(w.data_x), "--out", str(w.run_autorec),
                "--set", "epochs=2", "--set", "hidden=16", "--device", "cpu", "--no-track",
                "--quiet"])
    finally:
        torch.set_num_threads(threads)
    return w


@dataclass(frozen=True)
class NeuralRun:
    data: Path
    run: Path  # a finished multdae run with a checkpoint after every epoch
    args: tuple[str, ...]  # the options it was trained with (pass them again to --resume)


NEURAL_ARGS = ("--set", "epochs=3", "--set", "checkpoint_every=1", "--set", "hidden_dims=[16]",
               "--set", "batch_size=16", "--seed", "0", "--device", "cpu", "--no-track",
               "--quiet")


@pytest.fixture(scope="session")
def neural_run(world: World) -> NeuralRun:
    run = world.root / "run_multdae"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _quiet(["train", "multdae", "--data", str(world.data), "--out", str(run), *NEURAL_ARGS])
    finally:
        torch.set_num_threads(threads)
    return NeuralRun(world.data, run, NEURAL_ARGS)

"""Never accept the wrong artifact.

- A run is evaluated and scored only on the data it was trained on: another split of the same
  file, or another file whose users x items space has the same size, is refused with one line
  naming both datasets (``--force`` turns that into a one-line warning); the data a run was
  trained on passes, wherever it lies and however often it was prepared again (the production
  path: ``--split none`` and its refit). Runs written before fingerprints fall back to what they
  recorded, with a note.
- Model weights (and the data packaged with an MLflow model) carry a SHA-256 checked on load: a
  few flipped bytes that torch itself loads without complaint are refused with one line.
- Two first runs at once on a fresh SQLite tracking store both succeed.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from recsys.data.interactions import Dataset
from recsys.errors import RecsysError
from recsys.rundir import matrix_digest
from reliability.helpers import (
    REPO,
    assert_one_line_error,
    cli,
    recsys_command,
    snapshot,
    subprocess_env,
)

IMPLICIT = ("--implicit-threshold", "4")


def _prepare(capsys, ratings: Path, out: Path, *extra) -> Path:
    result = cli(["prepare", "--input", ratings, "--out", out, "--quiet", *extra], capsys)
    assert result.code == 0, result.err
    return out


def _shifted(ratings: Path, out: Path, column: str) -> Path:
    """The same log with every id of ``column`` moved by 1000: the same matrices, other ids."""
    frame = pd.read_csv(ratings)
    frame[column] += 1000
    frame.to_csv(out, index=False)
    return out


def _same_space(a: Path, b: Path) -> None:
    """The two datasets have users x items spaces of one size: the old count check passed."""
    da, db = Dataset.load(a), Dataset.load(b)
    assert (len(da.users), len(da.items)) == (len(db.users), len(db.items))


def _commands(run: Path, data: Path, tmp: Path, pairs: Path | None = None) -> dict[str, list]:
    argv = {"evaluate": ["evaluate", run, "--data", data, "--no-ci", "--json", tmp / "m.json"],
            "recommend": ["recommend", run, "--data", data, "--k", "3", "--out",
                          tmp / "lists.csv", "--device", "cpu"]}
    if pairs is not None:
        argv = {"predict": ["predict", run, "--data", data, "--pairs", pairs, "--out",
                            tmp / "pred.csv"]}
    return argv


@pytest.fixture(scope="module")
def other_split(world, tmp_path_factory) -> Path:
    """The world's rating file split with another seed (implicit, as world.data)."""
    out = tmp_path_factory.mktemp("other") / "data"
    from recsys.cli import main

    assert main(["prepare", "--input", str(world.ratings), *IMPLICIT, "--seed", "1",
                 "--out", str(out), "--quiet"]) == 0
    return out


# -- the data a run belongs to ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["evaluate", "recommend"])
def test_another_split_of_the_same_file_is_refused_naming_both(world, other_split, tmp_path,
                                                              capsys, command):
    _same_space(world.data, other_split)
    before = snapshot(world.run_ease)
    argv = _commands(world.run_ease, other_split, tmp_path)[command]
    result = cli(argv, capsys)
    assert_one_line_error(result, "not the data")
    assert str(world.data) in result.err and str(other_split) in result.err
    assert "train part" in result.err and "--force" in result.err
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "lists.csv").exists()
    assert snapshot(world.run_ease) == before


def test_force_evaluates_another_split_with_one_warning_and_inflated_metrics(
        world, other_split, tmp_path, capsys):
    run = Path(shutil.copytree(world.run_ease, tmp_path / "run"))
    own = cli(["evaluate", run, "--data", world.data, "--no-ci", "--metrics", "ndcg@100",
               "--json", tmp_path / "own.json"], capsys)
    assert own.code == 0 and own.err == "", own.err
    forced = cli(["evaluate", run, "--data", other_split, "--no-ci", "--metrics", "ndcg@100",
                  "--json", tmp_path / "forced.json", "--force"], capsys)
    assert forced.code == 0, forced.err
    warnings = [line for line in forced.err_lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "--force" in warnings[0] and str(other_split) in warnings[0]
    # What the check protects from: the other split's test items were training data here.
    own_ndcg = json.loads((tmp_path / "own.json").read_text())["ndcg@100"]
    assert json.loads((tmp_path / "forced.json").read_text())["ndcg@100"] > own_ndcg


def test_other_item_ids_or_user_ids_of_the_same_shape_are_refused(world, tmp_path, capsys):
    items = _prepare(capsys, _shifted(world.ratings, tmp_path / "items.csv", "item"),
                     tmp_path / "items", *IMPLICIT, "--seed", "0")
    users = _prepare(capsys, _shifted(world.ratings, tmp_path / "users.csv", "user"),
                     tmp_path / "users", *IMPLICIT, "--seed", "0")
    ours = Dataset.load(world.data)
    for data in (items, users):  # the same matrices: only a vocabulary tells them apart
        assert matrix_digest(Dataset.load(data).train.matrix) == matrix_digest(ours.train.matrix)
    result = cli(_commands(world.run_ease, items, tmp_path)["recommend"], capsys)
    assert_one_line_error(result, "item vocabulary differs")
    result = cli(_commands(world.run_ease, users, tmp_path)["evaluate"], capsys)
    assert_one_line_error(result, "user vocabulary differs")
    # New users' histories (--histories) are scored from the file: only the items must match.
    for data, first in ((users, 101), (items, 1101)):  # item ids of that data's catalogue
        histories = tmp_path / f"{data.name}.csv"
        histories.write_text(f"user,item\nnew,{first}\nnew,{first + 1}\n")
        result = cli(["recommend", world.run_ease, "--k", "3", "--histories", histories,
                      "--device", "cpu", "--data", data, "--out", tmp_path / f"h_{data.name}.csv"],
                     capsys)
        if data is users:
            assert result.code == 0, result.err
        else:
            assert_one_line_error(result, "item vocabulary differs")


def test_predict_refuses_another_split_of_the_ratings(world, tmp_path, capsys):
    other = _prepare(capsys, world.ratings, tmp_path / "other_x", "--seed", "1")
    _same_space(world.data_x, other)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,101\n2,102\n")
    argv = _commands(world.run_autorec, other, tmp_path, pairs)["predict"]
    assert_one_line_error(cli(argv, capsys), "not the data")
    assert not (tmp_path / "pred.csv").exists()
    forced = cli([*argv, "--force"], capsys)
    assert forced.code == 0 and (tmp_path / "pred.csv").exists()
    assert sum(line.startswith("warning: --force") for line in forced.err_lines) == 1
    # Its own data (the default) passes without a word about it.
    own = cli(["predict", world.run_autorec, "--pairs", pairs, "--out", tmp_path / "own.csv"],
              capsys)
    assert own.code == 0 and "not the data" not in own.err


def test_spark_scoring_refuses_another_split_before_spark_starts(world, other_split, tmp_path,
                                                                 capsys):
    result = cli(["recommend", world.run_ease, "--data", other_split, "--k", "3", "--engine",
                  "spark", "--out", tmp_path / "lists.parquet"], capsys)
    assert_one_line_error(result, "not the data")
    assert not (tmp_path / "lists.parquet").exists()


def test_the_production_path_passes_on_its_own_data_wherever_it_lies(world, tmp_path, capsys):
    # --split none: train on everything (train + valid, then the refit on both), score it.
    data = _prepare(capsys, world.ratings, tmp_path / "all", *IMPLICIT, "--split", "none")
    run = tmp_path / "run"
    trained = cli(["train", "ease", "--data", data, "--out", run, "--no-track", "--quiet"],
                  capsys)
    assert trained.code == 0, trained.err
    assert json.loads((run / "run.json").read_text())["refit"]["parts"] == ["train", "valid"]
    copy = Path(shutil.copytree(data, tmp_path / "copied"))  # moved to another place
    again = _prepare(capsys, world.ratings, tmp_path / "again", *IMPLICIT, "--split", "none")
    for where in (data, copy, again):  # prepared again: other file bytes, the same content
        result = cli(["recommend", run, "--data", where, "--k", "3", "--history", "all",
                      "--out", tmp_path / f"{where.name}.csv", "--device", "cpu", "--quiet"],
                     capsys)
        assert result.code == 0 and result.err == "", result.err
    # A refit run on its own split (world.run_ease: refitted on train + valid) passes too.
    result = cli(["evaluate", world.run_ease, "--data", world.data, "--no-ci"], capsys)
    assert result.code == 0 and result.err == "", result.err


def _legacy(run: Path, *drop: str) -> Path:
    """A run as written before fingerprints: run.json without ``drop``."""
    record = json.loads((run / "run.json").read_text())
    for key in drop:
        record.pop(key)
    (run / "run.json").write_text(json.dumps(record))
    return run


def test_runs_written_before_fingerprints_fall_back_to_what_they_recorded(
        world, other_split, tmp_path, capsys):
    run = _legacy(Path(shutil.copytree(world.run_ease, tmp_path / "run")), "data_fingerprint")
    result = cli(["evaluate", run, "--data", world.data, "--no-ci"], capsys)
    assert result.code == 0, result.err
    assert result.err_lines == [line for line in result.err_lines
                                if "predates data fingerprints" in line] and \
        len(result.err_lines) == 1
    assert "metadata.json digest" in result.err
    # The metadata digest it recorded still tells another split apart.
    refused = cli(["evaluate", run, "--data", other_split, "--no-ci"], capsys)
    assert_one_line_error(refused, "metadata.json differs")
    # Older still (no digest at all): only the space can be checked, and the note says so.
    older = _legacy(Path(shutil.copytree(run, tmp_path / "older")), "data_digest")
    result = cli(["evaluate", older, "--data", world.data, "--no-ci"], capsys)
    assert result.code == 0 and "only its number of users and items" in result.err
    assert len(result.err_lines) == 1


# -- checksums of the saved model --------------------------------------------------------------


def _flip_inside_a_weight(weights: Path) -> None:
    """Flip 4 bytes in the middle of the stored data of the largest float tensor of
    ``weights``; the file still loads with torch (no checksum of its own catches it), and a
    weight has changed."""
    state = torch.load(weights, weights_only=True)
    name = max((k for k, v in state.items() if v.is_floating_point() and v.numel() >= 4),
               key=lambda k: state[k].numel())
    stored = bytes(state[name].untyped_storage())
    raw = bytearray(weights.read_bytes())
    at = raw.find(stored)
    assert at >= 0, "the tensor's bytes are not stored as-is"
    at += len(stored) // 2 // 4 * 4
    raw[at:at + 4] = bytes(b ^ 0x5A for b in raw[at:at + 4])
    weights.write_bytes(bytes(raw))
    damaged = torch.load(weights, weights_only=True)
    assert any(not torch.equal(damaged[k], state[k]) for k in state)


@pytest.mark.parametrize("command", ["evaluate", "recommend", "predict"])
def test_flipped_bytes_in_weights_are_refused(world, tmp_path, capsys, command):
    source = world.run_autorec if command == "predict" else world.run_ease
    run = Path(shutil.copytree(source, tmp_path / "run"))
    _flip_inside_a_weight(run / "model" / "weights.pt")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,101\n")
    argv = ({"predict": ["predict", run, "--pairs", pairs, "--out", tmp_path / "pred.csv"]}
            if command == "predict" else _commands(run, world.data, tmp_path))[command]
    result = cli(argv, capsys)
    assert_one_line_error(result, "weights.pt: checksum mismatch")
    assert not any((tmp_path / n).exists() for n in ("m.json", "lists.csv", "pred.csv"))


def test_weights_saved_before_checksums_load_with_a_note(world, tmp_path, capsys):
    run = Path(shutil.copytree(world.run_ease, tmp_path / "run"))
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta.pop("files")["weights.pt"]["sha256"]
    (run / "model" / "model.json").write_text(json.dumps(meta))
    result = cli(["evaluate", run, "--data", world.data, "--no-ci"], capsys)
    assert result.code == 0, result.err
    assert len(result.err_lines) == 1 and "no checksum recorded" in result.err


@pytest.fixture
def packaged(world, tmp_path) -> Path:
    """world.run_ease as an MLflow pyfunc model directory (what `--engine spark` packages and
    `recsys train` logs)."""
    from recsys.tracking.packaging import save_pyfunc_model

    return save_pyfunc_model(world.run_ease, world.data, tmp_path / "pyfunc")


@pytest.mark.parametrize("damaged", ["artifacts/model/weights.pt",
                                     "artifacts/data/popularity.npy"])
def test_a_packaged_model_with_damaged_files_is_refused(packaged, damaged):
    import mlflow
    import numpy as np

    from recsys.tracking.packaging import load_pyfunc

    loaded = load_pyfunc(str(packaged))  # sound as packaged
    assert len(loaded.predict(pd.DataFrame({"user": [1]}), params={"k": 3})) == 3
    path = packaged / damaged
    if path.suffix == ".pt":
        _flip_inside_a_weight(path)
    else:  # a .npy has no checksum of its own either: other popularity scores load fine
        values = np.load(path)
        np.save(path, values[::-1].copy())
    with pytest.raises(RecsysError, match=f"{path.name}: checksum mismatch"):
        load_pyfunc(str(packaged))
    # MLflow's own loader runs the same load_context, so it refuses the files too.
    with pytest.raises(RecsysError, match="checksum mismatch"):
        mlflow.pyfunc.load_model(str(packaged))


# -- concurrent first runs on a SQLite store -------------------------------------------------------


def test_concurrent_first_runs_on_a_fresh_sqlite_store_both_succeed(world, tmp_path):
    db = tmp_path / "mlflow.db"
    procs = [subprocess.Popen([*recsys_command(), "train", "pop", "--data", str(world.data),
                               "--out", str(tmp_path / f"run{i}"), "--tracking-uri",
                               f"sqlite:///{db}", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(), cwd=REPO) for i in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0, 0], [err for _, err in results]
    ids = {json.loads((tmp_path / f"run{i}" / "tracking.json").read_text())["run_id"]
           for i in range(3)}
    with sqlite3.connect(db) as con:
        runs = dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())
        experiments = con.execute("SELECT name FROM experiments").fetchall()
    assert runs == dict.fromkeys(ids, "FINISHED")
    assert sorted(experiments) == [("Default",), ("recsys",)]  # one experiment, not one each

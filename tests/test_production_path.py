"""Production path end to end: `prepare --split none` (everything trains, a validation carve for
early stopping), train EASE and a tiny Mult-DAE, and score every user's top 10.

Without a test part "the user's history" is the same whether `recommend` reads the training
part alone or every part, so the checks here hold for both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.data.interactions import Dataset
from recsys.data.synthetic import synthetic_ratings, write_ml20m_csv


@pytest.fixture(scope="module")
def production(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("production")
    log = write_ml20m_csv(root / "ratings.csv",
                          synthetic_ratings(150, 120, 3_000, min_per_user=8, seed=1))
    out = root / "prep"
    assert main(["prepare", "--input", str(log), "--split", "none", "--implicit-threshold", "3.5",
                 "--valid-fraction", "0.1", "--seed", "0", "--quiet", "--out", str(out)]) == 0
    return out


def test_split_none_trains_on_everything_with_a_validation_carve(production, tmp_path):
    ds = Dataset.load(production)
    assert set(ds.parts) == {"train", "valid"}
    assert ds.meta["split"]["split"] == "none" and ds.meta["split"]["test_fraction"] == 0.0
    # A per-user 10% carve: every user keeps training interactions; the parts do not overlap.
    assert (np.diff(ds.train.matrix.indptr) > 0).all()
    valid = ds.parts["valid"].matrix
    assert valid.multiply(ds.train.matrix).nnz == 0
    assert abs(valid.nnz / (valid.nnz + ds.train.nnz) - 0.1) < 0.02
    # --valid-fraction 0: train only, and nothing is left out of it.
    log = next(production.parent.glob("ratings.csv"))
    assert main(["prepare", "--input", str(log), "--split", "none", "--implicit-threshold", "3.5",
                 "--valid-fraction", "0", "--quiet", "--out", str(tmp_path / "all")]) == 0
    everything = Dataset.load(tmp_path / "all")
    assert set(everything.parts) == {"train"}
    assert everything.train.nnz == ds.train.nnz + valid.nnz + ds.meta["dropped"][
        "unseen_items"]["valid"]


@pytest.mark.parametrize("model, extra", [
    ("ease", []), ("multdae", ["--set", "epochs=2", "--set", "hidden_dims=[32]"])])
def test_train_and_recommend_every_user(production, tmp_path, capsys, model, extra):
    run = tmp_path / model
    assert main(["train", model, "--data", str(production), "--out", str(run), "--no-track",
                 "--quiet", *extra]) == 0
    out = tmp_path / "top10.csv"
    assert main(["recommend", str(run), "--data", str(production), "--users", "all", "--k",
                 "10", "--out", str(out), "--quiet"]) == 0
    ds = Dataset.load(production)
    top = pd.read_csv(out)
    assert sorted(top["user"].unique().tolist()) == sorted(ds.users.ids.tolist())
    assert (top.groupby("user").size() == 10).all()
    assert not top["cold"].any()
    # None of a user's training items is recommended back.
    u = ds.users.index(top["user"].to_numpy())
    i = ds.items.index(top["item"].to_numpy())
    assert (u >= 0).all() and (i >= 0).all()
    assert ds.train.matrix[u, i].A1.sum() == 0
    # Evaluating on the missing test part is one clear line; validation works.
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(production)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no test part" in err and "--part valid" in err
    assert main(["evaluate", str(run), "--data", str(production), "--part", "valid", "--no-ci",
                 "--quiet"]) == 0


def test_register_into_a_local_sqlite_store(production, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", "ease", "--data", str(production), "--out", str(tmp_path / "run"),
                 "--tracking-uri", uri, "--experiment", "production", "--register", "prod-ease",
                 "--quiet"]) == 0
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("prod-ease", "champion")
    assert int(version.version) == 1 and version.name == "prod-ease"

"""Scoring with Spark (local mode, `local[2]`): `recsys recommend --engine spark` and
pipelines/spark_score.py write the same lists as the single-machine `recsys recommend`: same
users, items, ranks and cold flags, scores equal to float32 rounding.

One SparkSession serves the whole module (starting the JVM is the slow part); small Arrow batches
make the UDF score each partition in several calls."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.rundir import read_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]
pyspark = pytest.importorskip("pyspark")

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
K = 7


def taste_dataset(n_users: int = 80, n_items: int = 60, seed: int = 1) -> Dataset:
    """Implicit data from a low-rank taste model; integer user ids, *string* item ids (so both
    id types travel through the UDF), train / test parts."""
    rng = np.random.default_rng(seed)
    affinity = rng.normal(size=(n_users, 3)) @ rng.normal(size=(3, n_items))
    liked = affinity + rng.normal(scale=0.5, size=affinity.shape) > 1.0
    part = rng.random(liked.shape) < 0.8
    users = Vocabulary(np.arange(n_users, dtype=np.int64) * 3 + 5)
    items = Vocabulary(np.array([f"m{i:03d}" for i in range(n_items)], dtype=object))

    def interactions(mask: np.ndarray) -> Interactions:
        u, i = np.nonzero(mask)
        return Interactions.from_frame(pd.DataFrame({"user": u, "item": i}), users, items)

    parts = {"train": interactions(liked & part), "test": interactions(liked & ~part)}
    return Dataset(parts, {"implicit": True, "dataset": "taste"})


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (SparkSession.builder.master("local[2]").appName("recsys-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.default.parallelism", "2")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
               .config("spark.driver.memory", "1g")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Mult-VAE run trained with MLflow tracking (sqlite), so its pyfunc model is logged."""
    tmp = tmp_path_factory.mktemp("spark")
    data = tmp / "data"
    taste_dataset().save(data)
    db = f"sqlite:///{tmp / 'mlflow.db'}"
    assert main(["train", "multvae", "--data", str(data), "--out", str(tmp / "run"),
                 "--set", "epochs=3", "--set", "hidden_dims=[32]", "--set", "latent_dim=8",
                 "--device", "cpu", "--quiet", "--tracking-uri", db,
                 "--experiment", "spark-tests"]) == 0
    return tmp, data, tmp / "run", db


def local_lists(tmp: Path, data: Path, run: Path, users: str, name: str) -> pd.DataFrame:
    out = tmp / name
    assert main(["recommend", str(run), "--data", str(data), "--users", users, "--k", str(K),
                 "--device", "cpu", "--out", str(out)]) == 0
    return pd.read_parquet(out)


def assert_same_lists(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == ["user", "item", "rank", "score", "cold"]
    assert got.dtypes.to_dict() == expected.dtypes.to_dict()
    got = got.sort_values(["user", "rank"]).reset_index(drop=True)
    expected = expected.sort_values(["user", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns="score"), expected.drop(columns="score"))
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-7)


def test_spark_engine_writes_the_local_engines_lists(spark, trained):
    tmp, data, run, _ = trained
    dataset = Dataset.load(data)
    known = dataset.users.ids[::2]
    # Known users (some twice) and two ids the data has never seen (cold: popularity).
    users = np.concatenate([known, known[:5], [999_999, 1_000_001]]).astype(np.int64)
    pd.DataFrame({"user": users}).to_parquet(tmp / "users.parquet")

    out = tmp / "spark.parquet"
    assert main(["recommend", str(run), "--data", str(data), "--engine", "spark",
                 "--users", str(tmp / "users.parquet"), "--k", str(K), "--out", str(out)]) == 0
    assert out.is_dir() and (out / "_SUCCESS").is_file()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".spark.parquet")]  # no leftovers
    got = pd.read_parquet(out)
    expected = local_lists(tmp, data, run, str(tmp / "users.parquet"), "local.parquet")
    assert_same_lists(got, expected)
    assert got["user"].nunique() == len(known) + 2
    assert got.groupby("user")["cold"].first().sum() == 2
    assert (got.groupby("user").size() == K).all()


def test_spark_engine_passes_the_history_through(spark, trained, capsys):
    tmp, data, run, _ = trained
    dataset = Dataset.load(data)
    pd.DataFrame({"user": dataset.users.ids[:30]}).to_parquet(tmp / "some.parquet")
    out = tmp / "spark-all.parquet"
    assert main(["recommend", str(run), "--data", str(data), "--engine", "spark", "--quiet",
                 "--history", "all", "--users", str(tmp / "some.parquet"), "--k", str(K),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no summary line
    got = pd.read_parquet(out)
    local_out = tmp / "local-all.parquet"
    assert main(["recommend", str(run), "--data", str(data), "--history", "all", "--users",
                 str(tmp / "some.parquet"), "--k", str(K), "--device", "cpu",
                 "--out", str(local_out)]) == 0
    assert_same_lists(got, pd.read_parquet(local_out))
    # every part is masked: no test item is listed again (the default lists some)
    test = dataset.parts["test"].matrix.tocoo()
    pairs = pd.DataFrame({"user": dataset.users.lookup(test.row),
                          "item": dataset.items.lookup(test.col)})
    assert got.merge(pairs, on=["user", "item"]).empty
    before = local_lists(tmp, data, run, str(tmp / "some.parquet"), "local-before.parquet")
    assert not before.merge(pairs, on=["user", "item"]).empty


def test_pipeline_scores_every_user_with_the_logged_model(spark, trained, capsys):
    tmp, data, run, db = trained
    model_uri = read_run(run)["mlflow"]["model_uri"]
    assert model_uri
    spec = importlib.util.spec_from_file_location("spark_score", PIPELINES / "spark_score.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    out = tmp / "pipeline.parquet"
    assert pipeline.main(["--model", model_uri, "--tracking-uri", db, "--k", str(K),
                          "--out", str(out), "--experiment", "spark-tests-batch"]) == 0
    assert "[3/3] summarise" in capsys.readouterr().err
    expected = local_lists(tmp, data, run, "all", "all.parquet")
    assert_same_lists(pd.read_parquet(out), expected)

    from mlflow import MlflowClient

    client = MlflowClient(db)
    [job] = client.search_runs([client.get_experiment_by_name("spark-tests-batch").experiment_id])
    assert job.data.metrics["score/users"] == len(Dataset.load(data).users)
    assert job.data.tags["pipeline.step.score_and_write"] == "done"


def test_user_ids_of_the_wrong_type_are_one_line_errors(spark, trained):
    from recsys.scoring.spark import score_users, users_frame
    from recsys.tracking.packaging import fetched_model, lists_udf, save_pyfunc_model

    tmp, data, run, _ = trained
    users = users_frame(spark, ["5", "not-a-user"])
    with fetched_model(str(save_pyfunc_model(run, data, tmp / "pyfunc"))) as model:
        predict, user_type = lists_udf(spark, model, K)
        with pytest.raises(RecsysError, match="'not-a-user' is not of the model's id type"):
            score_users(users, predict, user_type)
        with pytest.raises(RecsysError, match="no 'user' column"):
            score_users(users.withColumnRenamed("user", "id"), predict, user_type)


def test_only_recsys_own_model_code_is_run(trained):
    """A model whose code file is not recsys's pyfunc_model.py is refused before Spark sees it."""
    from recsys.tracking.packaging import fetched_model, save_pyfunc_model

    tmp, data, run, _ = trained
    model = save_pyfunc_model(run, data, tmp / "tampered")
    code = model / "pyfunc_model.py"
    code.write_text(code.read_text() + "\nprint('not recsys')\n")
    with pytest.raises(RecsysError, match="is not recsys's pyfunc_model.py"):
        with fetched_model(str(model)):
            pass


@pytest.mark.parametrize(("extra", "says"), [
    (["--allow", "items.csv"], "--allow is not supported with --engine spark"),
    (["--resume"], "--resume is not supported with --engine spark"),
    (["--out", "lists.csv"], "the Spark engine writes Parquet"),
])
def test_local_only_options_are_refused_before_spark_starts(extra, says, tmp_path, capsys):
    args = ["recommend", "RUN", "--data", "DATA", "--engine", "spark", "--k", "3",
            "--out", str(tmp_path / "o.parquet"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]

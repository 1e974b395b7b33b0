"""The two pipelines end to end on ml-latest-small, with a real MLflow store (sqlite in a temporary
working directory, MLflow's default backend): the benchmark prepares the data, trains, evaluates,
compares and registers the best model; batch scoring loads `models:/NAME@champion` and writes the
same lists as `recsys recommend`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from recsys.cli import main as recsys_main
from recsys.tracking.records import METRIC_STAGES

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.realdata]

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _load(name: str):
    sys.path.insert(0, str(PIPELINES))
    spec = importlib.util.spec_from_file_location(f"pipeline_{name}", PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return tmp_path


def test_benchmark_then_batch_score(workdir, capsys):
    config = workdir / "bench.yaml"
    config.write_text("""
name: pl
data: prepared/mls
prepare:
  dataset: ml-latest-small
  implicit_threshold: 4.0
  min_item_interactions: 10
  seed: 0
out: runs
metrics: [recall@20, ndcg@100]
bootstrap: 200
models:
  - model: pop
  - model: itemknn
    tune: {k: [20, 100]}
""")
    # The default store, spelled out with its full path: MLflow caches a store per URI for the
    # life of the process, so a relative URI would stay bound to this test's working directory
    # and later tests' "sqlite:///mlflow.db" would write here.
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    benchmark = _load("movielens_benchmark")
    assert benchmark.main([str(config), "--tracking-uri", uri, "--register", "pl-best"]) == 0
    out = capsys.readouterr()
    assert "[1/5] prepare" in out.err and "[5/5] register" in out.err
    assert "champion:" in out.out
    assert (workdir / "prepared" / "mls" / "metadata.json").is_file()

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("recsys").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    steps = {k: v for k, v in parent.data.tags.items() if k.startswith("pipeline.step.")}
    assert steps == {"pipeline.step.prepare": "done",
                     "pipeline.step.train_evaluate_pop": "done",
                     "pipeline.step.train_evaluate_itemknn": "done",
                     "pipeline.step.compare": "done", "pipeline.step.register": "done"}
    # Each step's time under time/step/, one chart section beside the runs' own stages.
    assert parent.data.metrics["time/step/compare"] > 0
    assert all(k.split("/", 1)[0] in METRIC_STAGES for k in parent.data.metrics)
    best = parent.data.tags["recsys.best_model"]
    champion = client.get_model_version_by_alias("pl-best", "champion")
    assert champion.run_id == parent.data.tags["recsys.best_run_id"]

    scorer = _load("batch_score")
    assert scorer.main(["--model", "models:/pl-best@champion", "--out", "recs.parquet",
                        "--k", "10", "--chunk-size", "250", "--tracking-uri", uri]) == 0
    assert recsys_main(["recommend", f"runs/{best}", "--data", "prepared/mls", "--k", "10",
                        "--device", "cpu", "--out", "expected.parquet"]) == 0
    got = pd.read_parquet("recs.parquet")
    expected = pd.read_parquet("expected.parquet")
    pd.testing.assert_frame_equal(got, expected)
    [batch] = client.search_runs([client.get_experiment_by_name("recsys-batch").experiment_id])
    assert batch.data.params["users"] == str(expected["user"].nunique())
    # the registered model carries the history its known users are scored from (the default's)
    assert batch.data.params["history"] == "before-test"
    assert batch.data.metrics["score/users_per_second"] > 0
    assert batch.data.metrics["score/users"] == expected["user"].nunique()
    assert batch.data.metrics["score/rows"] == len(expected)
    assert batch.data.metrics["score/cold_users"] == expected.groupby("user")["cold"].first().sum()
    assert batch.data.tags["pipeline.step.write_parquet"] == "done"


def test_batch_score_reports_a_missing_model_in_one_line(workdir, capsys):
    scorer = _load("batch_score")
    code = scorer.main(["--model", "models:/no-such-model@champion", "--out", "r.parquet",
                        "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--no-track"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: cannot load MLflow model models:/no-such-model@champion")
    assert not Path("r.parquet").exists()


class _Trap:
    """Unpickling this creates ``marker``: proof that a model was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        import builtins

        return (builtins.open, (str(self.marker), "w"))


def _pickled_pyfunc(path: Path, marker: Path) -> Path:
    """A pyfunc model logged the old way, from a PythonModel instance (cloudpickled)."""
    import mlflow

    class TrapModel(mlflow.pyfunc.PythonModel):
        def __init__(self) -> None:
            self.trap = _Trap(marker)

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            return model_input

    mlflow.pyfunc.save_model(str(path), python_model=TrapModel(), pip_requirements=["mlflow"])
    return path


def test_batch_score_refuses_a_pickled_model_without_unpickling_it(workdir, capsys):
    import mlflow

    # The trap is real: MLflow's own loader (pickles allowed by default) springs it.
    witness = workdir / "witness"
    mlflow.pyfunc.load_model(str(_pickled_pyfunc(workdir / "witness-model", witness)))
    assert witness.exists()

    marker = workdir / "UNPICKLED"
    model = _pickled_pyfunc(workdir / "pickled-model", marker)
    scorer = _load("batch_score")
    capsys.readouterr()  # MLflow's warnings while saving the model above
    code = scorer.main(["--model", str(model), "--out", "r.parquet", "--no-track",
                        "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"error: MLflow model {model} is not a recsys model logged from "
                              "code (python_function); refusing to load it")
    assert not marker.exists() and not Path("r.parquet").exists()


def test_batch_score_refuses_to_run_another_models_code(workdir, capsys):
    """A pyfunc logged from code that is not recsys's would be run on load: it is refused."""
    import mlflow

    marker = workdir / "RAN"
    code = workdir / "evil_model.py"
    code.write_text("import mlflow\n"
                    f"open({str(marker)!r}, 'w').close()\n"
                    "class M(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input, params=None):\n"
                    "        return model_input\n"
                    "mlflow.models.set_model(M())\n")
    mlflow.pyfunc.save_model(str(workdir / "code-model"), python_model=str(code),
                             pip_requirements=["mlflow"])
    marker.unlink()  # saving ran it once; loading must not
    scorer = _load("batch_score")
    capsys.readouterr()
    assert scorer.main(["--model", str(workdir / "code-model"), "--out", "r.parquet",
                        "--no-track", "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "its model code (evil_model.py) is not recsys's pyfunc_model.py" in err[-1]
    assert not marker.exists() and not Path("r.parquet").exists()

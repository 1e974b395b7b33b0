"""What a packaged recsys model is, in MLflow's terms: the pyfunc logged "from code", its
signature and requirements, and the ways to save, fetch, load and apply one.

One home for the packaging that `MlflowTracker.log_model` (a run's logged model),
`save_pyfunc_model` (`recsys recommend --engine spark`) and the Spark UDF (`lists_udf`, handed to
`recsys.scoring.spark.score_users`) share, so that the three are the same model. Loading refuses
anything but recsys's own pyfunc (`fetch_recsys_model`): a pickled model is never unpickled.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from recsys.errors import RecsysError
from recsys.scoring.serving import DEFAULT_K, user_feature_encoding, write_serving_data
from recsys.tracking.setup import resolve_tracking_uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys.data.interactions import Dataset

# The pyfunc is logged "from code": MLflow copies this file into the logged model and runs it on
# load (it calls mlflow.models.set_model), so nothing is pickled when logging and nothing is
# unpickled when loading, whoever hands us the model URI.
PYFUNC_MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
# MLflow signature types of ids -> Spark SQL types.
_SPARK_ID_TYPES = {"long": "bigint", "integer": "int", "string": "string"}
# Where a packaged model keeps the `write_serving_data` artifact.
PACKAGED_DATA = Path("artifacts") / "data"
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")

# Short retries so that a dead server stalls a training run for seconds, not minutes (MLflow's
# own defaults retry 7 times with exponential backoff, ~4 minutes). The user's settings win.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # No usage telemetry from a library call, and no progress bars in batch logs.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def configure_environment() -> None:
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        # MLflow's INFO lines ("Creating initial MLflow database tables...") are not for the
        # terminal of a training run; recsys says itself where the run went. Warnings stay.
        logging.getLogger("mlflow").setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Hide MLflow's advice aimed at interactive users (input examples, type hints) and the lines
    it prints itself (the registry's "Successfully registered model": recsys reports the
    version in its own words)."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def short_error(exc: BaseException) -> str:
    """An exception as one short line (type and the start of its message), for error lines."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# -- the package ------------------------------------------------------------------------------


def model_signature(integer_users: bool = True, integer_items: bool = True,
                    user_encoding: list[dict[str, Any]] | None = None) -> ModelSignature:
    """The pyfunc's signature; ``user_encoding`` (`user_feature_encoding`): the data's user
    feature columns join the input as optional columns (numbers as double, categories as
    text), so that a request may bring a new user's features (recsys.scoring.serving)."""
    user_t = "long" if integer_users else "string"
    item_t = "long" if integer_items else "string"
    features = [ColSpec("double" if spec["kind"] == "numeric" else "string", spec["column"],
                        required=False) for spec in user_encoding or []]
    inputs = Schema([ColSpec(user_t, "user"),
                     ColSpec(Array(item_t), "items", required=False),
                     ColSpec(Array("double"), "ratings", required=False), *features])
    outputs = Schema([ColSpec(user_t, "user"), ColSpec(item_t, "item"), ColSpec("integer", "rank"),
                      ColSpec("float", "score"), ColSpec("boolean", "cold")])
    return ModelSignature(inputs=inputs, outputs=outputs,
                          params=ParamSchema([ParamSpec("k", "long", DEFAULT_K),
                                          ParamSpec("layout", "string", "long")]))


def requirements() -> list[str]:
    """What a fresh environment needs to serve the model: recsys and its runtime stack."""
    from importlib import metadata

    reqs = []
    for dist in ("recsys-ae", "mlflow", "torch", "numpy", "pandas", "scipy", "pyarrow",
                 "pydantic", "pyyaml"):
        try:
            version = metadata.version(dist).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
        reqs.append(f"{dist}=={version}")
    return reqs


@contextlib.contextmanager
def pyfunc_parts(run_dir: str | Path, dataset: Dataset, *,
                 history: str = "before-test") -> Iterator[dict[str, Any]]:
    """The keyword arguments of ``mlflow.pyfunc.save_model`` / ``Model.log`` that make RUN_DIR's
    model with ``dataset``'s vocabularies and ``history`` a recsys pyfunc model (valid inside
    the block: the data artifact is a temporary folder)."""
    model_dir = Path(run_dir) / "model"
    if not (model_dir / "model.json").is_file():
        raise RecsysError(f"{run_dir} holds no trained model (model/model.json missing); "
                          "train one with `recsys train`")
    with tempfile.TemporaryDirectory(prefix="recsys-serving-") as tmp:
        data_art = write_serving_data(dataset, Path(tmp) / "data", history=history)
        yield {"python_model": str(PYFUNC_MODEL_CODE),  # from code: never pickled
               "artifacts": {"model": str(model_dir), "data": str(data_art)},
               "signature": model_signature(dataset.users.is_integer, dataset.items.is_integer,
                                            user_feature_encoding(dataset)),
               "pip_requirements": requirements()}


def save_pyfunc_model(run_dir: str | Path, data_dir: str | Path, path: str | Path, *,
                      history: str = "before-test") -> Path:
    """Write RUN_DIR's model with the prepared data's vocabularies and history as an MLflow
    pyfunc model directory at ``path`` (the same model `recsys train` logs to MLflow); known
    users are scored from ``Dataset.known_history(history)``, as `recsys recommend
    --history`."""
    from recsys.data.interactions import Dataset

    path = Path(path)
    with pyfunc_parts(run_dir, Dataset.load(data_dir), history=history) as parts, quiet_mlflow():
        mlflow.pyfunc.save_model(str(path), **parts)
    return path


def use_tracking_uri(tracking_uri: str | None = None) -> str:
    """Point MLflow at the tracking store that resolves ``runs:/`` and ``models:/`` URIs
    (``--tracking-uri``, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``)."""
    configure_environment()  # short HTTP retries, no progress bars
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    return uri


# -- fetching and loading ---------------------------------------------------------------------


def load_pyfunc(model_uri: str, tracking_uri: str | None = None) -> Any:
    """``mlflow.pyfunc.load_model`` with recsys's tracking URI resolution and one-line errors,
    for recsys's own models only (`fetch_recsys_model`: anything else is refused before any of
    it is loaded)."""
    configure_environment()
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory(prefix="recsys-model-") as tmp:
        local = fetch_recsys_model(model_uri, tmp)
        try:
            # MLflow's own switch, as a second lock: no pickled python model is deserialised.
            # Everything is read into memory while loading, so the folder can go afterwards.
            with _environ(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false"):
                return mlflow.pyfunc.load_model(str(local))
        except RecsysError as exc:  # our own line (a damaged file: which one), not cut short
            raise RecsysError(f"cannot load MLflow model {model_uri}: {exc}") from None
        except Exception as exc:
            raise RecsysError(f"cannot load MLflow model {model_uri} "
                              f"({short_error(exc)})") from None


# How MLflow records a pyfunc logged from code (python_model="file.py") in MLmodel.
CODE_MODEL_LOADER = "mlflow.pyfunc.loaders.code_model"


def fetch_recsys_model(model_uri: str, dst: str | Path) -> Path:
    """Download the model at ``model_uri`` into the folder ``dst`` and check, before anything of
    it is loaded, that it is recsys's pyfunc: logged from code (a pickled PythonModel would be
    unpickled on load), and that code is recsys's ``pyfunc_model.py`` byte for byte (MLflow runs
    the model's copy of it on load). Returns the local model folder; `RecsysError` otherwise."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                         dst_path=str(dst)))
        flavors = Model.load(str(local / "MLmodel")).flavors
    except Exception as exc:  # a missing run, registry name, path or artifact store
        raise RecsysError(f"cannot load MLflow model {model_uri} ({short_error(exc)})") from None
    pyfunc = flavors.get("python_function") or {}
    code = pyfunc.get("model_code_path")
    if pyfunc.get("loader_module") != CODE_MODEL_LOADER or not code:
        kind = ", ".join(sorted(flavors)) or "no flavour"
        raise RecsysError(f"MLflow model {model_uri} is not a recsys model logged from code "
                          f"({kind}); refusing to load it (loading a model logged otherwise may "
                          "unpickle it): log it with `recsys train --register NAME`")
    copy = local / Path(str(code)).name
    if not copy.is_file() or copy.read_bytes() != PYFUNC_MODEL_CODE.read_bytes():
        raise RecsysError(f"MLflow model {model_uri}: its model code ({copy.name}) is not "
                          f"recsys's {PYFUNC_MODEL_CODE.name}; refusing to run it: log the model "
                          "with `recsys train --register NAME` (of this recsys version)")
    return local


@contextlib.contextmanager
def fetched_model(model_uri: str) -> Iterator[Path]:
    """The model at ``model_uri`` downloaded once into a temporary directory and checked to be
    recsys's pyfunc before anything of it runs (`fetch_recsys_model`). Scoring uses this checked
    copy, so an alias moved meanwhile cannot swap the model."""
    configure_environment()
    with tempfile.TemporaryDirectory(prefix="recsys-model-") as tmp:
        yield fetch_recsys_model(model_uri, tmp)


def model_users(model: str | Path) -> Any:
    """External ids of every user a model knows (the user vocabulary packaged with it; read
    without loading the model): the users to score when no table is given. ``model``: a checked
    local copy (`fetched_model`)."""
    import pandas as pd

    path = Path(model) / PACKAGED_DATA / "users.parquet"
    try:
        return pd.read_parquet(path)["user"].to_numpy()
    except (OSError, KeyError, ValueError) as exc:
        raise RecsysError(f"{model}: cannot read the model's users ({short_error(exc)})") from None


def id_types(model: str | Path) -> tuple[str, str]:
    """Spark SQL types of the user and item ids of a model (a checked local copy,
    `fetched_model`), read from its signature."""
    signature = Model.load(str(Path(model) / "MLmodel")).signature
    if signature is None or signature.outputs is None:
        raise RecsysError(f"MLflow model {model} has no signature; it is not a recsys top-K "
                          "model (log one with `recsys train`)")
    types = {}
    for schema, column in ((signature.inputs, "user"), (signature.outputs, "item")):
        spec = next((c for c in schema.inputs if c.name == column), None)
        if spec is None:
            raise RecsysError(f"MLflow model {model}: its signature has no '{column}' column; "
                              "it is not a recsys top-K model")
        kind = getattr(spec.type, "name", str(spec.type))
        types[column] = _SPARK_ID_TYPES.get(kind, "string")
    return types["user"], types["item"]


def lists_udf(spark: SparkSession, model: str | Path, k: int, *,
              env_manager: str = "local") -> tuple[Any, str]:
    """The Spark UDF of a recsys pyfunc model (a checked local copy, `fetched_model`) returning
    one struct per user in the pyfunc's ``lists`` layout (`recsys.scoring.spark.LISTS_TYPE`),
    and the Spark SQL type of the model's user ids. The UDF keeps its own copy of the model."""
    from recsys.scoring.spark import lists_type

    if k < 1:
        raise RecsysError(f"k must be at least 1 (got {k})")
    if env_manager not in ENV_MANAGERS:
        raise RecsysError(f"env_manager '{env_manager}': use one of {', '.join(ENV_MANAGERS)}")
    configure_environment()
    model_uri = str(model)
    user_type, item_type = id_types(model_uri)
    try:
        with quiet_mlflow(), warnings.catch_warnings():
            # pyspark 4 warns that it does not fully support pandas 3; the UDF's exchange (Arrow
            # batches of ids in, lists out) is covered by tests/scoring/test_spark.py.
            warnings.filterwarnings("ignore", message="PySpark does not yet fully support")
            predict = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=lists_type(item_type),
                                              env_manager=env_manager,
                                              params={"k": int(k), "layout": "lists"},
                                              # MLflow's own lock on the executors, as in
                                              # load_pyfunc: nothing pickled is deserialised.
                                              extra_env={"MLFLOW_ALLOW_PICKLE_DESERIALIZATION":
                                                         "false"})
    except RecsysError:
        raise
    except Exception as exc:
        raise RecsysError(f"cannot load MLflow model {model_uri} as a Spark UDF "
                          f"({short_error(exc)})") from None
    return predict, user_type


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

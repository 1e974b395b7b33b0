"""Top-K lists with Spark: the MLflow pyfunc model as a UDF (`mlflow.pyfunc.spark_udf`).

    recsys recommend RUN_DIR --data DIR --engine spark --users USERS.parquet --k 100 \\
        --out OUT.parquet                                   # local[*], or under spark-submit
    spark-submit pipelines/spark_score.py --model models:/NAME@champion --users ... --out ...

The model is the pyfunc that `recsys train` logs to MLflow (`recsys.tracking.mlflow`, built on
`recsys.tracking.pyfunc.TopKPredictor`): the weights plus the vocabularies, the known history and
the popularity list, so an executor needs nothing but the model. `recsys recommend --engine
spark` packages RUN_DIR with the prepared data of ``--data`` into such a model first
(`save_pyfunc_model`, storing the ``--history`` it is given), so its lists are those of the local
engine. Any model is fetched once on
the driver and checked to be recsys's own (`fetched_model`) before Spark ships that copy to the
executors.

A Spark UDF returns one value per input row, so the model is asked for its ``lists`` layout: one
struct per user, ``items`` and ``scores`` as arrays of length <= K (ranked) and the ``cold`` flag.
`score_users` then turns each struct into K rows with ``posexplode`` (the array position is the
rank), which gives the columns and types of `recsys recommend`: user, item (external ids, int64
or string as in the vocabularies), rank (int32, 1 is best), score (float32), cold (bool). Users
are de-duplicated; a user's rows are in rank order, users in no particular order. Spark hands the
UDF Arrow batches of ``spark.sql.execution.arrow.maxRecordsPerBatch`` users (10,000 by default):
that bounds an executor's memory, as ``--chunk-size`` does locally.

On executors the model scores on the CPU unless ``RECSYS_DEVICE`` says otherwise (e.g.
``--conf spark.executorEnv.RECSYS_DEVICE=cuda`` on GPU nodes). ``env_manager="local"`` uses the
executors' own Python environment (recsys installed there); ``virtualenv``/``uv``/``conda``
rebuild the environment the model was logged with.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.errors import RecsysError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

APP_NAME = "recsys-score"
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")
# MLflow signature types of ids -> Spark SQL types.
_SPARK_ID_TYPES = {"long": "bigint", "integer": "int", "string": "string"}
# Where a packaged model keeps the `write_serving_data` artifact.
PACKAGED_DATA = Path("artifacts") / "data"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# -- the model --------------------------------------------------------------------------------


def save_pyfunc_model(run_dir: str | Path, data_dir: str | Path, path: str | Path, *,
                      history: str = "before-test") -> Path:
    """Write RUN_DIR's model with the prepared data's vocabularies and history as an MLflow
    pyfunc model directory at ``path`` (the same model `recsys train` logs to MLflow); known
    users are scored from ``Dataset.known_history(history)``, as `recsys recommend
    --history`."""
    import mlflow

    from recsys.data.interactions import Dataset
    from recsys.tracking.mlflow import (
        PYFUNC_MODEL_CODE,
        _quiet_mlflow,
        _requirements,
        model_signature,
    )
    from recsys.tracking.pyfunc import write_serving_data

    run_dir, path = Path(run_dir), Path(path)
    model_dir = run_dir / "model"
    if not (model_dir / "model.json").is_file():
        raise RecsysError(f"{run_dir} holds no trained model (model/model.json missing); "
                          "train one with `recsys train`")
    dataset = Dataset.load(data_dir)
    with tempfile.TemporaryDirectory(prefix="recsys-serving-") as tmp:
        data_art = write_serving_data(dataset, Path(tmp) / "data", history=history)
        with _quiet_mlflow():
            mlflow.pyfunc.save_model(
                str(path), python_model=str(PYFUNC_MODEL_CODE),  # from code: never pickled
                artifacts={"model": str(model_dir), "data": str(data_art)},
                signature=model_signature(dataset.users.is_integer, dataset.items.is_integer),
                pip_requirements=_requirements())
    return path


def use_tracking_uri(tracking_uri: str | None = None) -> str:
    """Point MLflow at the tracking store that resolves ``runs:/`` and ``models:/`` URIs
    (``--tracking-uri``, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``)."""
    import mlflow

    from recsys.tracking.mlflow import configure_environment
    from recsys.tracking.options import resolve_tracking_uri

    configure_environment()  # short HTTP retries, no progress bars
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def fetched_model(model_uri: str) -> Iterator[Path]:
    """The model at ``model_uri`` downloaded once on the driver into a temporary directory,
    checked to be recsys's pyfunc before anything of it runs (the rule of
    `recsys.tracking.mlflow.load_pyfunc`): logged from code, and that code is recsys's own
    ``pyfunc_model.py`` byte for byte (a pickled model would be unpickled on load, another
    model's code would be run). Scoring uses this checked copy, so an alias moved meanwhile
    cannot swap the model."""
    from recsys.tracking.mlflow import configure_environment, fetch_recsys_model

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
        raise RecsysError(f"{model}: cannot read the model's users ({_short(exc)})") from None


def id_types(model: str | Path) -> tuple[str, str]:
    """Spark SQL types of the user and item ids of a model (a checked local copy,
    `fetched_model`), read from its signature."""
    from mlflow.models import Model

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


def lists_type(item_type: str) -> str:
    """The UDF's result: one struct per user (DDL), in the pyfunc's ``lists`` layout."""
    return f"items array<{item_type}>, scores array<float>, cold boolean"


# -- scoring ----------------------------------------------------------------------------------


def score_users(spark: SparkSession, model: str | Path, users: DataFrame, k: int, *,
                env_manager: str = "local") -> DataFrame:
    """Top-``k`` lists (user, item, rank, score, cold) of the users in ``users`` (a ``user``
    column) with a recsys pyfunc model: a checked local copy from `fetched_model` (``with
    fetched_model("models:/NAME@ALIAS") as model: ...``). Lazy: nothing is scored until the
    result is written or collected; the UDF keeps its own copy of the model, so ``model`` may
    be removed once this returns."""
    import warnings

    import mlflow
    from pyspark.sql import functions as F

    from recsys.tracking.mlflow import _quiet_mlflow, configure_environment

    configure_environment()

    if k < 1:
        raise RecsysError(f"k must be at least 1 (got {k})")
    if env_manager not in ENV_MANAGERS:
        raise RecsysError(f"env_manager '{env_manager}': use one of {', '.join(ENV_MANAGERS)}")
    if "user" not in users.columns:
        raise RecsysError(f"the users table has no 'user' column (columns: "
                          f"{', '.join(users.columns) or 'none'})")
    model_uri = str(model)
    user_type, item_type = id_types(model_uri)
    # try_cast: a malformed id becomes NULL (reported below) instead of failing the job.
    ids = users.select(F.col("user").try_cast(user_type).alias("user"),
                       F.col("user").alias("given"))
    bad = ids.filter(F.col("user").isNull()).select("given").first()
    if bad is not None:
        what = "empty" if bad[0] is None else f"'{bad[0]}' is not of the model's id type"
        raise RecsysError(f"the users table: a user id is {what} ({user_type}); fix the table")
    ids = ids.select("user").dropDuplicates(["user"])
    try:
        with _quiet_mlflow(), warnings.catch_warnings():
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
                          f"({_short(exc)})") from None
    lists = ids.select("user", predict(F.struct("user")).alias("top"))
    # One row per (user, position); posexplode numbers the positions from 0.
    ranked = lists.select(
        "user", F.col("top.cold").alias("cold"),
        F.posexplode(F.arrays_zip(F.col("top.items").alias("item"),
                                  F.col("top.scores").alias("score"))).alias("pos", "entry"))
    return ranked.select(
        "user", F.col("entry.item").alias("item"),
        (F.col("pos") + 1).cast("int").alias("rank"),
        F.col("entry.score").cast("float").alias("score"), "cold")


# -- sessions and files -----------------------------------------------------------------------


def get_session(master: str | None = None, app_name: str = APP_NAME,
                conf: dict[str, str] | None = None) -> tuple[SparkSession, bool]:
    """The active SparkSession (``spark-submit``, a notebook, a test), else a new one on
    ``master`` (default ``local[*]`` outside spark-submit). Returns it and whether this call
    created it (only then should the caller stop it)."""
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError:
        raise RecsysError("the Spark engine needs pyspark: pip install 'recsys-ae[spark]'"
                          ) from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName(app_name)
    submitted = SparkConf().contains("spark.master")  # spark-submit set it
    if master is not None or not submitted:
        master = master or "local[*]"
        builder = builder.master(master)
        if master.startswith("local"):
            # Local workers are started with $PYSPARK_PYTHON (default: whatever `python3` is on
            # PATH); this interpreter is the one with recsys and mlflow installed.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = builder.config("spark.ui.enabled", "false")
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # no Java, a bad master URL
        raise RecsysError(f"cannot start Spark on {master or 'the submitted master'} "
                          f"({_short(exc)}); Spark needs Java 17+ (JAVA_HOME)") from None
    spark.sparkContext.setLogLevel("ERROR")  # a batch job: its own summary line is the report
    return spark, True


def is_local_path(path: str | Path) -> bool:
    """A path without a URI scheme (``hdfs://``, ``s3a://``, ``file:``...)."""
    return re.match(r"^[A-Za-z][\w+.-]*:", str(path)) is None or bool(
        re.match(r"^[A-Za-z]:[\\/]", str(path)))


def write_lists(spark: SparkSession, lists: DataFrame, out: str, *,
                overwrite: bool = True) -> str:
    """Write ``lists`` as a Parquet dataset (a directory of part files) at ``out``.

    On a local filesystem with a local master the parts are written into a temporary directory
    beside ``out`` and renamed onto it when complete: nothing half-written under the final name.
    Elsewhere (HDFS, object stores, a cluster's default filesystem) Spark's output committer
    publishes the job and writes ``_SUCCESS`` last; readers should look for it.
    """
    from recsys.data.io import replace_dir

    local_master = spark.sparkContext.master.startswith("local")
    if is_local_path(out) and local_master:
        target = Path(out)
        if target.exists() and not target.is_dir() and not target.is_symlink():
            raise RecsysError(f"--out {out} is a file; the Spark engine writes a directory of "
                              "Parquet parts: choose a new name or remove it")
        if target.exists() and not overwrite:
            raise RecsysError(f"--out {out} already exists")
        # Replaced only when it is a lists dataset recsys wrote (its marker is a dot file,
        # which Spark and pyarrow readers skip).
        with replace_dir(target, LISTS_KIND, what="Spark lists dataset", format_version=1,
                         legacy=_is_unmarked_lists) as tmp:
            lists.write.mode("overwrite").parquet(tmp.resolve().as_uri())
        return str(target)
    lists.write.mode("overwrite" if overwrite else "errorifexists").parquet(out)
    return out


LISTS_KIND = "spark-lists"
# What Spark's Parquet writer puts in a dataset folder: parts, _SUCCESS and their .crc files.
_SPARK_OUTPUT = re.compile(r"^\.?(part-.+|_SUCCESS)(\.crc)?$")


def _is_unmarked_lists(folder: Path) -> bool:
    """A lists dataset written before markers existed: nothing but Spark's own files."""
    return all(_SPARK_OUTPUT.match(e) for e in os.listdir(folder))


def summarise(spark: SparkSession, out: str) -> dict[str, int]:
    """Rows, distinct users and cold users of a written lists dataset (one scan)."""
    from pyspark.sql import functions as F

    written = spark.read.parquet(Path(out).resolve().as_uri() if is_local_path(out) else out)
    row = written.agg(F.count("*").alias("rows"), F.countDistinct("user").alias("users"),
                      F.sum(((F.col("rank") == 1) & F.col("cold")).cast("int")).alias("cold")
                      ).first()
    return {"rows": int(row["rows"]), "users": int(row["users"]), "cold": int(row["cold"] or 0)}


def parse_conf(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` Spark settings (values kept as text, as Spark reads them)."""
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RecsysError(f"--conf {pair}: expected KEY=VALUE")
        conf[key.strip()] = value.strip()
    return conf


def users_frame(spark: SparkSession, ids: Any) -> DataFrame:
    """A one-column (``user``) DataFrame of ids held on the driver."""
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support")
        return spark.createDataFrame(pd.DataFrame({"user": ids}))


def read_users(spark: SparkSession, path: str) -> DataFrame:
    """A Parquet table of users (a file or a directory of parts) with a ``user`` column."""
    if is_local_path(path) and not Path(path).exists():
        raise RecsysError(f"--users {path}: no such file or directory")
    try:
        users = spark.read.parquet(Path(path).resolve().as_uri() if is_local_path(path)
                                   else path)
    except Exception as exc:
        raise RecsysError(f"--users {path}: not a readable Parquet table ({_short(exc)})"
                          ) from None
    if "user" not in users.columns:
        raise RecsysError(f"--users {path}: no 'user' column (columns: "
                          f"{', '.join(users.columns) or 'none'})")
    return users.select("user")


# -- `recsys recommend --engine spark` ---------------------------------------------------------


# Local-engine options that the Spark engine does not offer, and why.
UNSUPPORTED = {
    "histories": "score new users' histories with the local engine",
    "allow": "filter the lists after scoring, or use the local engine",
    "deny": "filter the lists after scoring, or use the local engine",
    "resume": "Spark reruns failed tasks itself",
}


def check_options(args: Any) -> None:
    """One line for a local-engine option given with ``--engine spark``."""
    for flag, instead in UNSUPPORTED.items():
        if getattr(args, flag, None):
            raise RecsysError(f"--{flag} is not supported with --engine spark; {instead}")
    suffix = Path(str(args.out)).suffix.lower()
    if suffix not in (".parquet", ".pq", ""):
        raise RecsysError(f"--out {args.out}: the Spark engine writes Parquet (a directory of "
                          "parts); use a .parquet name")


def run_recommend(args: Any) -> int:
    """`recsys recommend ... --engine spark` (see `recsys.commands.recommend`)."""
    import time

    from recsys.commands.recommend import coerce_ids, read_id_file
    from recsys.data.interactions import Dataset
    from recsys.run import check_run_data, load_run

    check_options(args)
    if args.k < 1:
        raise RecsysError(f"--k must be at least 1 (got {args.k})")
    data = Dataset.load(args.data)
    if args.k > len(data.items):
        raise RecsysError(f"--k {args.k} is larger than the catalogue ({len(data.items)} items)")
    model, info = load_run(args.run_dir)
    check_run_data(args.run_dir, info, model, data, args.data,
                   force=bool(getattr(args, "force", False)))
    del model
    users_path = None if args.users == "all" else str(args.users)
    parquet_users = users_path is not None and (
        Path(users_path).suffix.lower() in (".parquet", ".pq") or Path(users_path).is_dir()
        or not is_local_path(users_path))
    local_users = None
    if users_path is None:
        local_users = data.users.ids
    elif not parquet_users:  # a CSV or one id per line, as the local engine reads
        local_users = coerce_ids(read_id_file(users_path, "user"), data.users, users_path,
                                 "user")

    started = time.perf_counter()
    spark, owned = get_session(getattr(args, "spark_master", None))
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-pyfunc-") as tmp:
            packaged = str(save_pyfunc_model(args.run_dir, args.data, Path(tmp) / "model",
                                             history=getattr(args, "history",
                                                             "before-test")))
            if local_users is not None:
                users = users_frame(spark, local_users)
            else:
                users = read_users(spark, users_path)
            with fetched_model(packaged) as model:
                lists = score_users(spark, model, users, args.k,
                                    env_manager=getattr(args, "env_manager", "local"))
            out = write_lists(spark, lists, str(args.out))
        summary = summarise(spark, out)
        master = spark.sparkContext.master
    finally:
        if owned:
            spark.stop()
    seconds = time.perf_counter() - started
    if not getattr(args, "quiet", False):
        print(f"wrote {out}: {summary['users']} users ({summary['cold']} cold), "
              f"{summary['rows']} rows with Spark ({master}) in {seconds:.1f} s", file=sys.stderr)
    return 0

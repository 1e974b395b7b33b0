"""Top-K lists with Spark: sessions, the scoring plan and the writer (no mlflow here).

    recsys recommend RUN_DIR --data DIR --engine spark --users USERS.parquet --k 100 \\
        --out OUT.parquet                                   # local[*], or under spark-submit
    spark-submit pipelines/spark_score.py --model models:/NAME@champion --users ... --out ...

The model is the pyfunc that `recsys train` logs to MLflow, applied as a UDF that the tracking
side builds (`recsys.tracking.packaging.lists_udf`: the model fetched once on the driver and
checked to be recsys's own before Spark ships that copy to the executors); the use case that
joins the two is `recsys.workflows.recommend.spark_recommend`.

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

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.errors import RecsysError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

APP_NAME = "recsys-score"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# -- scoring ----------------------------------------------------------------------------------


def lists_type(item_type: str) -> str:
    """The UDF's result: one struct per user (DDL), in the pyfunc's ``lists`` layout."""
    return f"items array<{item_type}>, scores array<float>, cold boolean"


def score_users(users: DataFrame, predict: Any, user_type: str) -> DataFrame:
    """Top-K lists (user, item, rank, score, cold) of the users in ``users`` (a ``user``
    column), given ``predict``: a UDF from one struct of a user to a struct in ``lists_type``
    (`recsys.tracking.packaging.lists_udf` builds it from a recsys pyfunc model), and the Spark
    SQL type of the model's user ids. Lazy: nothing is scored until the result is written or
    collected."""
    from pyspark.sql import functions as F

    if "user" not in users.columns:
        raise RecsysError(f"the users table has no 'user' column (columns: "
                          f"{', '.join(users.columns) or 'none'})")
    # try_cast: a malformed id becomes NULL (reported below) instead of failing the job.
    ids = users.select(F.col("user").try_cast(user_type).alias("user"),
                       F.col("user").alias("given"))
    bad = ids.filter(F.col("user").isNull()).select("given").first()
    if bad is not None:
        what = "empty" if bad[0] is None else f"'{bad[0]}' is not of the model's id type"
        raise RecsysError(f"the users table: a user id is {what} ({user_type}); fix the table")
    ids = ids.select("user").dropDuplicates(["user"])
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

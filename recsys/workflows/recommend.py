"""Top-K lists of many users streamed into a file, chunk by chunk (bounded memory, resumable).

`score_to_file` is the one scoring loop: `recsys recommend` (local engine), the batch pipeline
(`pipelines/batch_score.py`, through the registered pyfunc's predictor) and any caller with a
`TopKPredictor` hand it the users and a `ChunkedWriter`. `spark_recommend` is `recsys recommend
--engine spark`: the run packaged as the pyfunc model and applied as a Spark UDF.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from recsys.data.interactions import Dataset
from recsys.data.io import WriteError, write_advice
from recsys.errors import RecsysError
from recsys.scoring.export import ChunkedWriter, lists_schema
from recsys.scoring.serving import TopKPredictor


@dataclass
class UserRows:
    """Whom to score: external ids (as written in the output), internal ids (-1: unknown to the
    model) and where each one's history is: row ``rows[i]`` of ``history``."""

    ids: np.ndarray
    internal: np.ndarray
    history: sp.csr_matrix
    rows: np.ndarray

    @classmethod
    def known(cls, predictor: TopKPredictor, ids: np.ndarray) -> UserRows:
        """Users named by external id, scored from the predictor's stored history (unknown ones
        from an empty row: cold)."""
        internal = predictor.users.index(np.asarray(ids))
        empty = sp.csr_matrix((1, predictor.history.shape[1]), dtype=np.float32)
        history = sp.vstack([predictor.history, empty]).tocsr()
        rows = np.where(internal >= 0, internal, predictor.history.shape[0])
        return cls(np.asarray(ids), internal, history, rows)

    @classmethod
    def new(cls, ids: np.ndarray, history: sp.csr_matrix) -> UserRows:
        """Users the model has never seen, scored from the given history rows alone."""
        return cls(np.asarray(ids), np.full(len(ids), -1, dtype=np.int64), history.tocsr(),
                   np.arange(len(ids)))


@dataclass
class Scored:
    users: int
    cold: int  # cold users scored in this call (a resumed run's earlier chunks not counted)
    rows: int  # rows of the finished file, every chunk included
    seconds: float


def item_titles(dataset: Dataset) -> np.ndarray:
    """Each item's title (internal order), from the prepared data's item list; an item the list
    lacks gets None. No list (data not from MovieLens): one line."""
    info = dataset.item_info
    if info is None or "title" not in info.columns:
        raise RecsysError("--with-titles: this prepared data has no item titles (they come from "
                          "a MovieLens movie list); drop --with-titles")
    by_id = pd.Series(info["title"].to_numpy(), index=info["item"].to_numpy())
    by_id = by_id[~by_id.index.duplicated()]
    return by_id.reindex(dataset.items.ids).astype(object).where(
        lambda t: t.notna(), None).to_numpy()


def score_to_file(predictor: TopKPredictor, users: UserRows, writer: ChunkedWriter, *, k: int,
                  chunk_size: int, quiet: bool = True, desc: str = "recommend",
                  titles: np.ndarray | None = None) -> Scored:
    """Score ``users`` chunk by chunk into ``writer`` (chunks it already holds are skipped) and
    assemble the file. A write failure removes the partial output (it would only fill a full
    disk further); an interruption keeps it for ``resume``. ``titles`` (`item_titles`): a
    ``title`` column after the others."""
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    if k < 1 or chunk_size < 1:
        raise RecsysError("k and the chunk size must be at least 1")
    schema = lists_schema(users.ids, predictor.items.ids)
    if titles is not None:
        schema = schema.append(pa.field("title", pa.string()))
    n = len(users.ids)
    start = time.perf_counter()
    cold = 0
    try:
        # disable=None: no bar when stderr is not a terminal either.
        with tqdm(total=n, unit="users", unit_scale=True, disable=True if quiet else None,
                  file=sys.stderr, desc=desc) as bar:
            for c in range(-(-n // chunk_size)):
                lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
                if not writer.committed(c):
                    table, items, chunk_cold = predictor.lists(
                        users.ids[lo:hi], users.internal[lo:hi],
                        users.history[users.rows[lo:hi]], k)
                    if titles is not None:  # rows in the table's order: row-major, kept items
                        table = table.append_column(
                            "title", pa.array(titles[items[items >= 0]], type=pa.string()))
                    writer.write(c, table.cast(schema))
                    cold += int(chunk_cold.sum())
                bar.update(hi - lo)
        writer.finish(schema)
    except WriteError as exc:
        writer.discard()
        raise WriteError(f"--out {writer.path}: {write_advice(exc.errno)} (the partial output "
                         "was removed)", exc.errno) from exc
    return Scored(users=n, cold=cold, rows=writer.rows, seconds=time.perf_counter() - start)


def spark_recommend(run_dir: str | Path, data_dir: str | Path, out: str, *, k: int,
                    users: str | None = None, history: str = "before-test",
                    master: str | None = None, env_manager: str = "local", force: bool = False,
                    quiet: bool = False) -> dict[str, int]:
    """`recsys recommend --engine spark`: RUN_DIR with the prepared data packaged as the MLflow
    pyfunc model (the one `recsys train` logs, storing ``history``), applied to ``users`` (all
    of the data's users, a CSV / one-id-per-line file, or a Parquet table) as a Spark UDF, and
    written as a Parquet dataset at ``out``. Returns the written rows, users and cold users."""
    from recsys.data.ids import coerce_ids, read_id_file
    from recsys.data.interactions import Dataset
    from recsys.data.readers import is_parquet
    from recsys.rundir import check_run_data, load_run
    from recsys.scoring import spark
    from recsys.tracking.packaging import fetched_model, lists_udf, save_pyfunc_model

    if Path(str(out)).suffix.lower() not in (".parquet", ".pq", ""):
        raise RecsysError(f"--out {out}: the Spark engine writes Parquet (a directory of "
                          "parts); use a .parquet name")
    if k < 1:
        raise RecsysError(f"--k must be at least 1 (got {k})")
    data = Dataset.load(data_dir)
    if k > len(data.items):
        raise RecsysError(f"--k {k} is larger than the catalogue ({len(data.items)} items)")
    model, info = load_run(run_dir)
    check_run_data(run_dir, info, model, data, data_dir, force=force)
    del model
    parquet_users = users is not None and (
        is_parquet(users) or Path(users).is_dir()
        or not spark.is_local_path(users))
    local_users = None
    if users is None:
        local_users = data.users.ids
    elif not parquet_users:  # a CSV or one id per line, as the local engine reads
        local_users = coerce_ids(read_id_file(users, "user"), data.users, users, "user")

    started = time.perf_counter()
    session, owned = spark.get_session(master)
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-pyfunc-") as tmp:
            packaged = str(save_pyfunc_model(run_dir, data_dir, Path(tmp) / "model",
                                             history=history))
            frame = (spark.users_frame(session, local_users) if local_users is not None
                     else spark.read_users(session, str(users)))
            with fetched_model(packaged) as checked:
                predict, user_type = lists_udf(session, checked, k, env_manager=env_manager)
                lists = spark.score_users(frame, predict, user_type)
            written = spark.write_lists(session, lists, str(out))
        summary = spark.summarise(session, written)
        where = session.sparkContext.master
    finally:
        if owned:
            session.stop()
    if not quiet:
        print(f"wrote {written}: {summary['users']} users ({summary['cold']} cold), "
              f"{summary['rows']} rows with Spark ({where}) in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return summary

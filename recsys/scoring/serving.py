"""The serving object: a trained model plus the vocabularies, history and popularity list that
turn it into top-K lists for external user ids. `recsys recommend`, the batch pipeline and the
MLflow pyfunc (recsys.tracking.mlflow) all score through it; no mlflow here.

A packaged model is two directories, logged as the pyfunc's artifacts:

- ``model/``: the run's model directory (model.json + weights.pt), loaded with
  `Recommender.load` (``torch.load(weights_only=True)``: nothing is unpickled);
- ``data/``: what scoring needs from the prepared data and nothing more: the user and item
  vocabularies (``users.parquet``, ``items.parquet``), ``history.npz`` (the CSR a known user is
  scored from and whose items are masked from their list: `Dataset.known_history`, by default
  ``before-test``, what `recsys evaluate` scores the test part from; ``all`` adds the test
  part), ``popularity.npy`` (the list given to a user with no history) and ``serving.json``
  (which history is stored, under ``history``, and the SHA-256 of each of the other files,
  under ``sha256``).

Loading verifies every file against its recorded digest (the model's through `Recommender.load`,
the data's through ``serving.json``): damaged bytes are refused with one line rather than
served as other lists. Packages written before digests were recorded load with a note.

`TopKPredictor.predict` takes a DataFrame with

- ``user`` (required): external user ids;
- ``items`` (optional): per row, a list of external item ids the user interacted with that the
  model has not seen: they join the stored history of a known user (a fresh session) and are the
  whole history of a new user. ``[]`` adds nothing. Unknown item ids are ignored. When the column
  is present every row needs a list (MLflow's schema check refuses nulls in an array column);
- ``ratings`` (optional, with ``items``): per row, the ratings aligned with ``items``, for models
  trained on explicit ratings; without it every listed item counts as 1 (as in
  ``recsys recommend --histories``).

- user feature columns (optional; only for a model trained on user features, such as cvae):
  the columns of the feature file the prepared data's user features were made from (ml-100k:
  ``age``, ``gender``, ``occupation``), numbers or text as in that file (``Action|Comedy`` for a
  multi-valued one). A row with any of them set is scored from those features (encoded with the
  data's stored encoding, ``user_features`` in ``serving.json``: a category the data never had
  and an absent column add nothing, a missing number is the mean) together with its history;
  a row with none set is scored as without the columns. A model that reads no user features
  ignores them.

and returns the long table ``user, item, rank, score, cold`` (external ids, rank from 1, seen
items masked; ``cold`` flags users with no history at all: they get the popularity list, scored
by each item's share of the training interactions, unless the model scores them from the user
features the row brings), the same
lists and columns as `recsys recommend` writes. Rows keep the order of the input users. Params:
``k`` (list length, default 10) and ``layout`` (``long``, or ``lists``: one row per input user
with ``items`` and ``scores`` as lists, for engines such as Spark whose UDFs return one value per
input row).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import torch

from recsys.data.features import apply_encoding
from recsys.data.interactions import Dataset, Vocabulary
from recsys.data.io import read_json, sha256_file, write_json
from recsys.errors import RecsysError
from recsys.models.base import Recommender, verify_digest
from recsys.scoring.export import lists_table
from recsys.scoring.topk import DEFAULT_BATCH_SIZE, as_device, place_model, topk_chunk

HISTORY_FILE = "history.npz"
POPULARITY_FILE = "popularity.npy"
SERVING_FILE = "serving.json"
SERVING_DATA = ("users.parquet", "items.parquet", HISTORY_FILE, POPULARITY_FILE)
DEFAULT_K = 10
OUTPUT_COLUMNS = ("user", "item", "rank", "score", "cold")
USER_ENCODING = "user_features"  # serving.json: how the data's user features were encoded
LAYOUTS = ("long", "lists")


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Training interactions per item: the scores of a cold user's list (as `recsys recommend`)."""
    return np.diff(train.tocsc().indptr).astype(np.float32)


def user_feature_encoding(dataset: Dataset) -> list[dict[str, Any]] | None:
    """How ``dataset``'s user features were encoded (`recsys.data.features.encode_features`'
    record, per source column), or None when it has none."""
    recorded = (dataset.meta.get("features") or {}).get("user") or {}
    encoding = recorded.get("encoding") if dataset.features.user is not None else None
    return list(encoding) if encoding is not None else None


def encode_user_features(frame: pd.DataFrame, encoding: list[dict[str, Any]], where: str, *,
                         first_row: int = 0) -> np.ndarray:
    """``frame``'s rows (one user each) encoded as the prepared data's user features were
    (`apply_encoding`): a category the data never had sets nothing (a zero vector for that
    column), an empty cell is the mean of a number; text where the data had numbers is refused
    in one line naming ``where``, the column and the row (``first_row``: the first one's
    number)."""
    for spec in encoding:
        name = spec["column"]
        if spec["kind"] != "numeric" or name not in frame.columns:
            continue
        raw = frame[name].reset_index(drop=True)
        text = raw.astype(str).str.strip()
        given = raw.notna().to_numpy() & (text != "").to_numpy()
        bad = np.flatnonzero(given & pd.to_numeric(text, errors="coerce").isna().to_numpy())
        if len(bad):
            raise RecsysError(f"{where}: column '{name}', row {int(bad[0]) + first_row}: "
                              f"'{raw.iloc[bad[0]]}' is not a number (the data's '{name}' "
                              "feature is numeric)")
    return apply_encoding(frame, encoding, source=where)


def read_user_features(path: str | Path, encoding: list[dict[str, Any]] | None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A user feature file (`recsys.data.features.read_feature_file`: CSV or Parquet, the id
    column first or named ``user``) as (its ids as text, the rows encoded by ``encoding``)."""
    from recsys.data.features import read_feature_file

    where = f"--user-features {path}"
    if encoding is None:
        raise RecsysError(f"{where}: the prepared data has no user features, so there is no "
                          "encoding to read new users' features with (prepare it with "
                          "--user-features FILE)")
    frame = read_feature_file(path, "user")
    ids = frame.iloc[:, 0].astype(str).str.strip()
    blank = np.flatnonzero(frame.iloc[:, 0].isna().to_numpy() | (ids == "").to_numpy())
    if len(blank):
        raise RecsysError(f"{where}: row {int(blank[0]) + 2} has no user id")
    repeated = np.flatnonzero(ids.duplicated().to_numpy())
    if len(repeated):
        raise RecsysError(f"{where}: user {ids.iloc[repeated[0]]} appears on more than one row "
                          f"(row {int(repeated[0]) + 2}); give one row per user")
    # Rows are numbered as an editor shows a CSV: the header is row 1.
    return ids.to_numpy(dtype=object), encode_user_features(frame, encoding, where, first_row=2)


def write_serving_data(dataset: Dataset, directory: str | Path, *,
                       history: str = "before-test") -> Path:
    """Write the ``data/`` artifact of a packaged model into ``directory``; ``history``: which
    `Dataset.known_history` it stores (recorded in ``serving.json``)."""
    known = dataset.known_history(history)  # an unknown name is refused before anything exists
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dataset.users.to_frame("user").to_parquet(directory / "users.parquet", index=False)
    dataset.items.to_frame("item").to_parquet(directory / "items.parquet", index=False)
    np.savez_compressed(directory / HISTORY_FILE, data=known.data.astype(np.float32),
                        indices=known.indices, indptr=known.indptr,
                        shape=np.asarray(known.shape))
    np.save(directory / POPULARITY_FILE, item_popularity(dataset.train.matrix))
    write_json(directory / SERVING_FILE, {"implicit": dataset.implicit,
                                          "parts": sorted(dataset.parts), "history": history,
                                          USER_ENCODING: user_feature_encoding(dataset),
                                          "sha256": {name: sha256_file(directory / name)
                                                     for name in SERVING_DATA}})
    return directory


class TopKPredictor:
    """A trained model plus the vocabularies and history that turn it into top-K lists."""

    def __init__(self, model: Recommender, users: Vocabulary, items: Vocabulary,
                 history: sp.csr_matrix, popularity: np.ndarray, *,
                 device: str | torch.device | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, history_kind: str | None = None,
                 banned: torch.Tensor | None = None,
                 user_encoding: list[dict[str, Any]] | None = None) -> None:
        if history.shape != (len(users), len(items)):
            raise RecsysError(f"history shape {history.shape} does not match the vocabularies "
                              f"({len(users)} users, {len(items)} items)")
        self.model, self.users, self.items = model, users, items
        self.history = history.tocsr()
        # Which Dataset.known_history ``history`` is (None: a matrix given by the caller).
        self.history_kind = history_kind
        self.popularity = np.asarray(popularity, dtype=np.float32)
        self.batch_size = batch_size
        self.device = as_device(device)
        # The cold users' scores, on the device the masks and scores are on (once, not per chunk):
        # each item's share of the training interactions, a number in [0, 1] that no one reads
        # as a model score (raw counts such as 196 sat beside model scores of ~4).
        share = self.popularity / max(float(self.popularity.sum()), 1.0)
        self._popularity = torch.from_numpy(share).to(self.device or "cpu")
        # Items never recommended (``recsys recommend --allow/--deny``): a bool mask on the device.
        self.banned = banned
        # How the data's user features were encoded (`user_feature_encoding`), to encode the
        # features a request brings; and features given by external id (`recsys recommend
        # --user-features`), read by `lists` for the users it scores.
        self.user_encoding = user_encoding
        self.given_features: tuple[Vocabulary, np.ndarray] | None = None
        place_model(model, self.device)
        # A transductive model (item-based CFGAN) conditions on every known interaction, as
        # `recsys evaluate` and `recsys recommend` declare it: the same lists.
        model.observe(self.history)

    @classmethod
    def from_dataset(cls, model: Recommender, dataset: Dataset, *,
                     device: str | torch.device | None = None,
                     history: str = "before-test") -> TopKPredictor:
        """Serve ``model`` over a prepared dataset held in memory (no files written), known
        users scored from ``dataset.known_history(history)`` (as `recsys recommend
        --history`)."""
        return cls(model, dataset.users, dataset.items, dataset.known_history(history),
                   item_popularity(dataset.train.matrix), device=device, history_kind=history,
                   user_encoding=user_feature_encoding(dataset))

    @classmethod
    def load(cls, model_dir: str | Path, data_dir: str | Path, *,
             device: str | torch.device | None = None) -> TopKPredictor:
        data_dir = Path(data_dir)
        model = Recommender.load(model_dir)  # verifies the weights against model.json
        digests = read_serving_meta(data_dir).get("sha256")
        try:
            # Each file is read once, verified, and parsed from the verified bytes.
            raw = {name: (data_dir / name).read_bytes() for name in SERVING_DATA}
        except FileNotFoundError as exc:
            raise RecsysError(f"{data_dir}: not a packaged model's data ({exc.filename} "
                              "missing)") from None
        if digests is None:
            print(f"note: {data_dir}: no checksums in {SERVING_FILE} (packaged by an older "
                  "recsys); the model's data is loaded unverified", file=sys.stderr)
        else:
            for name, data in raw.items():
                verify_digest(data_dir / name, data, digests.get(name),
                              recorded_in=data_dir / SERVING_FILE)
        users = Vocabulary(pd.read_parquet(io.BytesIO(raw["users.parquet"]))["user"].to_numpy())
        items = Vocabulary(pd.read_parquet(io.BytesIO(raw["items.parquet"]))["item"].to_numpy())
        with np.load(io.BytesIO(raw[HISTORY_FILE]), allow_pickle=False) as z:
            history = sp.csr_matrix((z["data"], z["indices"], z["indptr"]),
                                    shape=tuple(z["shape"]))
        popularity = np.load(io.BytesIO(raw[POPULARITY_FILE]), allow_pickle=False)
        return cls(model, users, items, history, popularity, device=device,
                   history_kind=packaged_history(data_dir),
                   user_encoding=read_serving_meta(data_dir).get(USER_ENCODING))

    @property
    def meta(self) -> dict[str, Any]:
        return {"model": self.model.name, "n_users": len(self.users), "n_items": len(self.items),
                "history": self.history_kind}

    def all_users(self) -> np.ndarray:
        """External ids of every user the model knows (for batch scoring)."""
        return self.users.ids

    def input_history(self, frame: pd.DataFrame) -> tuple[np.ndarray, sp.csr_matrix]:
        """Internal user ids (-1 when unknown) and the history rows the input asks to score."""
        if "user" not in frame.columns:
            raise RecsysError("input has no 'user' column (got columns: "
                              f"{', '.join(map(str, frame.columns)) or 'none'})")
        n = len(frame)
        users = self.users.index(frame["user"].to_numpy())
        given = np.zeros(n, dtype=bool)
        if "items" in frame.columns:
            given = frame["items"].notna().to_numpy(dtype=bool)
        # The stored history of known users; unknown users start from nothing.
        known = (users >= 0).astype(np.float32)
        stored = (sp.diags(known) @ self.history[np.maximum(users, 0)]).tocsr()
        stored.eliminate_zeros()
        if not given.any():
            return users, stored
        extra = self._given_rows(frame, given)
        # Listed items join the stored history; where both hold an item, the listed value wins.
        overlap = stored.multiply(extra > 0)
        return users, (stored - overlap + extra).tocsr()

    def input_features(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """(encoded features, given) of the input rows that set any user feature column (see
        the module docstring); None when the input has no such column or the data no user
        features."""
        if not self.user_encoding:
            return None
        names = [spec["column"] for spec in self.user_encoding]
        present = [c for c in names if c in frame.columns]
        if not present:
            return None
        given = frame[present].notna().any(axis=1).to_numpy()
        # An absent column is a missing value for every row: no category, the mean number.
        columns = frame[present].reindex(columns=names).reset_index(drop=True)
        return encode_user_features(columns, self.user_encoding, "input"), given

    def _given_rows(self, frame: pd.DataFrame, given: np.ndarray) -> sp.csr_matrix:
        """CSR rows built from the input's ``items`` (and ``ratings``) lists."""
        rows = np.flatnonzero(given)
        columns = ["items"] + (["ratings"] if "ratings" in frame.columns else [])
        lists = frame[columns].iloc[rows].reset_index(drop=True)
        if "ratings" in lists:
            n_items = lists["items"].str.len().to_numpy()
            n_ratings = lists["ratings"].str.len().fillna(-1).to_numpy()
            bad = np.flatnonzero(n_items != n_ratings)
            if len(bad):
                raise RecsysError(f"input row {rows[bad[0]]}: 'ratings' must be a list with one "
                                  f"rating per item ({n_items[bad[0]]} items)")
        # explode: one row per (input row, item); empty lists become a single null row.
        flat = lists.explode(columns)
        present = flat["items"].notna().to_numpy()
        row_ids = rows[flat.index.to_numpy()[present]]
        cols = self.items.index(flat["items"].to_numpy()[present])
        if "ratings" in flat:
            values = pd.to_numeric(flat["ratings"][present]).to_numpy(np.float32)
        else:
            values = np.ones(len(cols), dtype=np.float32)
        known = cols >= 0
        row_ids, cols, values = row_ids[known], cols[known], values[known]
        # A repeated item keeps its last value rather than summing into a double interaction.
        last = ~pd.DataFrame({"r": row_ids, "c": cols}).duplicated(keep="last").to_numpy()
        return sp.csr_matrix((values[last], (row_ids[last], cols[last])),
                             shape=(len(frame), len(self.items)), dtype=np.float32)

    def give_features(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Users' encoded features by external id (`read_user_features`): `lists` scores the
        users among ``ids`` from them, as `recsys recommend --user-features` asks."""
        self.given_features = (Vocabulary(ids), np.asarray(values, dtype=np.float32))

    def lists(self, user_ids: np.ndarray, users: np.ndarray, rows: sp.csr_matrix, k: int, *,
              features: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """Top-``k`` of one chunk as the long Arrow table, with the chunk's ``(b, k)`` internal
        item ids and cold flags. ``user_ids``: external ids as written in the output;
        ``users``: internal ids (-1: unknown, popularity list unless ``rows`` holds a history
        or the user brings features the model reads); ``rows``: the history each user is scored
        from and whose items are masked; ``features``: (values (b, d), given (b,) bool) of the
        chunk's users, else those `give_features` stored for them."""
        if features is None and self.given_features is not None:
            known, table = self.given_features
            at = known.index(user_ids)
            features = (table[np.maximum(at, 0)], at >= 0)
        values, given = features if features is not None else (None, None)
        items, scores, cold = topk_chunk(self.model, users, rows, k, device=self.device,
                                         banned=self.banned, cold_scores=self._popularity,
                                         batch_size=self.batch_size, features=values,
                                         featured=given)
        return lists_table(user_ids, items, scores, cold, self.items.ids), items, cold

    def predict(self, frame: pd.DataFrame, k: int = DEFAULT_K, layout: str = "long"
                ) -> pd.DataFrame:
        """Top-``k`` lists for the input users (see the module docstring for the columns).

        ``layout="lists"`` gives one row per input row instead: ``user, items, scores, cold``
        with the ranked item ids and scores as lists (what a Spark UDF returning one value per
        input row needs).
        """
        k = int(k)
        if k < 1:
            raise RecsysError(f"k must be at least 1 (got {k})")
        if k > len(self.items):
            raise RecsysError(f"k={k} is larger than the catalogue ({len(self.items)} items)")
        if layout not in LAYOUTS:
            raise RecsysError(f"layout '{layout}': use one of {', '.join(LAYOUTS)}")
        users, rows = self.input_history(frame)
        table, items, cold = self.lists(frame["user"].to_numpy(), users, rows, k,
                                        features=self.input_features(frame))
        if layout == "long":
            return table.to_pandas()
        # Regroup the long table by input row with offsets: no Python loop over users.
        offsets = np.zeros(len(items) + 1, dtype=np.int32)
        np.cumsum((items >= 0).sum(axis=1), out=offsets[1:])
        offsets = pa.array(offsets)
        out = pa.table({
            "items": pa.ListArray.from_arrays(offsets, table.column("item").combine_chunks()),
            "scores": pa.ListArray.from_arrays(offsets, table.column("score").combine_chunks()),
        }).to_pandas()
        out.insert(0, "user", frame["user"].to_numpy())
        out["cold"] = np.asarray(cold, dtype=bool)
        return out


def read_serving_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / SERVING_FILE
    return read_json(path) if path.is_file() else {}


def packaged_history(data_dir: str | Path) -> str:
    """Which `Dataset.known_history` a packaged model's ``data/`` stores."""
    # Packages written before the choice existed stored every part.
    return str(read_serving_meta(data_dir).get("history", "all"))

"""The `Recommender` protocol shared by every model (baselines and neural models alike).

One small, sharp API (after implicit and LensKit):

- ``fit(train, valid=None, ctx=None)``: learn from a training `Interactions`; ``valid`` (an
  `EvalSplit`) is only for early stopping / tuning, never the test part.
- ``score(users, history)``: scores of a batch of users over the whole catalogue, as a float32
  tensor ``(len(users), n_items)``. ``users`` are internal ids (``-1`` for a user unknown to the
  model) and ``history`` is the CSR of those users' known interactions (rows aligned with
  ``users``). Models that read the history (autoencoders, EASE, ItemKNN) fold in new users for
  free; factor models use their learned user factors. Seen items are masked by the caller.
- ``predict(users, items)``: rating predictions, for explicit models only.
- ``save(dir)`` / ``load(dir)``: a JSON config + a dict of tensors loaded with
  ``torch.load(weights_only=True)``; nothing is ever unpickled. model.json records the SHA-256
  of weights.pt, and a load refuses weights whose bytes differ (a flipped bit on disk would
  otherwise score with a silently wrong weight).
- ``get_params`` / ``set_params``: scikit-learn's estimator conventions, so ``ParameterGrid``
  and ``sklearn.base.clone`` work.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch

from recsys.config import StrictConfig, validate_config
from recsys.data.interactions import EvalSplit, Interactions
from recsys.data.io import atomic_path, write_json
from recsys.data.tensors import csr_to_dense
from recsys.errors import RecsysError
from recsys.training.api import FitContext

# FitContext (the training protocol's) and csr_to_dense (the data layer's) are re-exported:
# every model reaches them here.
__all__ = ["FitContext", "Recommender", "csr_to_dense"]

WEIGHTS_FILE = "weights.pt"
MODEL_FILE = "model.json"


class Recommender:
    """Base class: subclasses set ``name`` and ``Config`` and implement fit/score/state."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[StrictConfig]] = StrictConfig
    family: ClassVar[str] = "baseline"  # for tags: baseline | autoencoder | vae | gan
    explicit: ClassVar[bool] = False  # predicts ratings (rmse/mae) rather than only ranking
    # What `--tune` searches (`recsys.models.tuning`): ``tune_grid`` {key: [values]} (None: no
    # default grid; the closed-form baselines tune by it) and ``search_space``, the Optuna
    # study's {key: {low, high[, log][, step]} | {choices: [...]}} (`recsys.training.search`).
    tune_grid: ClassVar[dict[str, list[Any]] | None] = None
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}
    # Reads user features at scoring time (`score_features`): a user who arrives with features
    # and no history is then scored by the model instead of getting the popularity list.
    scores_user_features: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.config = validate_config(self.Config, params, where=f"{self.name} config")
        self.n_users = 0
        self.n_items = 0
        # Training history (per-epoch metrics) for learning curves; filled by fit.
        self.history_: list[dict[str, float]] = []

    # -- scikit-learn estimator conventions ----------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return self.config.model_dump()

    def set_params(self, **params: Any) -> Self:
        merged = {**self.config.model_dump(), **params}
        self.config = validate_config(self.Config, merged, where=f"{self.name} config")
        return self

    def __sklearn_clone__(self) -> Self:
        # sklearn's default clone insists that get_params returns the very objects passed to
        # __init__; validated configs copy lists (hidden_dims), so clone through the config.
        return type(self)(**self.config.model_dump())

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.config.model_dump().items()
                   if v != self.Config.model_fields[k].default}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- the protocol ---------------------------------------------------------------------------

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        raise NotImplementedError

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        raise NotImplementedError

    def score_features(self, users: np.ndarray, history: sp.csr_matrix,
                       features: np.ndarray) -> torch.Tensor:
        """``score`` with each user's feature vector given: ``features`` (len(users), d),
        encoded as the training data's user features (`recsys.data.features.apply_encoding`),
        replaces what the model knows of a user's features (a new user's, or a known user's
        fresher ones). A model without ``scores_user_features`` reads none of them."""
        return self.score(users, history)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise RecsysError(f"model '{self.name}' does not predict ratings; "
                          "use `recsys recommend` for top-K lists")

    def to(self, device: torch.device | str) -> Self:
        """Move what the model scores with to ``device`` (evaluation and scoring call it);
        a model that keeps nothing on a device has nothing to move."""
        return self

    def observe(self, history: sp.csr_matrix) -> None:
        """The users x items interactions known at scoring time (evaluation, `recommend` and the
        serving object declare them before scoring); only transductive models (item-based CFGAN)
        use them."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything learned, as tensors (CPU)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            tmp.write_bytes(data)
        # model.json is written last and holds the weights' digest: it commits the save.
        write_json(directory / MODEL_FILE, {
            "model": self.name, "config": self.get_params(),
            "n_users": self.n_users, "n_items": self.n_items,
            "files": {WEIGHTS_FILE: {"sha256": hashlib.sha256(data).hexdigest(),
                                     "bytes": len(data)}}})

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        """Load any saved model (the class is found from model.json through the registry)."""
        from recsys.models.registry import get_model_class

        directory = Path(directory)
        meta_path = directory / MODEL_FILE
        if not meta_path.is_file():
            raise RecsysError(f"{directory} holds no saved model ({MODEL_FILE} missing)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            name, config = meta["model"], dict(meta["config"])
            n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
            recorded = meta.get("files")
            expected = (str(recorded[WEIGHTS_FILE]["sha256"]) if recorded is not None
                        else None)
        except (ValueError, KeyError, TypeError) as exc:  # bad JSON/UTF-8, missing keys
            raise RecsysError(f"{meta_path}: not a readable model description "
                              f"({_first_line(exc)}); the saved model is damaged: train it "
                              "again") from None
        model_cls = get_model_class(name)
        model = model_cls(**config)
        model.n_users, model.n_items = n_users, n_items
        weights = directory / WEIGHTS_FILE
        try:
            # Read once: the bytes that are hashed are the bytes that are loaded.
            data = weights.read_bytes()
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            if type(exc).__name__ == "UnpicklingError":
                # weights_only refused an object that is not a tensor: it is never unpickled.
                raise RecsysError(f"{weights}: holds Python objects other than tensors; refusing "
                                  "to load it (only plain tensors are ever read)") from None
            # Missing, truncated, not a torch file: torch's messages run over several lines.
            raise RecsysError(f"{weights}: cannot load weights ({_first_line(exc)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise RecsysError(f"{weights}: not a dict of tensors; the saved model is damaged")
        try:
            model.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise RecsysError(f"{weights}: the weights do not fit model '{name}' as described in "
                              f"{MODEL_FILE} ({_first_line(exc)}); the saved model is damaged"
                              ) from None
        # The digest is compared last, so that a file that is no model of this kind at all gets
        # the diagnosis above; either way a model is returned only from the recorded bytes.
        verify_digest(weights, data, expected, recorded_in=meta_path)
        return model


_UNVERIFIED_NOTED: set[str] = set()


def verify_digest(path: Path, data: bytes, expected: str | None, *, recorded_in: Path) -> None:
    """Refuse ``data`` (the bytes read from ``path``) unless their SHA-256 is ``expected``, the
    digest written beside them at save time. ``expected`` None: saved before digests were
    recorded; loaded as before, with a one-line note (once per file and process)."""
    if expected is None:
        if str(path) not in _UNVERIFIED_NOTED:
            _UNVERIFIED_NOTED.add(str(path))
            print(f"note: {path}: no checksum recorded in {recorded_in.name} (saved by an older "
                  "recsys); loaded unverified", file=sys.stderr)
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RecsysError(f"{path}: checksum mismatch (SHA-256 {actual[:12]}... but "
                          f"{recorded_in.name} records {expected[:12]}...); the file is damaged: "
                          "restore it or train the run again")


def _first_line(exc: BaseException) -> str:
    """An exception as one short line (library messages often run over several)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0].split('. ')[0][:200]}"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecsysError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecsysError(f"device '{name}' requested but CUDA is not available")
    return device

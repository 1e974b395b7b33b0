"""The Optuna study behind `--tune` (recsys.training.search): seeded reproducibility, validation
data only, the search-space checks, pruning of a bad neural trial through the trainer's per-epoch
hook, per-trial trackers, and a stored study that a second session continues."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recsys.config import StrictConfig
from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.models.base import Recommender
from recsys.models.multdae import MultDAE
from recsys.models.registry import create_model
from recsys.tracking.base import Tracker
from recsys.training.search import check_space, study


@pytest.fixture(scope="module")
def blocks() -> Dataset:
    """60 users in 3 taste blocks over 30 items; per user one liked item in valid, two in test."""
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 30
    liked = (np.arange(n_items)[None, :] // 10) == (np.arange(n_users) % 3)[:, None]
    dense = (liked & (rng.random(liked.shape) < 0.7)) | (rng.random(liked.shape) < 0.05)
    # Held-out parts: the first liked items in a random order of each row (vectorised).
    order = np.argsort(rng.random(liked.shape) - 2 * (dense & liked), axis=1)
    role = np.zeros(liked.shape, dtype=np.int8)
    rows = np.arange(n_users)[:, None]
    role[rows, order[:, :2]] = 2
    role[rows, order[:, 2:3]] = 1
    role[~dense] = -1
    users, items = Vocabulary(np.arange(n_users)), Vocabulary(np.arange(n_items))

    def part(mask: np.ndarray) -> Interactions:
        r, c = np.nonzero(mask)
        return Interactions.from_frame(pd.DataFrame({"user": r, "item": c}), users, items)

    return Dataset({"train": part(role == 0), "valid": part(role == 1), "test": part(role == 2)},
                   {"implicit": True})


def test_a_seeded_study_is_reproducible(blocks):
    space = {"lambda_": {"low": 1.0, "high": 5000.0, "log": True}}
    runs = [study(create_model("ease", device="cpu"), blocks.train, blocks.eval_split("valid"),
                  space, trials=6, seed=3) for _ in range(2)]
    assert runs[0].best_params == runs[1].best_params
    pd.testing.assert_frame_equal(runs[0].table.drop(columns="fit_seconds"),
                                  runs[1].table.drop(columns="fit_seconds"))
    assert len(runs[0].table) == 6 and set(runs[0].table["state"]) == {"COMPLETE"}
    # Another seed samples other points: the seed is what made the two runs agree.
    other = study(create_model("ease", device="cpu"), blocks.train, blocks.eval_split("valid"),
                  space, trials=6, seed=4)
    assert other.table["lambda_"].tolist() != runs[0].table["lambda_"].tolist()


class BlockConfig(StrictConfig):
    block: int = 0


class BlockLover(Recommender):
    """Scores the items of one block (``block``) above all others: which block wins depends
    only on the part it is scored on."""

    name: ClassVar[str] = "blocklover"
    Config: ClassVar[type[StrictConfig]] = BlockConfig

    def fit(self, train, valid=None, ctx=None):
        self.n_users, self.n_items = train.n_users, train.n_items
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        row = torch.zeros(self.n_items)
        row[self.config.block * 10:(self.config.block + 1) * 10] = 1.0
        return row.expand(len(users), -1).clone()


def test_trials_are_scored_on_the_validation_part_never_the_test_part():
    """Valid holds block-0 items, test block-1 items: a study that saw the test part would pick
    block 1."""
    n_users, n_items = 40, 20
    users, items = Vocabulary(np.arange(n_users)), Vocabulary(np.arange(n_items))

    def part(cols: np.ndarray) -> Interactions:
        frame = pd.DataFrame({"user": np.repeat(np.arange(n_users), len(cols)),
                              "item": np.tile(cols, n_users)})
        return Interactions.from_frame(frame, users, items)

    data = Dataset({"train": part(np.array([5, 15])), "valid": part(np.array([0, 1, 2])),
                    "test": part(np.array([11, 12, 13]))}, {"implicit": True})
    space = {"block": {"choices": [0, 1]}}
    on_valid = study(BlockLover(), data.train, data.eval_split("valid"), space, trials=4)
    on_test = study(BlockLover(), data.train, data.eval_split("test"), space, trials=4)
    assert on_valid.best_params == {"block": 0}
    assert on_test.best_params == {"block": 1}  # the test part would choose differently


@pytest.mark.parametrize(("space", "message"), [
    ({"lamda": {"low": 1.0, "high": 2.0}}, "unknown key 'lamda' (did you mean 'lambda_'?)"),
    ({"lambda_": {"low": 1.0, "hi": 2.0}}, "'lambda_': unknown setting 'hi'"),
    ({"lambda_": {"low": 5.0, "high": 2.0}}, "'lambda_': 'low' (5.0) must be below 'high'"),
    ({"lambda_": {"low": 0.0, "high": 2.0, "log": True}}, "'lambda_': a log range needs"),
    ({"lambda_": {"low": "a", "high": 2.0}}, "'lambda_': 'low' and 'high' must be numbers"),
    ({"lambda_": {"choices": []}}, "'lambda_': 'choices' must be a non-empty list"),
    ({"lambda_": [1.0, 2.0]}, "'lambda_': expected {low: A, high: B}"),
    ({"lambda_": {"low": -5.0, "high": 2.0}}, "lambda_"),  # the config refuses a negative one
])
def test_a_bad_search_space_is_one_line_naming_the_key(space, message):
    with pytest.raises(RecsysError) as info:
        check_space(create_model("ease"), space, where="space.yaml")
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("space.yaml")


def test_an_integer_key_takes_an_integer_range():
    assert check_space(create_model("itemknn"), {"k": {"low": 5.0, "high": 50}}) == {
        "k": {"low": 5, "high": 50}}
    with pytest.raises(RecsysError, match="'k' is an integer"):
        check_space(create_model("itemknn"), {"k": {"low": 5.5, "high": 50}})


class Recording(Tracker):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.tags: dict[str, str] = {}
        self.status: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is not None:
            self.steps.append(step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def close(self, status: str = "FINISHED") -> None:
        self.status = status


def test_median_pruning_stops_a_trial_with_an_absurd_learning_rate(blocks):
    """lr 1e-7 leaves the network where it started: the median pruner stops it after the
    warm-up epochs while the good lr trains on."""
    epochs = 12
    model = MultDAE(hidden_dims=[16], epochs=epochs, batch_size=16, device="cpu", patience=None)
    trackers: dict[int, tuple[dict[str, Any], Recording]] = {}

    def tracker_for(number: int, params: dict[str, Any]) -> Tracker:
        trackers[number] = (params, Recording())
        return trackers[number][1]

    result = study(model, blocks.train, blocks.eval_split("valid"),
                   {"lr": {"choices": [0.02, 1e-7]}}, trials=6, seed=0, prune_startup=1,
                   prune_warmup=2, tracker_for=tracker_for)
    states = result.table["state"].tolist()
    assert "PRUNED" in states and "COMPLETE" in states
    assert result.best_params == {"lr": 0.02}
    for number, (params, tracker) in trackers.items():
        if states[number] == "PRUNED":
            assert params["lr"] == 1e-7
            # Stopped at the first epoch the pruner may judge (warm-up 2: epoch 2), its curve
            # logged to its own tracker up to there, and closed as killed.
            assert tracker.steps == [1, 2] and tracker.status == "KILLED"
            assert tracker.tags["optuna.state"] == "PRUNED"
        else:
            assert tracker.steps == list(range(1, epochs + 1)) and tracker.status == "FINISHED"
            assert tracker.tags["optuna.state"] == "COMPLETE"


def test_a_trial_the_data_cannot_take_fails_and_the_study_goes_on(blocks):
    # hidden_dims wider than the 30 items is refused by the model at fit time.
    model = MultDAE(epochs=2, batch_size=16, device="cpu")
    result = study(model, blocks.train, blocks.eval_split("valid"),
                   {"hidden_dims": {"choices": [[8], [64]]}}, trials=4, seed=0)
    table = result.table
    assert set(table.loc[table["state"] == "FAIL", "hidden_dims"].map(str)) == {"[64]"}
    assert result.best_params == {"hidden_dims": [8]}
    with pytest.raises(RecsysError, match="no trial of the study completed.*wider than"):
        study(model, blocks.train, blocks.eval_split("valid"),
              {"hidden_dims": {"choices": [[64]]}}, trials=2)


def test_a_stored_study_is_continued_by_the_same_name(blocks, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"lambda_": {"low": 1.0, "high": 5000.0, "log": True}}
    valid = blocks.eval_split("valid")
    first = study(create_model("ease", device="cpu"), blocks.train, valid, space, trials=3,
                  storage=storage, study_name="s")
    second = study(create_model("ease", device="cpu"), blocks.train, valid, space, trials=2,
                   storage=storage, study_name="s")
    assert len(first.table) == 3 and len(second.table) == 5
    # The earlier session's trials are the first rows, and count towards the best.
    pd.testing.assert_frame_equal(second.table.iloc[:3].drop(columns="fit_seconds"),
                                  first.table.drop(columns="fit_seconds"))
    assert second.best_score >= first.best_score
    # Another name is another study.
    assert len(study(create_model("ease", device="cpu"), blocks.train, valid, space, trials=1,
                     storage=storage, study_name="t").table) == 1


def test_trials_a_killed_session_left_running_are_marked_failed(blocks, tmp_path, monkeypatch):
    """A trial whose process died mid-fit stops beating its heartbeat; continuing the stored
    study marks it FAIL (it would otherwise stay RUNNING in the storage and the MLflow view)."""
    import time

    import optuna

    from recsys.training import search as search_module

    monkeypatch.setattr(search_module, "HEARTBEAT_GRACE", 1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"lambda_": {"low": 1.0, "high": 5000.0, "log": True}}
    killed = optuna.create_study(storage=optuna.storages.RDBStorage(
        storage, heartbeat_interval=1, grace_period=1), study_name="s", direction="maximize")
    trial = killed.ask()  # the session dies here: the trial is RUNNING, its heartbeat stops
    killed._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    result = study(create_model("ease", device="cpu"), blocks.train, blocks.eval_split("valid"),
                   space, trials=2, storage=storage, study_name="s")
    states = {t.number: t.state for t in optuna.load_study(study_name="s",
                                                           storage=storage).trials}
    assert states[trial.number] == optuna.trial.TrialState.FAIL
    assert list(states.values()).count(optuna.trial.TrialState.COMPLETE) == 2
    assert result.best_params

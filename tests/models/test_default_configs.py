"""The shipped configs/MODEL.yaml are documentation of the built-in defaults, not a second set:
for every registered model the file (without ``tune:`` and ``search:``) equals the config class's
defaults, its ``tune:`` section equals the default grid and its ``search:`` section the declared
search space of an Optuna study (recsys/models/tuning.py is the source of both)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.config import TrainConfig, load_yaml
from recsys.data.interactions import Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.models.base import FitContext
from recsys.models.multvae import MultVAE, batches_per_epoch, kl_beta
from recsys.models.neural import NeuralRecommender
from recsys.models.registry import MODELS, create_model, get_model_class
from recsys.models.tuning import check_grid, default_grid, default_space
from recsys.training.search import check_space

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", list(MODELS))
def test_the_shipped_config_is_exactly_the_class_defaults(name):
    cls = get_model_class(name)
    config = load_yaml(CONFIGS / f"{name}.yaml")
    config.pop("tune", None)
    config.pop("search", None)
    defaults = cls.Config().model_dump()
    assert cls.Config(**config).model_dump() == defaults
    # Every value the file writes is the default itself (not one the validator coerces to it).
    for key, value in config.items():
        assert value == defaults[key], key
    # The file documents every key the model sets itself: its own keys, and the engine keys whose
    # default it changes; the engine's other keys (tf32, seed, ...) keep TrainConfig's defaults.
    engine = TrainConfig().model_dump()
    own = {k for k, v in defaults.items() if k not in engine or engine[k] != v}
    assert own <= set(config), sorted(own - set(config))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_shipped_tune_section_is_the_default_grid(name):
    config = load_yaml(CONFIGS / f"{name}.yaml")
    assert "tune" in config, f"configs/{name}.yaml has no tune: section"
    grid = default_grid(name)
    assert grid is not None, f"{name} has no default grid"
    assert grid == config["tune"]
    check_grid(create_model(name), grid)  # every default candidate is a valid config


@pytest.mark.parametrize("name", list(MODELS))
def test_the_shipped_search_section_is_the_declared_space(name):
    config = load_yaml(CONFIGS / f"{name}.yaml")
    assert "search" in config, f"configs/{name}.yaml has no search: section"
    assert config["search"] == default_space(name)
    # The declared space passes the validation a --search-space file gets, unchanged, and
    # contains the default config and every default grid value (a study can find them).
    space = check_space(create_model(name), default_space(name))
    defaults = get_model_class(name).Config().model_dump()
    for key, spec in space.items():
        values = [defaults[key], *(default_grid(name) or {}).get(key, [])]
        for value in values:
            if "choices" in spec:
                assert value in spec["choices"], (key, value)
            else:
                assert spec["low"] <= value <= spec["high"], (key, value)
    if issubclass(get_model_class(name), NeuralRecommender):
        assert "lr" in space and space["lr"]["log"], "a neural model searches lr log-uniform"


# -- Mult-VAE: the KL ramp in epochs --------------------------------------------------------------


def interactions(n_users: int, n_items: int, empty_users: int = 0, seed: int = 0
                 ) -> Interactions:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.3
    dense[:, 0] = True
    dense[n_users - empty_users:] = False  # users without training rows
    return Interactions(sp.csr_matrix(dense.astype(np.float32)), Vocabulary(np.arange(n_users)),
                        Vocabulary(np.arange(n_items)))


def test_batches_per_epoch_skip_empty_rows_and_keep_the_last_partial_batch():
    model = MultVAE(batch_size=16)
    assert batches_per_epoch(model, interactions(50, 12, empty_users=2)) == 3  # 48 rows
    assert batches_per_epoch(model, interactions(49, 12)) == 4  # 16 + 16 + 16 + 1
    assert batches_per_epoch(MultVAE(batch_size=64), interactions(49, 12)) == 1


def test_the_epoch_ramp_means_the_same_share_of_training_on_any_data_size():
    """The step where beta reaches the cap scales with the batches per epoch; in epochs it is
    the same on 60 users as on 6000."""
    for n_users, per_epoch in ((60, 4), (6000, 375)):
        model = MultVAE(batch_size=16, anneal_epochs=20, anneal_cap=0.2)
        model.setup(interactions(n_users, 8), FitContext())
        assert model.steps_per_epoch_ == per_epoch
        steps = [0, per_epoch, 2 * per_epoch, 50 * per_epoch]
        assert [kl_beta(s, 0.2, model._anneal_steps()) for s in steps] == pytest.approx(
            [0.0, 0.05, 0.1, 0.2])


def test_the_default_ramp_is_the_shipped_ml100k_schedule():
    # On ml-100k (938 training users, batch 128: 8 batches an epoch) the default of 125 epochs is
    # the step schedule shipped before (total_anneal_steps 1000, the cap reached after 200 steps).
    model = MultVAE()
    model.setup(interactions(938, 8), FitContext())
    assert model.steps_per_epoch_ == 8 and model._anneal_steps() == 1000.0


def test_beta_follows_the_epoch_ramp_in_a_real_fit():
    """The per-epoch mean beta the trainer logs is the ramp over that epoch's global steps."""
    train = interactions(40, 10)
    model = MultVAE(hidden_dims=[8], latent_dim=4, batch_size=16, anneal_epochs=4,
                    anneal_cap=0.6, epochs=4, patience=None, device="cpu")
    model.fit(train, None, FitContext(quiet=True))
    per_epoch = math.ceil(40 / 16)
    for epoch, record in enumerate(model.history_):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        expected = np.mean([min(0.6, s / per_epoch / 4) for s in steps])
        assert record["beta"] == pytest.approx(expected)
    assert model.history_[-1]["beta"] > model.history_[0]["beta"]


def test_the_ramp_works_on_a_device_step_tensor():
    # The CUDA-graph path passes the global step as a 0-dim int64 tensor: beta stays a tensor.
    model = MultVAE(anneal_epochs=10)
    model.setup(interactions(64, 8), FitContext())  # 1 batch an epoch
    beta = kl_beta(torch.tensor(5), 0.2, model._anneal_steps())
    assert isinstance(beta, torch.Tensor) and float(beta) == pytest.approx(0.2)
    beta = kl_beta(torch.tensor(1), 0.2, model._anneal_steps())
    assert float(beta) == pytest.approx(0.1)


def test_exactly_one_schedule_applies():
    # The paper's step count replaces the epoch ramp when given alone (as older saved configs do).
    paper = create_model("multvae", total_anneal_steps=200_000)
    assert paper.config.anneal_epochs is None and paper._anneal_steps() == 200_000.0
    assert create_model("multvae", anneal_epochs=0)._anneal_steps() == 0.0  # no annealing
    assert kl_beta(7, 0.3, create_model("multvae", total_anneal_steps=0)._anneal_steps()) == 0.3
    with pytest.raises(RecsysError, match="set only one .*anneal_epochs=null") as err:
        create_model("multvae", anneal_epochs=50, total_anneal_steps=1000)
    assert "\n" not in str(err.value)
    with pytest.raises(RecsysError, match="set one of them"):
        create_model("multvae", anneal_epochs=None)
    with pytest.raises(RecsysError, match="anneal_epochs"):
        create_model("multvae", anneal_epochs=-1)
    # A model cloned with the step schedule keeps it (get_params carries anneal_epochs=None).
    assert create_model("multvae", **paper.get_params())._anneal_steps() == 200_000.0


def test_every_neural_default_trains_on_a_tiny_dataset():
    """Regression guard for defaults that cannot run: each neural model's defaults (shrunk only
    where the catalogue is smaller than the network) take one epoch."""
    train = interactions(24, 300)
    for name in ("multvae", "multdae", "cdae", "recvae"):
        cls = get_model_class(name)
        assert issubclass(cls, NeuralRecommender)
        model = create_model(name, epochs=1, device="cpu")
        model.fit(train, None, FitContext(quiet=True))
        assert len(model.history_) == 1 and math.isfinite(model.history_[0]["loss"])

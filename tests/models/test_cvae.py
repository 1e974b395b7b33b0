"""The conditional Mult-VAE: the contract (checkerboard with one feature per block), the
condition reaching encoder and decoder, the ELBO of Mult-VAE, cold users scored from features,
the refusal without features, and the whole path from `recsys prepare --user-features` to
`recsys evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender
from recsys.models.cvae import CONDITION, CVAE
from recsys.models.multvae import kl_beta, kl_standard_normal
from recsys.models.neural import Batch
from recsys.models.nn import multinomial_nll
from tests.reliability.helpers import (
    assert_one_line_error,
    cli,
    write_ratings,
    write_user_features,
)

from .contract import RecommenderContract, checkerboard

SMALL = {"hidden_dims": [32], "latent_dim": 8, "total_anneal_steps": 20}
CONTRACT = {"epochs": 60, "batch_size": 16, "lr": 1e-2, "device": "cpu", "patience": None}


class TestCVAE(RecommenderContract):
    model_name = "cvae"
    params = {**SMALL, **CONTRACT}


@pytest.fixture(scope="module")
def board():
    return checkerboard()


@pytest.fixture(scope="module")
def model(board) -> CVAE:
    torch.manual_seed(0)
    m = CVAE(**SMALL, **CONTRACT)
    m.fit(board.train, board.valid, FitContext(features=board.features))
    return m


def test_without_user_features_it_refuses_in_one_line(board):
    with pytest.raises(RecsysError, match="cvae needs user features") as err:
        CVAE(**SMALL, **CONTRACT).fit(board.train, board.valid, FitContext())
    assert "\n" not in str(err.value)


def test_the_condition_enters_the_encoder_and_the_decoder(model, board):
    net = model.network
    d = board.features.user.dim
    assert net.encoder[0].in_features == board.train.n_items + d
    assert net.decoder[0].in_features == model.config.latent_dim + d
    torch.testing.assert_close(getattr(net, CONDITION),
                               torch.from_numpy(board.features.user.values))
    # Same history, another user's condition: other posterior and other logits.
    x = torch.from_numpy(board.history[:1].toarray().astype(np.float32))
    mine, other = torch.tensor([0]), torch.tensor([board.train.n_users - 1])
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net.encode(x, net.condition(mine))[0],
                                  net.encode(x, net.condition(other))[0])
        mu, _ = net.encode(x, net.condition(mine))
        assert not torch.allclose(net.decoder(torch.cat([mu, net.condition(mine)], -1)),
                                  net.decoder(torch.cat([mu, net.condition(other)], -1)))
        # An unknown user (-1) is conditioned on zeros.
        assert torch.equal(net.condition(torch.tensor([-1, 0]))[0], torch.zeros(d))


def built(board, rows: int, **params) -> tuple[CVAE, torch.Tensor, torch.Tensor]:
    """A seeded CVAE built on the checkerboard's features, and the first ``rows`` histories."""
    torch.manual_seed(0)
    m = CVAE(**SMALL, **params)
    m.user_features_ = torch.from_numpy(board.features.user.values)
    m.build(board.train.n_users, board.train.n_items)
    m.steps_per_epoch_ = 1
    x = torch.from_numpy(board.history[:rows].toarray().astype(np.float32))
    return m, x, torch.arange(rows)


def test_the_loss_is_multvaes_elbo_with_the_annealed_beta(board):
    m, x, users = built(board, 4, anneal_cap=0.3)
    torch.manual_seed(1)
    out = m.training_step(Batch(x, users), step=5)
    torch.manual_seed(1)
    logits, kl = m.network(x, users)
    nll = multinomial_nll(logits, x)
    beta = kl_beta(5, 0.3, 20)
    assert out["beta"] == pytest.approx(0.25) == pytest.approx(beta)
    assert out["loss"].item() == pytest.approx((nll + beta * kl).item(), rel=1e-6)
    torch.manual_seed(1)  # the same dropout mask as the training pass drew first
    mu, logvar = m.network.encode(x, m.network.condition(users))
    assert kl.item() == pytest.approx(kl_standard_normal(mu, logvar).item(), rel=1e-6)


def test_cold_rate_blanks_whole_training_histories_but_reconstructs_them(board):
    m, x, users = built(board, 6, cold_rate=0.5)
    torch.manual_seed(1)
    out = m.training_step(Batch(x, users), step=0)
    torch.manual_seed(1)
    kept = torch.rand(6, 1) >= 0.5
    assert 0 < int(kept.sum()) < 6  # this seed blanks some rows and keeps others
    logits, _ = m.network(x * kept, users)
    # beta is 0 at step 0: the loss is the NLL of the full rows from the blanked inputs
    assert out["loss"].item() == pytest.approx(multinomial_nll(logits, x).item(), rel=1e-6)
    torch.manual_seed(1)
    torch.rand(6, 1)
    unblanked, _ = m.network(x, users)
    assert not torch.allclose(logits, unblanked)


def test_a_known_user_without_history_is_scored_from_the_features_alone(model, board):
    users = board.users
    empty = sp.csr_matrix(board.history.shape, dtype=np.float32)
    scores = model.score(users, empty)
    blocks = board.features.user.values.argmax(1)
    items_per_block = board.train.n_items // board.features.user.dim
    best_block = scores.argmax(1).numpy() // items_per_block
    assert (best_block == blocks).all()


def test_weights_without_the_condition_are_refused(model, tmp_path):
    model.save(tmp_path / "m")
    state = model.state_dict()
    state.pop(CONDITION)
    loaded = CVAE(**model.get_params())
    loaded.n_users, loaded.n_items = model.n_users, model.n_items
    with pytest.raises(RecsysError, match="user_features"):
        loaded.load_state_dict(state)
    assert torch.equal(Recommender.load(tmp_path / "m").state_dict()[CONDITION],
                       state_dict_condition(model))


def state_dict_condition(model: CVAE) -> torch.Tensor:
    return model.state_dict()[CONDITION]


# -- the command line: prepare --user-features, train, evaluate --------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvae")
    ratings = write_ratings(root / "ratings.csv")
    users = write_user_features(root / "users.csv")
    return root, ratings, users


FAST_CLI = ["--set", "epochs=3", "--set", "hidden_dims=[16]", "--set", "latent_dim=4",
            "--device", "cpu", "--no-track"]


def test_cvae_trains_and_evaluates_through_the_cli_with_user_features(prepared, capsys):
    root, ratings, users = prepared
    r = cli(["prepare", "--input", ratings, "--implicit-threshold", "4", "--user-features",
             users, "--out", root / "prep"], capsys)
    assert r.code == 0, r.err
    r = cli(["train", "cvae", "--data", root / "prep", "--out", root / "run", *FAST_CLI], capsys)
    assert r.code == 0, r.err
    saved = torch.load(root / "run" / "model" / "weights.pt", weights_only=True)
    assert saved[CONDITION].shape[1] == 4  # age, group=a/b/c
    r = cli(["evaluate", root / "run", "--data", root / "prep", "--metrics", "ndcg@10"], capsys)
    assert r.code == 0, r.err
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert 0.0 < metrics["ndcg@10"] <= 1.0


def test_cvae_on_data_without_user_features_ends_in_one_line(prepared, capsys):
    root, ratings, _ = prepared
    r = cli(["prepare", "--input", ratings, "--implicit-threshold", "4",
             "--out", root / "plain"], capsys)
    assert r.code == 0, r.err
    r = cli(["train", "cvae", "--data", root / "plain", "--out", root / "run2", *FAST_CLI],
            capsys)
    assert_one_line_error(r, "cvae needs user features")


@pytest.mark.parametrize("how", ["study", "grid"])
def test_tuning_carries_the_user_features_to_every_candidate(prepared, capsys, how):
    root, ratings, users = prepared
    data = root / f"tune-{how}"
    assert cli(["prepare", "--input", ratings, "--implicit-threshold", "4", "--user-features",
                users, "--out", data], capsys).code == 0
    if how == "study":
        space = root / "space.yaml"
        space.write_text("anneal_cap: {low: 0.1, high: 0.5}\n")
        extra = ["--trials", "2", "--search-space", space]
    else:
        config = root / "grid.yaml"
        config.write_text("tune:\n  anneal_cap: [0.1, 0.5]\n")
        extra = ["--config", config]
    r = cli(["train", "cvae", "--data", data, "--out", root / f"run-{how}", "--tune", *extra,
             *FAST_CLI], capsys)
    assert r.code == 0, r.err
    tuned = json.loads((root / f"run-{how}" / "run.json").read_text())["tuned"]
    assert len(tuned["candidates"]) >= 2  # the grid may add the defaults as a candidate
    assert all(c["ndcg@100"] is not None and c["ndcg@100"] > 0 for c in tuned["candidates"])


def test_a_resumed_fit_equals_an_uninterrupted_one(board, tmp_path):
    cfg = {**SMALL, **CONTRACT, "epochs": 4, "patience": None}
    ctx = {"features": board.features, "quiet": True}
    torch.manual_seed(0)
    full = CVAE(**cfg).fit(board.train, board.valid, FitContext(run_dir=tmp_path / "a", **ctx))
    torch.manual_seed(0)
    CVAE(**{**cfg, "epochs": 2}).fit(board.train, board.valid,
                                     FitContext(run_dir=tmp_path / "b", **ctx))
    resumed = CVAE(**cfg).fit(board.train, board.valid,
                              FitContext(run_dir=tmp_path / "b", resume=True, **ctx))
    assert resumed.train_result_.resumed_from == 2
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


@pytest.mark.slow
@pytest.mark.integration
def test_data_parallel_training_carries_the_features_to_every_rank(prepared, capsys, tmp_path):
    from recsys.data.interactions import Dataset
    from tests.training.test_ddp import torchrun

    root, ratings, users = prepared
    data = root / "ddp-data"
    assert cli(["prepare", "--input", ratings, "--implicit-threshold", "4", "--user-features",
                users, "--out", data], capsys).code == 0
    done = torchrun(["train", "cvae", "--data", str(data), "--out", str(tmp_path / "ddp"),
                     "--set", "batch_size=16", "--quiet", *FAST_CLI], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(tmp_path / "ddp" / "model" / "weights.pt", weights_only=True)
    torch.testing.assert_close(saved[CONDITION],
                               torch.from_numpy(Dataset.load(data).features.user.values))
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["ndcg@100"] > 0


# -- the prior network p(z | c) (prior: conditional) ---------------------------------------------


def test_the_gaussian_kl_is_the_standard_one_for_a_standard_prior_and_zero_at_itself():
    from recsys.models.cvae import kl_gaussians

    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    zeros = torch.zeros(5, 3)
    torch.testing.assert_close(kl_gaussians(mu, logvar, zeros, zeros),
                               kl_standard_normal(mu, logvar))
    assert kl_gaussians(mu, logvar, mu, logvar).item() == pytest.approx(0.0, abs=1e-6)
    # shifting the prior's mean by d at unit variances costs d^2 / 2 per dimension
    shifted = kl_gaussians(zeros, zeros, zeros + 2.0, zeros)
    assert shifted.item() == pytest.approx(3 * 2.0, rel=1e-6)


def test_the_default_network_has_no_prior_and_the_conditional_one_scores_cold_users_from_it(
        board):
    plain, _, _ = built(board, 2)
    assert plain.network.prior is None
    assert not any(k.startswith("prior") for k in plain.state_dict())
    m, x, users = built(board, 4, prior="conditional")
    net = m.network
    net.eval()
    with torch.no_grad():
        c = net.condition(users)
        blank = torch.zeros_like(x)
        prior_mu = net.prior(c).chunk(2, dim=-1)[0]
        # no history: decoded from E[z | c]; a history: from the posterior mean as before
        torch.testing.assert_close(net.scores(blank, users),
                                   net.decoder(torch.cat([prior_mu, c], -1)))
        mu, _ = net.encode(x, c)
        torch.testing.assert_close(net.scores(x, users), net.decoder(torch.cat([mu, c], -1)))
        # the loss's KL is to p(z | c), not to N(0, I)
    torch.manual_seed(1)
    _, kl = net.train()(x, users)
    torch.manual_seed(1)
    mu, logvar = net.encode(x, net.condition(users))
    from recsys.models.cvae import kl_gaussians

    torch.testing.assert_close(kl, kl_gaussians(mu, logvar, *net.prior(c).chunk(2, dim=-1)))

"""Mult-VAE, Mult-DAE, CDAE and RecVAE: the math of each loss, fold-in of new users, training
through the shared engine, persistence and the errors a user can cause."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch.distributions import Normal, kl_divergence

from recsys.config import parse_set_options
from recsys.data.interactions import Dataset, EvalSplit, Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.evaluation.evaluate import evaluate
from recsys.models.base import Recommender
from recsys.models.cdae import CDAE, cdae_loss
from recsys.models.multdae import MultDAE
from recsys.models.multvae import (
    AffineCoupling,
    MultVAE,
    kl_beta,
    kl_standard_normal,
    log_normal_pdf,
    multinomial_nll,
)
from recsys.models.neural import Batch, NeuralRecommender
from recsys.models.recvae import MIXTURE_WEIGHTS, WIDE_LOGVAR, RecVAE, recvae_phase
from recsys.models.registry import create_model

from .contract import RecommenderContract

# Small networks so that a few epochs on the synthetic data below take well under a second.
SMALL = {
    "multvae": {"hidden_dims": [32], "latent_dim": 8, "total_anneal_steps": 20},
    "multdae": {"hidden_dims": [16], "l2": 1e-4},
    "cdae": {"hidden_dim": 16},
    "recvae": {"hidden_dim": 32, "latent_dim": 8},
}
FAST = {"epochs": 40, "batch_size": 32, "lr": 1e-2, "device": "cpu", "patience": None}


def clustered(n_users: int = 96, n_items: int = 48, n_groups: int = 4, seed: int = 0,
              holdout_users: int = 0) -> Dataset:
    """Users in groups that each like one block of items (plus a little noise); one liked item
    per user is held out as the validation target. The last ``holdout_users`` users have no
    training rows at all (their history arrives as ``valid_history``, as in strong
    generalisation)."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_users) % n_groups
    block = n_items // n_groups
    liked = (np.arange(n_items)[None, :] // block) == group[:, None]
    dense = (liked & (rng.random((n_users, n_items)) < 0.6)) | (rng.random((n_users, n_items))
                                                               < 0.02)
    dense[np.arange(n_users), group * block] = True  # every user has at least two liked items
    dense[np.arange(n_users), group * block + 1] = True
    target = np.zeros_like(dense)
    picks = np.array([rng.choice(np.flatnonzero(row & lk)) for row, lk in zip(dense, liked,
                                                                               strict=True)])
    target[np.arange(n_users), picks] = True
    dense &= ~target
    users, items = Vocabulary(np.arange(n_users) + 1000), Vocabulary(np.arange(n_items) + 1)

    def part(mask: np.ndarray) -> Interactions:
        r, c = np.nonzero(mask)
        return Interactions.from_frame(pd.DataFrame({"user": r, "item": c}), users, items)

    train_mask = dense.copy()
    parts = {}
    if holdout_users:
        fold_in = np.zeros_like(dense)
        fold_in[-holdout_users:] = dense[-holdout_users:]
        train_mask[-holdout_users:] = False
        parts["valid_history"] = part(fold_in)
    parts = {"train": part(train_mask), **parts, "valid": part(target)}
    return Dataset(parts, {"implicit": True})


def fitted(name: str, data: Dataset | None = None, **overrides: object) -> NeuralRecommender:
    data = data or clustered()
    torch.manual_seed(0)
    model = create_model(name, **{**SMALL[name], **FAST, **overrides})
    assert isinstance(model, NeuralRecommender)
    model.fit(data.train, data.eval_split("valid"))
    return model


@pytest.fixture(scope="module")
def trained() -> dict[str, NeuralRecommender]:
    data = clustered()
    return {name: fitted(name, data) for name in SMALL}


# -- the shared contract (checkerboard data: the held-out item must rank first) ---------------

CONTRACT = {"epochs": 60, "batch_size": 16, "lr": 1e-2, "device": "cpu", "patience": None}


class TestMultVAE(RecommenderContract):
    model_name = "multvae"
    params = {**SMALL["multvae"], **CONTRACT}


class TestMultVAEWithFlow(RecommenderContract):
    model_name = "multvae"
    params = {**SMALL["multvae"], **CONTRACT, "flow_layers": 2}


class TestMultDAE(RecommenderContract):
    model_name = "multdae"
    params = {**SMALL["multdae"], **CONTRACT}


class TestCDAE(RecommenderContract):
    model_name = "cdae"
    params = {**SMALL["cdae"], **CONTRACT}


class TestRecVAE(RecommenderContract):
    model_name = "recvae"
    params = {**SMALL["recvae"], **CONTRACT}


# -- the math ------------------------------------------------------------------------------------


def test_kl_beta_is_the_capped_linear_ramp_of_the_global_step():
    assert [kl_beta(s, 0.2, 1000) for s in (0, 100, 200, 5000)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.2])
    assert kl_beta(0, 0.3, 0) == pytest.approx(0.3)  # no annealing
    # A CUDA-graph replay passes the step as a 0-dim tensor: same ramp, computed with tensor ops.
    assert [float(kl_beta(torch.tensor(s), 0.2, 1000)) for s in (0, 100, 200, 5000)] == (
        pytest.approx([0.0, 0.1, 0.2, 0.2]))


def test_multinomial_nll_matches_a_hand_computed_case():
    logits = torch.tensor([[0.0, math.log(2.0), -1e9], [0.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    # row 1: softmax (1/3, 2/3, 0) -> -(log 1/3 + log 2/3); row 2: -2 log(1/3)
    expected = (math.log(9 / 2) + 2 * math.log(3)) / 2
    assert multinomial_nll(logits, x).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 7), (33, 50), (8, 3000)])
def test_multinomial_nll_equals_the_autograd_reference_loss_and_gradient(dtype, shape):
    # The loss's hand-written backward against autograd through the formula it replaces,
    # with counts (not only 0/1), empty rows and logits of a wide range.
    g = torch.Generator().manual_seed(shape[0])
    logits = (5 * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()
    x = torch.randint(0, 3, shape, generator=g).to(dtype) * (torch.rand(shape, generator=g) < 0.3)
    x[0] = 0.0
    reference = -(torch.log_softmax(logits, dim=-1) * x).sum(dim=-1).mean()
    (want,) = torch.autograd.grad(reference, logits)
    loss = multinomial_nll(logits, x)
    (got,) = torch.autograd.grad(2.5 * loss, logits)  # a non-unit upstream gradient
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-5)
    assert torch.allclose(got, 2.5 * want, rtol=1e-5, atol=1e-6)
    assert got.dtype == dtype


def test_multinomial_nll_still_differentiates_the_counts_when_they_need_it():
    logits = torch.randn(4, 6, requires_grad=True)
    x = torch.rand(4, 6, requires_grad=True)
    (gx,) = torch.autograd.grad(multinomial_nll(logits, x), x)
    assert torch.allclose(gx, -torch.log_softmax(logits, dim=-1).detach() / 4)


def test_closed_form_kl_and_log_density_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    reference = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert kl_standard_normal(mu, logvar).item() == pytest.approx(
        reference.sum(-1).mean().item(), rel=1e-5)
    z = torch.randn(5, 3, generator=g)
    assert torch.allclose(log_normal_pdf(z, mu, logvar),
                          Normal(mu, torch.exp(0.5 * logvar)).log_prob(z), atol=1e-5)


def test_multvae_samples_z_in_training_and_decodes_mu_at_inference():
    model = MultVAE(hidden_dims=[8], latent_dim=4, dropout=0.0)
    model.build(3, 12)
    net = model.network
    x = (torch.rand(6, 12, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    x[:, 0] = 1.0
    mu, logvar = net.encode(x)
    assert torch.allclose(net.scores(x), net.decoder(mu))
    net.train()
    torch.manual_seed(0)
    a, _ = net(x)
    b, _ = net(x)
    assert not torch.allclose(a, b)  # reparameterised: z = mu + sigma * eps is random
    # With sigma ~ 0 the training sample is mu itself.
    last = net.encoder[-1]
    with torch.no_grad():
        last.bias[4:] = -60.0
        last.weight[4:] = 0.0
    logits, kl = net(x)
    mu, logvar = net.encode(x)
    assert torch.allclose(logits, net.decoder(mu), atol=1e-5)
    assert kl.item() == pytest.approx(kl_standard_normal(mu, logvar).item(), rel=1e-6)


def test_multvae_step_reports_beta_of_the_step_and_its_kl():
    model = MultVAE(hidden_dims=[8], latent_dim=4, anneal_cap=0.3, total_anneal_steps=100)
    model.build(4, 10)
    x = torch.eye(10)[:4] + torch.eye(10)[1:5]
    out = model.training_step(Batch(x, torch.arange(4)), step=20)
    assert out["beta"] == pytest.approx(0.2)
    assert out["loss"].item() == pytest.approx((out["nll"] + 0.2 * out["kl"]).item(), rel=1e-6)
    assert out["loss"].requires_grad


def test_coupling_layer_starts_as_identity_and_its_log_det_is_the_jacobians():
    layer = AffineCoupling(dim=4, hidden=6, parity=0)
    z = torch.randn(3, 4)
    out, log_det = layer(z)
    assert torch.equal(out, z) and torch.equal(log_det, torch.zeros(3))
    torch.manual_seed(0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    _, log_det = layer(z)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], z[i])
        assert log_det[i].item() == pytest.approx(torch.slogdet(jac)[1].item(), abs=1e-5)


def test_flow_kl_estimate_is_unbiased_for_the_closed_form_at_identity():
    model = MultVAE(hidden_dims=[8], latent_dim=4, dropout=0.0, flow_layers=2)
    model.build(2, 10)
    net = model.network
    x = torch.zeros(4000, 10)  # one user, 4000 draws of z: the batch mean is the MC average
    x[:, :3] = 1.0
    mu, logvar = net.encode(x[:1])
    torch.manual_seed(0)
    estimate = net(x)[1].item()
    assert estimate == pytest.approx(kl_standard_normal(mu, logvar).item(), abs=0.05)


def test_multdae_penalises_squared_weights_not_biases():
    model = MultDAE(hidden_dims=[5], l2=0.01, dropout=0.0)
    model.build(3, 7)
    with torch.no_grad():
        for m in model.network.weights():
            m.weight.fill_(0.1)
            m.bias.fill_(3.0)
    x = torch.ones(2, 7)
    out = model.training_step(Batch(x, torch.arange(2)), step=0)
    assert out["l2"].item() == pytest.approx(0.01 * 2 * 35 * 0.01, rel=1e-5)
    assert "kl" not in out


def test_cdae_losses_and_zero_vector_for_unknown_users():
    logits = torch.tensor([[0.0, 2.0]])
    x = torch.tensor([[1.0, 0.0]])
    expected = math.log(2) + math.log(1 + math.exp(2))
    assert cdae_loss(logits, x, "logistic", "sigmoid").item() == pytest.approx(expected)
    assert cdae_loss(logits, x, "square", "identity").item() == pytest.approx(1 + 4)
    model = CDAE(hidden_dim=4)
    model.build(3, 6)
    with torch.no_grad():
        model.network.user_embedding.weight.normal_()
    model.network.eval()
    hist = torch.tensor([[1.0, 0, 1, 0, 0, 0]] * 2)
    scores = model.forward_scores(hist, torch.tensor([-1, 2]))
    net = model.network
    by_hand = net.decoder(torch.sigmoid(net.encoder(hist[:1])))
    assert torch.allclose(scores[0], by_hand[0])
    assert not torch.allclose(scores[1], by_hand[0])  # a known user adds their vector


def test_cdae_corruption_is_unbiased_dropout():
    net = CDAE(hidden_dim=3, corruption=0.4, hidden_activation="identity")
    net.build(1, 2000)
    seen: list[torch.Tensor] = []
    net.network.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    net.network.train()
    net.network(torch.ones(1, 2000), torch.tensor([0]))
    corrupted = seen[0]
    assert torch.unique(corrupted).tolist() == pytest.approx([0.0, 1 / 0.6])
    assert corrupted.mean().item() == pytest.approx(1.0, abs=0.1)


def test_recvae_phase_alternates_by_epoch_and_refreshes_the_prior_once():
    phases = [recvae_phase(s, batches_per_epoch=2, encoder_epochs=3, decoder_epochs=1)
              for s in range(10)]
    assert [p for p, _ in phases] == ["encoder"] * 6 + ["decoder"] * 2 + ["encoder"] * 2
    assert [s for s, (_, refresh) in enumerate(phases) if refresh] == [6]


def test_recvae_composite_prior_is_the_three_component_mixture():
    model = RecVAE(hidden_dim=6, latent_dim=3, gamma=0.005)
    model.build(2, 9)
    net = model.network
    x = torch.zeros(2, 9)
    x[0, :4] = x[1, 3:] = 1.0
    z = torch.randn(2, 3)
    mu, logvar = net.old_encoder(x, 0.0)
    density = (MIXTURE_WEIGHTS[0] * Normal(0.0, 1.0).log_prob(z).exp()
               + MIXTURE_WEIGHTS[1] * Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).exp()
               + MIXTURE_WEIGHTS[2] * Normal(0.0, math.exp(WIDE_LOGVAR / 2)).log_prob(z).exp())
    assert torch.allclose(net.log_prior(x, z), density.log(), atol=1e-5)
    # The user-specific KL weight is gamma * |x_u|.
    assert model.kl_weight(x).tolist() == pytest.approx([0.005 * 4, 0.005 * 6])
    assert RecVAE(gamma=None, beta=0.3).kl_weight(x) == 0.3  # or one constant weight


def test_recvae_updates_encoder_then_decoder_and_refreshes_the_old_encoder():
    data = clustered(n_users=8, n_items=12)
    model = RecVAE(hidden_dim=6, latent_dim=3, batch_size=8, encoder_epochs=1, decoder_epochs=1)
    model.build(8, 12)
    model.training_matrix(data.train)  # one batch per epoch
    model.configure_optimizers()
    net = model.network
    batch = Batch(torch.from_numpy(data.train.binary().toarray()), torch.arange(8))

    def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.state_dict().values()]

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))

    enc, dec, old = snapshot(net.encoder), snapshot(net.decoder), snapshot(net.old_encoder)
    out = model.training_step(batch, step=0)  # encoder phase
    assert out["encoder_phase"] == 1.0 and out["kl"].item() != 0.0
    assert not same(enc, snapshot(net.encoder)) and same(dec, snapshot(net.decoder))
    assert same(old, snapshot(net.old_encoder))  # the prior stays until the decoder phase
    enc = snapshot(net.encoder)
    out = model.training_step(batch, step=1)  # decoder phase: prior refreshed first
    assert out["encoder_phase"] == 0.0
    assert same(enc, snapshot(net.encoder)) and not same(dec, snapshot(net.decoder))
    assert same(enc, snapshot(net.old_encoder))


# -- training through the engine, fold-in, persistence -----------------------------------------


def popularity_ndcg(data: Dataset) -> float:
    class Pop(Recommender):
        def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
            counts = np.asarray(data.train.matrix.sum(0)).ravel().astype(np.float32)
            return torch.from_numpy(np.tile(counts, (len(users), 1)))

    return evaluate(Pop(), data.eval_split("valid"), ["ndcg@10"]).summary["ndcg@10"]


@pytest.mark.parametrize("name", list(SMALL))
def test_models_learn_the_groups_beyond_popularity(trained, name):
    data = clustered()
    ndcg = evaluate(trained[name], data.eval_split("valid"), ["ndcg@10"]).summary["ndcg@10"]
    assert ndcg > popularity_ndcg(data) + 0.3
    history = trained[name].history_
    assert history[-1]["loss"] < history[0]["loss"]
    if name == "multvae":
        # beta is logged every epoch and follows the annealing schedule of the global step
        betas = [h["beta"] for h in history]
        assert betas[0] < betas[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("name", list(SMALL))
def test_fold_in_of_a_new_user_equals_the_scores_of_their_history_vector(trained, name):
    model = trained[name]
    rng = np.random.default_rng(3)
    history = sp.csr_matrix((rng.random((3, model.n_items)) < 0.2).astype(np.float32))
    new_user = model.score(np.array([-1]), history[1])
    with torch.no_grad():
        model.network.eval()
        direct = model.forward_scores(torch.from_numpy(history[1].toarray()),
                                      torch.tensor([-1]))
    assert new_user.shape == (1, model.n_items)
    assert torch.allclose(new_user, direct, atol=1e-6)
    # A user's scores do not depend on who else is in the batch.
    batch = model.score(np.array([-1, -1, -1]), history)
    assert torch.allclose(batch[1], new_user[0], atol=1e-5)
    # Ratings in the history are read as implicit feedback.
    rated = history[1].copy()
    rated.data[:] = 4.0
    assert torch.allclose(model.score(np.array([-1]), rated), new_user, atol=1e-6)


def test_cdae_users_without_training_rows_keep_the_zero_vector():
    data = clustered(holdout_users=10)
    model = fitted("cdae", data, epochs=5)
    vectors = model.network.user_embedding.weight.detach()
    assert torch.count_nonzero(vectors[-10:]) == 0
    assert torch.count_nonzero(vectors[:-10].abs().sum(1)) == len(vectors) - 10
    # So a held-out user scores the same by id as folded in as a new user (-1).
    split = data.eval_split("valid")
    users = np.arange(len(vectors) - 10, len(vectors))
    assert torch.allclose(model.score(users, split.history[users]),
                          model.score(np.full(10, -1), split.history[users]), atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_save_and_load_give_the_same_scores(trained, name, tmp_path):
    model = trained[name]
    model.save(tmp_path / name)
    back = Recommender.load(tmp_path / name)
    history = clustered().train.matrix[:7]
    assert torch.allclose(back.score(np.arange(7), history), model.score(np.arange(7), history),
                          atol=1e-6)


# -- errors a user can cause -------------------------------------------------------------------


def test_dims_wider_than_the_catalogue_are_one_clear_error():
    with pytest.raises(RecsysError, match=r"multvae dims \[600, 200\] do not match the data"):
        create_model("multvae").build(10, 50)
    with pytest.raises(RecsysError, match="bottleneck"):
        create_model("recvae", latent_dim=64).build(10, 50)


def test_a_beta_schedule_that_does_not_parse_is_one_clear_error():
    with pytest.raises(RecsysError, match="anneal_cap") as err:
        create_model("multvae", **parse_set_options(["anneal_cap=0.2x"]))
    assert "\n" not in str(err.value)
    with pytest.raises(RecsysError, match="total_anneal_steps"):
        create_model("multvae", total_anneal_steps=-5)
    with pytest.raises(RecsysError, match="unknown key 'anneal_capp'"):
        create_model("multvae", anneal_capp=0.2)


def test_weights_of_other_dims_and_histories_of_another_catalogue_are_clear_errors(
        trained, tmp_path):
    model = trained["multvae"]
    model.save(tmp_path / "m")
    other = create_model("multvae", hidden_dims=[16], latent_dim=8)
    other.n_users, other.n_items = model.n_users, model.n_items
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    with pytest.raises(RecsysError, match="do not match the configured dims"):
        other.load_state_dict(state)
    with pytest.raises(RecsysError, match="trained on 48 items"):
        model.score(np.array([-1]), sp.csr_matrix((1, 50), dtype=np.float32))


def test_strong_generalisation_users_are_scored_from_their_fold_in_history():
    data = clustered(holdout_users=16)
    assert data.train.matrix[-16:].nnz == 0
    model = fitted("multvae", data, epochs=30)
    split = data.eval_split("valid")
    held_out = EvalSplit(split.history, split.target, np.arange(80, 96))
    ndcg = evaluate(model, held_out, ["ndcg@10"]).summary["ndcg@10"]
    assert ndcg > popularity_ndcg(data) + 0.15


# -- end to end: prepare -> train -> recommend --histories -------------------------------------


def test_recommend_with_histories_folds_in_new_users_as_the_model_scores_them(tmp_path, capsys):
    from recsys.cli import main
    from recsys.rundir import load_run

    data = clustered(n_users=80, n_items=40)
    frame = data.train.to_frame()
    frame = pd.DataFrame({"user": data.users.lookup(frame["user"]),
                          "item": data.items.lookup(frame["item"]), "rating": 1.0})
    frame.to_csv(tmp_path / "log.csv", index=False)
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    assert main(["prepare", "--input", str(tmp_path / "log.csv"), "--split", "random",
                 "--test-fraction", "0.2", "--valid-fraction", "0.1", "--seed", "0",
                 "--out", str(prepared), "--quiet"]) == 0
    sets = [f"{k}={v}" for k, v in {**SMALL["multvae"], "epochs": 5, "batch_size": 32}.items()]
    assert main(["train", "multvae", "--data", str(prepared), "--out", str(run), "--quiet",
                 "--no-track", "--device", "cpu", *[a for s in sets for a in ("--set", s)]]) == 0
    # Two new users (ids the data has never seen) with external item ids, one unknown item.
    histories = pd.DataFrame({"user": ["new-a"] * 3 + ["new-b"] * 2,
                              "item": [1, 2, 3, 30, 99999]})
    histories.to_csv(tmp_path / "hist.csv", index=False)
    k = 10
    assert main(["recommend", str(run), "--data", str(prepared), "--histories",
                 str(tmp_path / "hist.csv"), "--k", str(k), "--out", str(tmp_path / "top.csv"),
                 "--device", "cpu"]) == 0
    lists = pd.read_csv(tmp_path / "top.csv")

    model, _ = load_run(run)
    from recsys.data.interactions import Dataset as Prepared

    items = Prepared.load(prepared).items
    for user, ext_items in (("new-a", [1, 2, 3]), ("new-b", [30])):
        cols = items.index(np.array(ext_items))
        row = sp.csr_matrix((np.ones(len(cols), np.float32), (np.zeros(len(cols)), cols)),
                            shape=(1, len(items)))
        scores = model.score(np.array([-1]), row)[0]
        scores[torch.from_numpy(cols)] = -torch.inf  # seen items are masked
        top = torch.topk(scores, k)
        got = lists[lists["user"] == user].sort_values("rank")
        assert got["item"].tolist() == items.lookup(top.indices.numpy()).tolist()
        assert np.allclose(got["score"].to_numpy(), top.values.numpy(), atol=1e-5)

    # A history file whose users have no known item at all: one clear line, exit 2.
    pd.DataFrame({"user": ["x"], "item": [99999]}).to_csv(tmp_path / "bad.csv", index=False)
    capsys.readouterr()
    assert main(["recommend", str(run), "--data", str(prepared), "--histories",
                 str(tmp_path / "bad.csv"), "--k", "5", "--out", str(tmp_path / "bad.out.csv"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "catalogue" in err
    assert not (tmp_path / "bad.out.csv").exists()

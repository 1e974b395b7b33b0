"""CFGAN: the masking trick D is trained with, the ZR term, negative sampling, item-based scoring,
collapse detection, the shared contract and the errors a user can cause."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.cli import main
from recsys.errors import RecsysError
from recsys.models.base import FitContext
from recsys.models.cfgan import CFGAN, CollapseWarning, collapse_reason, sample_unobserved
from recsys.models.neural import Batch

from .contract import RecommenderContract, checkerboard

# Small and fast; lr far above the paper's 1e-4 so that a few dozen epochs suffice.
SMALL = {"g_hidden": 32, "d_hidden": 16, "lr": 3e-3, "epochs": 60, "batch_size": 64,
         "g_batch_size": 16, "g_steps": 2, "d_steps": 1, "device": "cpu", "patience": None,
         "eval_every": 1000, "checkpoint_every": 1000, "g_reg": 0.0,
         # The authors' ratios and G's last iterate: a weight average over so few steps would
         # still be mostly the initial weights.
         "zr_ratio": 70.0, "pm_ratio": 70.0, "g_ema": 0.0}
# The checkerboard's held-out item must be inferred from the neighbours, not memorised as a
# sampled negative: a sigmoid output and a stronger ZR pull get there in 100 epochs (every seed
# tried).
CONTRACT = {**SMALL, "g_output": "sigmoid", "zr_coefficient": 0.3, "epochs": 100}


pytestmark = pytest.mark.usefixtures("one_thread")


class TestItemCFGAN(RecommenderContract):
    model_name = "cfgan"
    params = CONTRACT
    # Item-based CFGAN is transductive (an item's condition is its training buyers): a user
    # unknown to the model gets the average user's scores, not a fold-in of their history.
    folds_in_unknown_users = False


class TestUserCFGAN(RecommenderContract):
    model_name = "cfgan"
    params = {**CONTRACT, "based": "user"}


# -- one training step, observed from D's side ---------------------------------------------------

def stepped_model(scheme: str, based: str = "user", **params) -> tuple[CFGAN, torch.Tensor, list]:
    """A built model, one training step on random 0/1 rows, and every (vector, condition) pair
    the discriminator was given during that step."""
    torch.manual_seed(0)
    rows = (torch.rand(12, 40) < 0.3).float()
    model = CFGAN(**{**SMALL, "scheme": scheme, "based": based, "pm_ratio": 25.0,
                     "zr_ratio": 40.0, "g_steps": 2, "d_steps": 2, "g_batch_size": 5,
                     **params})
    n_users, n_items = (40, 12) if based == "item" else (12, 40)
    model.build(n_users, n_items)
    model.configure_optimizers()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.network.discriminator.register_forward_hook(
        lambda module, args, out: seen.append((args[0].detach().clone(), args[1].clone())))
    out = model.training_step(Batch(rows=rows, index=torch.arange(12)), step=0)
    hook.remove()
    model.last_step_ = out
    return model, rows, seen


@pytest.mark.parametrize("scheme", ["none", "zr"])
def test_without_pm_d_sees_generated_values_only_at_purchases(scheme):
    model, rows, seen = stepped_model(scheme)
    fakes = [(v, c) for v, c in seen if not torch.equal(v, c)]
    reals = [(v, c) for v, c in seen if torch.equal(v, c)]
    # 2 D steps (one real and one generated call each), then 2 passes of G over 12 rows in
    # chunks of 5 (3 calls each).
    assert len(reals) == 2 and len(fakes) == 2 + 2 * 3
    for vector, condition in fakes:
        assert torch.all(vector[condition == 0] == 0), "generated value leaked past the mask"
        # Where the row has a purchase D does see G's (non-zero) output.
        assert torch.all(vector[condition > 0] != 0)


@pytest.mark.parametrize("scheme", ["pm", "zr+pm"])
def test_partial_masking_adds_exactly_the_sampled_negatives(scheme):
    model, rows, seen = stepped_model(scheme)
    fakes = [(v, c) for v, c in seen if not torch.equal(v, c)]
    assert len(fakes) == 2 + 2 * 3
    expected = np.floor((rows == 0).sum(1).numpy() * 25 / 100).astype(int)
    positions: dict[bytes, torch.Tensor] = {}
    for vector, condition in fakes:
        extra = (vector != 0) & (condition == 0)
        assert torch.all(vector[condition > 0] != 0)
        # Each row's condition identifies it (random rows are distinct).
        for r in range(len(condition)):
            i = int(np.flatnonzero((rows == condition[r]).all(1).numpy())[0])
            assert int(extra[r].sum()) == expected[i]
            # The same negatives in every D and G call of the step.
            key = rows[i].numpy().tobytes()
            if key in positions:
                assert torch.equal(positions[key], extra[r])
            positions[key] = extra[r]
    assert len(positions) == len(rows)


@pytest.mark.parametrize(("scheme", "has_zr"), [("zr", True), ("zr+pm", True), ("pm", False),
                                                ("none", False)])
def test_zero_reconstruction_term_follows_the_scheme(scheme, has_zr):
    model, _, _ = stepped_model(scheme, zr_coefficient=0.5)
    out = model.last_step_
    g_loss, g_adv, zr = (float(out[k]) for k in ("g_loss", "g_adv", "zr"))
    if has_zr:
        assert zr > 0
        assert g_loss == pytest.approx(g_adv + 0.5 * zr, rel=1e-5)
    else:
        assert zr == 0
        assert g_loss == pytest.approx(g_adv, rel=1e-6)
    for key in ("loss", "g_loss", "d_loss", "d_real", "d_fake", "g_std", "collapsed"):
        assert key in out


def test_zero_reconstruction_pulls_sampled_outputs_to_zero():
    """With a large coefficient the ZR gradient dominates: G's output on unobserved entries
    shrinks faster than without it (same seed, same data)."""
    def unobserved_output(scheme: str) -> float:
        model, rows, _ = stepped_model(scheme, zr_coefficient=5.0, lr=1e-2, g_steps=10)
        with torch.no_grad():
            out = model.network.generator(rows)
        return float(out[rows == 0].pow(2).mean())

    assert unobserved_output("zr") < 0.5 * unobserved_output("none")


def test_item_based_rows_are_items():
    model, rows, seen = stepped_model("zr+pm", based="item")
    assert seen[0][0].shape == rows.shape  # rows of the training matrix, columns = users
    assert model.network.generator.out.out_features == 40  # one output unit per user


# -- negative sampling --------------------------------------------------------------------------

def test_sample_unobserved_counts_and_positions():
    torch.manual_seed(1)
    observed = torch.rand(50, 30) < 0.4
    observed[0] = True  # nothing to sample
    observed[1] = False
    mask = sample_unobserved(observed, 70.0)
    expected = torch.floor((~observed).sum(1) * 0.7)
    assert torch.equal(mask.sum(1), expected.long())
    assert not (mask & observed).any()
    assert sample_unobserved(observed, 0.0).sum() == 0
    assert torch.equal(sample_unobserved(observed, 100.0), ~observed)
    # Uniform over the unobserved positions: every position of a fully unobserved row comes up
    # about equally often.
    counts = sum(sample_unobserved(torch.zeros(1, 30, dtype=torch.bool), 50.0)[0].long()
                 for _ in range(600))
    assert counts.min() > 200 and counts.max() < 400


# -- item-based scoring -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def item_model():
    data = checkerboard()
    model = CFGAN(**{**SMALL, "epochs": 5})
    model.fit(data.train, None, FitContext(data_meta=data.meta))
    return model, data


def test_item_based_scores_are_the_generators_output_per_user(item_model):
    model, data = item_model
    conditions = torch.from_numpy(data.train.binary().T.toarray())
    with torch.no_grad():
        full = model.network.generator(conditions)  # (items, users)
    users = np.array([3, 0, 17])
    scores = model.score(users, data.history[users])
    torch.testing.assert_close(scores, full.T[torch.from_numpy(users)], rtol=1e-5, atol=1e-6)
    # The history handed in does not change a known user's scores (the model is transductive).
    empty = data.history[users] * 0
    torch.testing.assert_close(model.score(users, empty), scores)


def test_item_based_unknown_users_get_the_average_users_scores(item_model):
    model, data = item_model
    out = model.score(np.array([-1, -1, 10_000]), data.history[:3])
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    gen = model.network.generator
    conditions = torch.from_numpy(data.train.binary().T.toarray())
    with torch.no_grad():
        codes = gen.encode(conditions)
        expected = codes @ gen.out.weight.mean(0) + gen.out.bias.mean()
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-6)


def test_observe_conditions_every_item_on_the_known_interactions(item_model):
    model, data = item_model
    fitted_scores = model.score(data.users, data.history)
    # Every user's held-out item becomes known (as the validation part is when the test part is
    # scored): each item's condition gains those buyers, for all users at once.
    known = (data.train.binary() + data.valid.target).tocsr()
    model.observe(known)
    try:
        with torch.no_grad():
            expected = model.network.scorer(torch.from_numpy(known.T.toarray())).T
        batch = model.score(data.users, known)
        torch.testing.assert_close(batch, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(batch, fitted_scores)
        # Scores no longer depend on the batch: one by one equals all at once.
        single = torch.cat([model.score(data.users[i:i + 1], known[i]) for i in data.users])
        torch.testing.assert_close(single, batch, rtol=1e-5, atol=1e-6)
        # Training interactions are never forgotten (observe adds, it does not replace).
        model.observe(data.valid.target)
        torch.testing.assert_close(model.score(data.users, known), batch)
    finally:
        model.observe(data.train.matrix)
    torch.testing.assert_close(model.score(data.users, data.history), fitted_scores)


def test_evaluation_observes_the_history_of_the_part_it_scores(item_model, monkeypatch):
    from recsys.data.interactions import EvalSplit
    from recsys.evaluation.evaluate import evaluate

    model, data = item_model
    seen = []
    monkeypatch.setattr(model, "observe", lambda history: seen.append(history))
    split = EvalSplit(history=data.history, target=data.valid.target, users=data.users)
    evaluate(model, split, ["ndcg@5"])
    assert len(seen) == 1 and (seen[0] != data.history).nnz == 0


def test_observe_refuses_another_shape_and_is_a_no_op_user_based(item_model):
    model, data = item_model
    with pytest.raises(RecsysError, match="trained on 32 x 16"):
        model.observe(sp.csr_matrix((5, 16)))
    user = CFGAN(**{**SMALL, "based": "user"})
    user.observe(sp.csr_matrix((5, 7)))  # folds each user in from the history it is given


def test_training_logs_both_losses_per_epoch(item_model):
    model, _ = item_model
    assert [r["epoch"] for r in model.history_] == [1, 2, 3, 4, 5]
    for record in model.history_:
        assert np.isfinite(record["g_loss"]) and np.isfinite(record["d_loss"])
        assert record["collapsed"] == 0.0
    assert model.collapse_epochs_ == []


# -- collapse --------------------------------------------------------------------------------------

def test_collapse_reason():
    assert collapse_reason({"d_adv": 1.2, "g_std": 0.2}, 1e-3, 1e-4) is None
    assert "discriminator" in collapse_reason({"d_adv": 1e-5, "g_std": 0.2}, 1e-3, 1e-4)
    assert "ignores its condition" in collapse_reason({"d_adv": 1.0, "g_std": 0.0}, 1e-3, 1e-4)


class ConstantGenerator(CFGAN):
    """A generator whose output ignores its condition (zero output weights, frozen by lr ~0)."""

    def build(self, n_users: int, n_items: int) -> None:
        super().build(n_users, n_items)
        torch.nn.init.zeros_(self.network.generator.out.weight)


def test_collapse_is_detected_warned_once_and_logged():
    data = checkerboard()
    model = ConstantGenerator(**{**SMALL, "based": "user", "epochs": 3, "lr": 1e-12,
                                 "d_lr": 1e-3})
    with pytest.warns(CollapseWarning, match="epoch 1.*ignores its condition") as caught:
        model.fit(data.train, None, FitContext(data_meta=data.meta))
    assert len([w for w in caught if issubclass(w.category, CollapseWarning)]) == 1
    assert model.collapse_epochs_ == [1, 2, 3]
    assert [r["collapsed"] for r in model.history_] == [1.0, 1.0, 1.0]


def test_healthy_training_does_not_warn():
    data = checkerboard()
    model = CFGAN(**{**SMALL, "based": "user", "epochs": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        model.fit(data.train, None, FitContext(data_meta=data.meta))


# -- errors a user can cause ----------------------------------------------------------------------

@pytest.mark.parametrize(("params", "key"), [
    ({"scheme": "zp"}, "scheme"),
    ({"based": "users"}, "based"),
    ({"zr_ratio": 150}, "zr_ratio"),
    ({"pm_ratio": 101}, "pm_ratio"),
])
def test_bad_config_is_one_line(params, key):
    with pytest.raises(RecsysError, match=f"'{key}'") as info:
        CFGAN(**params)
    assert "\n" not in str(info.value)


def test_bad_config_from_the_cli_exits_2(tmp_path, capsys):
    code = main(["train", "cfgan", "--data", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "run"), "--set", "zr_ratio=170", "--no-track"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "zr_ratio" in err and "more items than exist" in err
    assert not (tmp_path / "run").exists()


def test_saved_item_model_without_conditions_is_refused(item_model):
    model, _ = item_model
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("conditions.")}
    fresh = CFGAN(**model.get_params())
    fresh.n_users, fresh.n_items = model.n_users, model.n_items
    with pytest.raises(RecsysError, match="conditions"):
        fresh.load_state_dict(state)


def test_weight_average_follows_the_generator_and_scores():
    model = CFGAN(**{**SMALL, "based": "user", "g_ema": 0.9, "g_steps": 1, "g_batch_size": 64})
    model.build(12, 40)
    model.configure_optimizers()
    net = model.network
    before = [p.detach().clone() for p in net.generator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(net.averaged.parameters(), before, strict=True))
    torch.manual_seed(0)
    rows = (torch.rand(12, 40) < 0.3).float()
    model.training_step(Batch(rows=rows, index=torch.arange(12)), step=0)
    for avg, old, new in zip(net.averaged.parameters(), before, net.generator.parameters(),
                             strict=True):
        assert not torch.equal(old, new)
        torch.testing.assert_close(avg, 0.9 * old + 0.1 * new.detach())
    # Scores come from the average, not from the last iterate.
    model.network.eval()
    scores = model.score(np.arange(3), sp.csr_matrix(rows[:3].numpy()))
    with torch.no_grad():
        torch.testing.assert_close(scores, net.averaged(rows[:3]))
        assert not torch.allclose(scores, net.generator(rows[:3]))

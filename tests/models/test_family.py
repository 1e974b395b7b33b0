"""The autoencoder family's options: the contractive penalty (AutoRec, Mult-DAE) against
autograd's Jacobian, the plain loss when it is off, and stacked AutoRec's shapes and weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recsys.models.autorec import AutoRec
from recsys.models.base import FitContext, Recommender
from recsys.models.multdae import MultDAE
from recsys.models.neural import Batch
from recsys.models.nn import contractive_encode, layers_of, mlp

from .contract import RecommenderContract
from .explicit_data import META, ROWS, ratings
from .test_autoencoders import CONTRACT
from .test_autorec import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")


def jacobian_norms(layers: list[tuple[nn.Linear, str]], x: torch.Tensor) -> torch.Tensor:
    """Per row, the sum over layers of ||d layer / d its input||_F^2, by autograd."""
    out = torch.zeros(len(x), dtype=x.dtype)
    for i, row in enumerate(x):
        h = row
        for linear, act in layers:
            f = nn.Sequential(linear, ACT[act]())
            out[i] += torch.autograd.functional.jacobian(f, h).pow(2).sum()
            h = f(h)
    return out


ACT = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus,
       "identity": nn.Identity, "selu": nn.SELU}


@pytest.mark.parametrize("act", list(ACT))
def test_one_layer_penalty_is_the_jacobians_frobenius_norm(act):
    torch.manual_seed(0)
    layer = nn.Linear(7, 4).double()
    x = torch.randn(5, 7, dtype=torch.float64)
    h, penalty = contractive_encode([(layer, act)], x)
    torch.testing.assert_close(h, ACT[act]()(layer(x)))
    torch.testing.assert_close(penalty, jacobian_norms([(layer, act)], x), atol=1e-5, rtol=0)


def test_deeper_encoders_sum_each_layers_own_penalty():
    torch.manual_seed(1)
    stack = mlp([9, 6, 3], activation="tanh", last_activation=True).double()
    layers = layers_of(stack)
    assert [a for _, a in layers] == ["tanh", "tanh"]
    x = torch.randn(4, 9, dtype=torch.float64)
    h, penalty = contractive_encode(layers, x)
    torch.testing.assert_close(h, stack(x))
    torch.testing.assert_close(penalty, jacobian_norms(layers, x), atol=1e-5, rtol=0)


def autorec_batch(**params: object) -> tuple[AutoRec, Batch]:
    torch.manual_seed(0)
    model = AutoRec(**{**SMALL, "l2_lambda": 2.0, **params})
    train = ratings(ROWS)
    model.build(train.n_users, train.n_items)
    model.setup(train, FitContext(data_meta=META))
    rows = torch.as_tensor(model.training_matrix(train).toarray(), dtype=torch.float32)
    rows = rows[rows.any(1)]
    return model, Batch(rows=rows, index=torch.arange(len(rows)))


def test_autorec_contractive_off_is_the_plain_loss_and_on_adds_the_penalty():
    model, batch = autorec_batch()
    net = model.network
    out = net(batch.rows)
    plain = ((out * torch.sign(batch.rows) - batch.rows) ** 2).sum() + 1.0 * (
        net.encoder.weight.pow(2).sum() + net.decoder.weight.pow(2).sum())
    assert model.training_step(batch, 0)["loss"].item() == plain.item()
    model.config.contractive = 0.5
    step = model.training_step(batch, 0)
    expected = 0.5 * jacobian_norms([(net.encoder, "sigmoid")], batch.rows).sum()
    assert step["contractive"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert step["loss"].item() == pytest.approx(plain.item() + expected.item(), rel=1e-5)


def test_multdae_contractive_off_is_the_plain_loss_and_on_adds_the_batch_mean():
    torch.manual_seed(0)
    model = MultDAE(hidden_dims=[6], dropout=0.0, device="cpu")
    model.build(10, 12)
    x = (torch.rand(5, 12) < 0.4).float()
    x[:, 0] = 1.0
    batch = Batch(rows=x, index=torch.arange(5))
    plain = model.training_step(batch, 0)["loss"].item()
    model.config.contractive = 0.1
    step = model.training_step(batch, 0)
    enc = torch.nn.functional.normalize(x, dim=-1)
    expected = 0.1 * jacobian_norms(layers_of(model.network.encoder), enc).mean().item()
    assert step["contractive"].item() == pytest.approx(expected, rel=1e-5)
    assert step["loss"].item() == pytest.approx(plain + expected, rel=1e-6)


def test_stacked_autorec_shapes_and_save_load(tmp_path):
    model, batch = autorec_batch(stacked_dims=[5, 3])
    net = model.network
    assert [(m.in_features, m.out_features) for m in net.weights()] == [
        (5, 16), (16, 5), (5, 3), (3, 5), (5, 16), (16, 5)]
    assert net(batch.rows).shape == batch.rows.shape
    assert net.encode(batch.rows).shape == (len(batch.rows), 16)  # the decoder's input
    fitted = AutoRec(**{**SMALL, "epochs": 5, "stacked_dims": [5]}).fit(
        ratings(ROWS), None, FitContext(data_meta=META))
    fitted.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    users, items = torch.arange(4).numpy(), torch.tensor([0, 1, 2, 0]).numpy()
    assert (loaded.predict(users, items) == fitted.predict(users, items)).all()


def test_one_layer_autorec_keeps_todays_weight_keys():
    model, _ = autorec_batch()
    keys = {k for k in model.network.state_dict() if "weight" in k or "bias" in k}
    assert keys == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}


class TestStackedAutoRec(RecommenderContract):
    model_name = "autorec"
    params = {**SMALL, "stacked_dims": [8]}
    folds_in_unknown_users = False


class TestContractiveAutoRec(RecommenderContract):
    model_name = "autorec"
    params = {**SMALL, "contractive": 0.01}
    folds_in_unknown_users = False


class TestContractiveMultDAE(RecommenderContract):
    model_name = "multdae"
    params = {"hidden_dims": [16], "l2": 1e-4, "contractive": 0.01, **CONTRACT}

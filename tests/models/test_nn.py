"""recsys.models.nn: the shared layers, inits, weights cache, weight loading and the one
optimiser builder, which the models that step their own optimisers (CFGAN, RecVAE) now use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recsys.config import TrainConfig
from recsys.errors import RecsysError
from recsys.models.cfgan import CFGAN
from recsys.models.nn import (
    ACTIVATIONS,
    WeightsCache,
    activation_function,
    build_optimizer,
    init_like_cfgan,
    init_like_multvae,
    mlp,
    weights_must_match,
)
from recsys.models.recvae import RecVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mlp_puts_the_activation_between_layers_and_after_the_last_only_if_asked():
    body = mlp([6, 4, 2], "relu")
    assert [type(m) for m in body] == [nn.Linear, nn.ReLU, nn.Linear]
    closed = mlp([6, 4, 2], "sigmoid", last_activation=True)
    assert [type(m) for m in closed] == [nn.Linear, nn.Sigmoid, nn.Linear, nn.Sigmoid]
    assert [(m.in_features, m.out_features) for m in body if isinstance(m, nn.Linear)] == [
        (6, 4), (4, 2)]


def test_activation_function_is_the_module_tables_function():
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(activation_function("sigmoid")(x), torch.sigmoid(x))
    assert torch.equal(activation_function("identity")(x), x)
    assert torch.equal(activation_function("relu")(x), torch.relu(x))
    assert set(ACTIVATIONS) >= {"identity", "sigmoid", "tanh", "relu"}


def test_the_two_init_schemes_draw_their_own_bias_ranges():
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    init_like_cfgan(layer)
    assert layer.bias.abs().max() <= 0.01 and layer.bias.abs().max() > 0.009
    bound = (6 / (400 + 300)) ** 0.5  # xavier-uniform
    assert layer.weight.abs().max() <= bound
    init_like_multvae(layer)
    assert 0.0005 < float(layer.bias.detach().std()) < 0.0015


def test_weights_cache_recomputes_after_an_in_place_update_only():
    net = nn.Linear(3, 2)
    cache: WeightsCache[torch.Tensor] = WeightsCache()
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return net.weight.detach().clone()

    device = torch.device("cpu")
    first = cache.get(net, device, compute)
    assert cache.get(net, device, compute) is first and len(calls) == 1
    with torch.no_grad():
        net.weight.add_(1.0)  # what an optimiser step does
    assert torch.equal(cache.get(net, device, compute), first + 1.0) and len(calls) == 2
    cache.clear()
    cache.get(net, device, compute)
    assert len(calls) == 3


def test_a_mismatched_load_is_one_line_naming_the_model():
    with pytest.raises(RecsysError) as err, weights_must_match("multvae"):
        nn.Linear(3, 2).load_state_dict(nn.Linear(4, 2).state_dict())
    message = str(err.value)
    assert message.startswith("multvae: saved weights do not match the configured dims (")
    assert "\n" not in message


@pytest.mark.parametrize(("name", "kind"), [("adam", torch.optim.Adam),
                                            ("adamw", torch.optim.AdamW),
                                            ("sgd", torch.optim.SGD),
                                            ("rmsprop", torch.optim.RMSprop)])
def test_build_optimizer_honours_the_config_and_an_lr_override(name, kind):
    config = TrainConfig(optimizer=name, lr=0.05, weight_decay=0.1)
    params = [nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(config, params)
    assert type(opt) is kind
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["weight_decay"] == 0.1
    assert build_optimizer(config, params, lr=0.2).param_groups[0]["lr"] == 0.2


def _built(model):
    model.build(8, 6)
    return model.configure_optimizers()


def test_recvae_and_cfgan_default_to_adam_with_their_lr_and_follow_config_optimizer():
    enc, dec = _built(RecVAE(hidden_dim=4, latent_dim=2))
    assert type(enc) is type(dec) is torch.optim.Adam
    assert enc.param_groups[0]["lr"] == RecVAE.Config().lr
    enc, dec = _built(RecVAE(hidden_dim=4, latent_dim=2, optimizer="sgd", lr=0.3,
                             weight_decay=0.01))
    assert type(enc) is type(dec) is torch.optim.SGD
    assert enc.param_groups[0]["weight_decay"] == 0.01

    g, d = _built(CFGAN(g_hidden=4, d_hidden=3))
    assert type(g) is type(d) is torch.optim.Adam
    g, d = _built(CFGAN(g_hidden=4, d_hidden=3, optimizer="adamw", lr=0.01, d_lr=0.002))
    assert type(g) is type(d) is torch.optim.AdamW
    assert (g.param_groups[0]["lr"], d.param_groups[0]["lr"]) == (0.01, 0.002)

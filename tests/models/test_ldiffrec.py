"""L-DiffRec, DiffRec's latent option (``latent_clusters > 0``): item groups from k-means, the
per-group codec, training and scoring in the latent space, the saved groups, fold-in, and the
option off leaving DiffRec's network exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender
from recsys.models.diffrec import GROUPS_KEY, DiffRec
from recsys.models.ldiffrec import LatentCodec, group_latent_dims, item_clusters
from recsys.models.registry import create_model

from .contract import RecommenderContract, checkerboard, masked

# Without the ELBO's step weights: on the tiny checkerboard their large factors (SNR differences
# under the default tiny noise) let the code's diffusion loss swamp the reconstruction in 60 epochs.
LATENT = {"hidden_dims": [16], "epochs": 60, "batch_size": 16, "lr": 1e-2, "device": "cpu",
          "patience": None, "latent_dim": 8, "reweight": False}


class TestLDiffRecOneGroup(RecommenderContract):
    model_name = "diffrec"
    params = {**LATENT, "latent_clusters": 1}


class TestLDiffRecTwoGroups(RecommenderContract):
    model_name = "diffrec"
    params = {**LATENT, "latent_clusters": 2}


def fitted(**params: object) -> DiffRec:
    data = checkerboard()
    torch.manual_seed(0)
    model = create_model("diffrec", **{**LATENT, "epochs": 5, **params})
    assert isinstance(model, DiffRec)
    model.fit(data.train, None, FitContext(quiet=True))
    return model


# -- the groups and the codec --------------------------------------------------------------------


def test_kmeans_on_svd_factors_finds_the_checkerboards_blocks():
    data = checkerboard(blocks=3)
    groups = item_clusters(data.train.binary(), 3, seed=0)
    blocks = np.repeat(np.arange(3), 8)
    # Numbered by first appearance, the groups are the blocks themselves.
    assert groups.tolist() == blocks.tolist()
    assert item_clusters(data.train.binary(), 1, seed=0).tolist() == [0] * 24
    assert (item_clusters(data.train.binary(), 3, seed=0) == groups).all()  # seeded


def test_each_group_gets_a_share_of_the_code_proportional_to_its_size():
    assert group_latent_dims([50, 30, 20], 10) == [5, 3, 2]
    dims = group_latent_dims([1000, 1, 1], 10)
    assert sum(dims) == 10 and min(dims) == 1 and dims[0] == 8
    with pytest.raises(RecsysError, match="latent_dim"):
        group_latent_dims([3, 3, 3], 2)


def test_the_codec_reads_each_groups_items_only_and_decodes_in_catalogue_order():
    torch.manual_seed(0)
    groups = torch.tensor([1, 0, 1, 0, 0, 1])
    codec = LatentCodec(groups, 4, dropout=0.0, normalize_input=False).eval()
    assert codec.dims == [2, 2]
    x = torch.rand(3, 6)
    mu, logvar = codec.encode(x)
    assert mu.shape == logvar.shape == (3, 4)
    # Changing group 1's items (0, 2, 5) moves group 1's units (the last two) only.
    y = x.clone()
    y[:, [0, 2, 5]] += 1.0
    mu_y, _ = codec.encode(y)
    torch.testing.assert_close(mu_y[:, :2], mu[:, :2])
    assert not torch.allclose(mu_y[:, 2:], mu[:, 2:])
    # Decoding: item i's logit is its group's decoder output at i's place within the group.
    z = torch.randn(3, 4)
    logits = codec.decode(z)
    torch.testing.assert_close(logits[:, [1, 3, 4]], codec.decoders[0](z[:, :2]))
    torch.testing.assert_close(logits[:, [0, 2, 5]], codec.decoders[1](z[:, 2:]))


# -- training, scoring, saving ---------------------------------------------------------------------


def test_a_fit_trains_every_part_and_scores_are_finite_and_masked_like_diffrecs():
    data = checkerboard()
    torch.manual_seed(0)
    model = create_model("diffrec", **{**LATENT, "epochs": 3, "latent_clusters": 2})
    assert isinstance(model, DiffRec)
    built: dict[str, torch.Tensor] = {}
    setup = model.setup

    def keep_the_built_weights(train, ctx):  # setup runs after build, before training
        built.update({k: v.clone() for k, v in model.state_dict().items()})
        setup(train, ctx)

    model.setup = keep_the_built_weights  # type: ignore[method-assign]
    model.fit(data.train, None, FitContext(quiet=True))
    record = model.history_[-1]
    assert {"diffusion", "nll", "kl", "beta"} <= set(record)
    assert all(np.isfinite(record[k]) for k in ("loss", "diffusion", "nll", "kl"))
    after = model.state_dict()
    for key in ("codec.encoders.0.weight", "codec.decoders.1.weight", "encoder.0.weight"):
        assert not torch.equal(built[key], after[key]), key  # the codec and the denoiser learn
    scores = model.score(data.users, data.history)
    assert scores.shape == (data.train.n_users, data.train.n_items)
    assert torch.isfinite(scores).all()
    ranked = masked(scores, data.history)
    assert torch.isinf(ranked[torch.from_numpy(data.history.toarray() > 0)]).all()


def test_the_groups_are_saved_and_a_fresh_load_scores_the_same(tmp_path):
    model = fitted(latent_clusters=2)
    data = checkerboard()
    assert GROUPS_KEY in model.state_dict()
    model.save(tmp_path)
    loaded = Recommender.load(tmp_path)
    assert isinstance(loaded, DiffRec)
    assert torch.equal(loaded.network.codec.groups, model.network.codec.groups)
    torch.testing.assert_close(loaded.score(data.users, data.history),
                               model.score(data.users, data.history))


def test_a_new_user_folds_in_from_a_history():
    model = fitted(latent_clusters=2, epochs=60)
    data = checkerboard()
    # A user unknown to the model who liked block 1's first seven items.
    history = sp.csr_matrix(np.r_[np.zeros(8), np.ones(7), 0.0][None, :])
    scores = masked(model.score(np.array([-1]), history), history)[0]
    assert int(scores.argmax()) == 15
    same = model.score(np.array([data.train.n_users - 1]), history)
    torch.testing.assert_close(model.score(np.array([-1]), history), same)  # ids are not read


def test_scoring_runs_the_reverse_steps_on_the_encoded_mean():
    model = fitted(latent_clusters=2, steps=3)
    net = model.network.eval()
    data = checkerboard()
    x = torch.from_numpy(data.history[:5].toarray()).float()
    with torch.no_grad():
        z, _ = net.codec.encode(x)
        for i in (2, 1, 0):
            z = net.coef_x0[i] * net(z, torch.full((5,), i)) + net.coef_xt[i] * z
        expected = net.codec.decode(z)
    torch.testing.assert_close(model.score(np.arange(5), data.history[:5]), expected)


# -- the option off ----------------------------------------------------------------------------


def test_off_builds_todays_network_exactly():
    """latent_clusters 0 (the default) is DiffRec: the same keys, shapes and initial numbers as
    the network without the option's code path (the reference built here by hand)."""
    from recsys.models.diffrec import DiffRecNetwork, diffusion_betas

    torch.manual_seed(0)
    model = create_model("diffrec", hidden_dims=[8], device="cpu")
    model.build(4, 12)
    torch.manual_seed(0)
    reference = DiffRecNetwork(12, [8], 10, 0.5, True, diffusion_betas("linear-var", 5, 1e-4,
                                                                        5e-4, 5e-3), 10)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert not any(key.startswith("codec") for key in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.network.codec is None


# -- bad settings --------------------------------------------------------------------------------


def test_more_groups_than_items_is_refused_in_one_line():
    data = checkerboard()
    model = create_model("diffrec", **{**LATENT, "latent_dim": 40, "latent_clusters": 17})
    with pytest.raises(RecsysError, match=r"latent_clusters \(17\) exceeds the 16 items") as err:
        model.fit(data.train, None, FitContext(quiet=True))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("params", "message"), [
    ({"latent_clusters": 5, "latent_dim": 4}, r"latent_clusters \(5\) exceeds latent_dim"),
    ({"latent_clusters": -1}, "latent_clusters"),
])
def test_inconsistent_latent_settings_end_in_one_line(params, message):
    with pytest.raises(RecsysError, match=message) as err:
        create_model("diffrec", **params)
    assert "\n" not in str(err.value)


def test_a_code_wider_than_the_catalogue_is_refused():
    data = checkerboard()
    model = create_model("diffrec", **{**LATENT, "latent_dim": 20, "latent_clusters": 1})
    with pytest.raises(RecsysError, match="latent_dim"):
        model.fit(data.train, None, FitContext(quiet=True))


def test_saved_weights_without_groups_are_refused_in_one_line():
    model = fitted(latent_clusters=2)
    state = {k: v for k, v in model.state_dict().items() if k != GROUPS_KEY}
    with pytest.raises(RecsysError, match=GROUPS_KEY):
        model.load_state_dict(state)

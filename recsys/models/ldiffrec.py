"""The latent pieces of L-DiffRec (Wang et al., SIGIR 2023, section 3.4), DiffRec's option
``latent_clusters > 0`` (`recsys.models.diffrec`).

Items are split into C groups by k-means; each user's history is cut by group and each part is
compressed by its own VAE encoder (a mean and a log-variance), the parts' codes are concatenated,
the diffusion and its denoiser run on that code, and one decoder per group maps its share of the
code back to the group's items. The paper clusters pretrained item embeddings; here the item
representation is a truncated SVD of the training matrix (`item_clusters`), seeded, so a fit is
reproducible without a second model. Each group's share of the latent width is proportional to
its item count (`group_latent_dims`), as in the authors' code: a group of 10% of the items gets
10% of the code.

The encoders and decoders are block-diagonal in items: with C groups of equal size the codec
holds about 1/C of the weights of one encoder and one decoder over the whole catalogue, which is
where the paper's parameter saving comes from.

The group of each item is the `LatentCodec`'s saved buffer ``groups``: a saved model rebuilds
the same per-group layers from its weights alone.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.preprocessing import normalize
from torch import nn

from recsys.errors import RecsysError
from recsys.models.nn import init_like_multvae

# Width of the SVD item factors that k-means clusters (fewer when the data is smaller).
SVD_COMPONENTS = 64

__all__ = ["SVD_COMPONENTS", "LatentCodec", "group_latent_dims", "item_clusters"]


def item_clusters(matrix: sp.csr_matrix, clusters: int, seed: int) -> np.ndarray:
    """Group (0..G-1, G <= ``clusters``) of every item of the users x items ``matrix``: k-means
    on the items' L2-normalised truncated-SVD factors.

    The factors are normalised so that items group by who likes them rather than by how many do
    (un-normalised factors grow with popularity). Groups come out numbered by their smallest
    item; a group k-means leaves empty (fewer distinct items than ``clusters``) is dropped.
    """
    n_users, n_items = matrix.shape
    if clusters > n_items:
        raise RecsysError(f"diffrec: latent_clusters ({clusters}) exceeds the {n_items} items of "
                          "the training data; set a smaller latent_clusters")
    if clusters <= 1:
        return np.zeros(n_items, dtype=np.int64)
    items = sp.csr_matrix(matrix.T, dtype=np.float64)
    components = min(SVD_COMPONENTS, n_users - 1, n_items - 1)
    factors = (TruncatedSVD(components, random_state=seed).fit_transform(items)
               if components >= 1 else items.toarray())
    labels = KMeans(clusters, n_init=10, random_state=seed).fit_predict(normalize(factors))
    # Renumber by first appearance: the numbering no longer depends on k-means' own order.
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(labels.max() + 1, dtype=np.int64)
    rank[labels[np.sort(first)]] = np.arange(len(first))
    return rank[labels]


def group_latent_dims(sizes: list[int], latent_dim: int) -> list[int]:
    """Each group's share of ``latent_dim``, proportional to its size, at least 1 each, summing
    to ``latent_dim`` (largest remainders take the leftover units)."""
    if latent_dim < len(sizes):
        raise RecsysError(f"diffrec: latent_dim ({latent_dim}) is smaller than the "
                          f"{len(sizes)} item groups; each group needs at least one latent unit")
    spare = latent_dim - len(sizes)
    exact = np.asarray(sizes, dtype=np.float64) / sum(sizes) * spare
    dims = np.floor(exact).astype(np.int64)
    leftover = spare - int(dims.sum())
    dims[np.argsort(-(exact - dims), kind="stable")[:leftover]] += 1
    return [int(d) + 1 for d in dims]


class LatentCodec(nn.Module):
    """Per-group VAE encoders and decoders between the item space and the latent code.

    ``encode`` takes the whole history (normalised and dropped out as a whole, so the groups keep
    their relative scale) and returns the concatenated means and log-variances; ``decode`` maps
    a code back to logits over all items in catalogue order.
    """

    def __init__(self, groups: torch.Tensor, latent_dim: int, dropout: float,
                 normalize_input: bool) -> None:
        super().__init__()
        groups = groups.to(torch.int64)
        sizes = torch.bincount(groups).tolist()
        if 0 in sizes:
            raise RecsysError("diffrec: the saved item groups leave a group empty; the saved "
                              "model is damaged")
        dims = group_latent_dims(sizes, latent_dim)
        self.normalize_input = normalize_input
        self.dims = dims
        self.dropout = nn.Dropout(dropout)
        self.encoders = nn.ModuleList(nn.Linear(n, 2 * d) for n, d in zip(sizes, dims,
                                                                          strict=True))
        self.decoders = nn.ModuleList(nn.Linear(d, n) for n, d in zip(sizes, dims, strict=True))
        init_like_multvae(self)
        self.register_buffer("groups", groups)
        # Items sorted by group (stable: catalogue order within a group), and where each item
        # lands in that order: decoding concatenates the groups and gathers back in one index.
        order = torch.argsort(groups, stable=True)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        self.sizes = sizes

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (batch, latent_dim): group c's units from group c's items."""
        if self.normalize_input:
            x = F.normalize(x, dim=-1)
        parts = torch.split(self.dropout(x)[:, self.order], self.sizes, dim=1)
        stats = [enc(part).chunk(2, dim=-1) for enc, part in zip(self.encoders, parts,
                                                                 strict=True)]
        return (torch.cat([mu for mu, _ in stats], dim=-1),
                torch.cat([logvar for _, logvar in stats], dim=-1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (batch, n_items) in catalogue order from codes (batch, latent_dim)."""
        parts = torch.split(z, self.dims, dim=1)
        out = torch.cat([dec(part) for dec, part in zip(self.decoders, parts, strict=True)],
                        dim=-1)
        return out[:, self.inverse]

"""SANSA (Spišák et al., RecSys 2023): EASE with a sparse approximate inverse, from the `sansa`
package (wrapped, not rewritten).

EASE needs the dense inverse ``P = (X^T X + l2 I)^-1``. SANSA factorises ``X^T X + l2 I`` as
``L D L^T`` (exact CHOLMOD Cholesky then sparsified, or an incomplete Cholesky, ICF, that never
forms the dense factor), finds a sparse approximate inverse of ``L`` and keeps two sparse
matrices with ``X W_1 W_2 ~= -X P / diag(P)``. This wrapper adds the history back, so that a
user's scores are EASE's ``X B`` (``B = I - P / diag(P)``, zero diagonal) at full density.

The package (and scikit-sparse, which needs SuiteSparse) is imported only to fit; a saved model
scores with scipy alone. Install it with ``pip install 'recsys-ae[sansa]'`` after
``apt-get install libsuitesparse-dev`` (``brew install suite-sparse`` on macOS).
"""

from __future__ import annotations

import gc
import logging
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from recsys.config import StrictConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, csr_to_dense
from recsys.models.item_item import SparseItemItem


class SANSAConfig(StrictConfig):
    l2: float = Field(200.0, gt=0, description="L2 penalty: EASE's lambda_ (cholmod)")
    weights_per_item: float = Field(
        200.0, ge=2, description="kept weights per item in each of the two matrices (the "
                                 "package's weight_matrix_density times the item count; its "
                                 "floor is 2)")
    factorizer: Literal["cholmod", "icf"] = Field(
        "cholmod", description="cholmod: exact Cholesky, then sparsified; icf: incomplete "
                               "Cholesky of a rescaled X^T X (less memory, millions of items)")
    icf_shift_step: float = Field(1e-3, gt=0, description="icf: first diagonal shift if the "
                                                          "incomplete factorisation fails")
    icf_shift_multiplier: float = Field(2.0, gt=1, description="icf: growth of the shift")
    scans: int = Field(1, ge=0, description="UMR scans through all columns of the inverse")
    finetune_steps: int = Field(10, ge=0, description="UMR steps on the worst columns")


def _import_sansa() -> Any:
    """The `sansa` package, without the INFO logging its import switches on for everyone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import sansa
    except ImportError as exc:
        raise RecsysError(
            f"model 'sansa' needs the sansa package ({str(exc).splitlines()[0]}); install it with "
            "pip install 'recsys-ae[sansa]' (it builds scikit-sparse against SuiteSparse: "
            "apt-get install libsuitesparse-dev first)") from None
    finally:
        # sansa/model.py calls logging.basicConfig(level=INFO) when imported.
        for handler in root.handlers[len(handlers):]:
            root.removeHandler(handler)
        root.setLevel(level)
    return sansa


class SANSA(SparseItemItem):
    """SANSA: sparse approximate EASE, fitted by the `sansa` package (see the module doc)."""

    name: ClassVar[str] = "sansa"
    Config: ClassVar[type[StrictConfig]] = SANSAConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"l2": [50.0, 100.0, 200.0, 500.0, 1000.0]}
    search_space = {"l2": {"low": 10.0, "high": 5000.0, "log": True}}
    weight_names: ClassVar[tuple[str, ...]] = ("w1", "w2")

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        sansa = _import_sansa()
        x = self._start_fit(train)
        cfg = self.config
        if cfg.factorizer == "cholmod":
            factorizer = sansa.CHOLMODGramianFactorizerConfig()
        else:
            factorizer = sansa.ICFGramianFactorizerConfig(
                factorization_shift_step=cfg.icf_shift_step,
                factorization_shift_multiplier=cfg.icf_shift_multiplier)
        model = sansa.SANSA(sansa.SANSAConfig(
            l2=cfg.l2,
            weight_matrix_density=min(1.0, cfg.weights_per_item / max(self.n_items, 1)),
            gramian_factorizer_config=factorizer,
            lower_triangle_inverter_config=sansa.UMRUnitLowerTriangleInverterConfig(
                scans=cfg.scans, finetune_steps=cfg.finetune_steps)))
        logger = logging.getLogger("sansa")
        level = logger.level
        # Its INFO lines narrate every step and its warnings are multi-line advice (e.g. "try
        # ICF" below 5% density, on every ml-latest-small fit, where ICF scores worse); the
        # density floor it would clip to is refused by the config instead.
        logger.setLevel(logging.ERROR)
        # sansa runs gc.collect() some 25 times a fit; each full pass walks every object of the
        # process (torch alone holds ~10^5: 0.15 s a pass, more than half of an ml-100k fit).
        # Freezing what exists before the fit keeps those passes to the fit's own objects
        # (anything older that becomes garbage is collected after the fit).
        gc.freeze()
        try:
            model.fit(x)
        finally:
            gc.unfreeze()
            logger.setLevel(level)
        w1, w2 = model.weights
        self._set_weights(w1, w2)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        # X W_1 W_2 has EASE's -1 on the diagonal; adding X back gives X B.
        return super().score(users, history) + csr_to_dense(history, self.device, binary=True)


__all__ = ["SANSA", "SANSAConfig"]

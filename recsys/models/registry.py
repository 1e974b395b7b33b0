"""Model registry: names -> classes, imported lazily so `recsys --help` stays fast."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recsys.errors import RecsysError, closest

if TYPE_CHECKING:
    from recsys.models.base import Recommender

# name -> "module:Class". Names are part of the CLI contract; do not rename.
MODELS: dict[str, str] = {
    "pop": "recsys.models.baselines:Popularity",
    "itemknn": "recsys.models.baselines:ItemKNN",
    "ease": "recsys.models.baselines:EASE",
    "als": "recsys.models.baselines:ALS",
    "bpr": "recsys.models.baselines:BPR",
    "rp3beta": "recsys.models.rp3beta:RP3beta",
    "slim": "recsys.models.slim:SLIM",
    "sansa": "recsys.models.sansa:SANSA",
    "autorec": "recsys.models.autorec:AutoRec",
    "multvae": "recsys.models.multvae:MultVAE",
    "multdae": "recsys.models.multdae:MultDAE",
    "cdae": "recsys.models.cdae:CDAE",
    "recvae": "recsys.models.recvae:RecVAE",
    "cfgan": "recsys.models.cfgan:CFGAN",
    "aae": "recsys.models.aae:AAE",
    "diffrec": "recsys.models.diffrec:DiffRec",
    "cfnade": "recsys.models.cfnade:CFNADE",
    "cvae": "recsys.models.cvae:CVAE",
}


def available_models() -> list[str]:
    """Registered names whose implementation is present."""
    out = []
    for name, target in MODELS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def get_model_class(name: str) -> type[Recommender]:
    if name not in MODELS:
        raise RecsysError(f"unknown model '{name}'{closest(name, MODELS)}; "
                          f"available: {', '.join(available_models())}")
    module_name, _, cls_name = MODELS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise RecsysError(f"model '{name}' is registered but not implemented yet") from None
        raise
    return getattr(module, cls_name)


def create_model(name: str, **params: Any) -> Recommender:
    return get_model_class(name)(**params)

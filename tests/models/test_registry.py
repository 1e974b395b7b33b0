"""The model registry: exact names, one-line errors, every implemented model follows the protocol
and is covered by the shared contract tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sklearn.base import clone

from recsys.config import StrictConfig
from recsys.errors import RecsysError
from recsys.models.base import Recommender
from recsys.models.registry import MODELS, available_models, create_model, get_model_class

TESTS = Path(__file__).resolve().parents[1]


def test_registry_names_are_the_cli_contract():
    assert list(MODELS) == ["pop", "itemknn", "ease", "als", "bpr", "rp3beta", "slim", "sansa",
                            "autorec", "multvae", "multdae", "cdae", "recvae", "cfgan", "aae",
                            "diffrec", "cfnade", "cvae"]
    assert {"pop", "itemknn", "ease", "als", "bpr"} <= set(available_models())


def test_unknown_model_is_one_line_with_the_closest_name():
    with pytest.raises(RecsysError, match=r"unknown model 'eas' \(did you mean 'ease'\?\)") as exc:
        get_model_class("eas")
    assert "\n" not in str(exc.value)
    assert "itemknn" in str(exc.value)  # lists what is available


@pytest.mark.parametrize("name", available_models())
def test_every_implemented_model_follows_the_protocol(name):
    cls = get_model_class(name)
    assert issubclass(cls, Recommender) and cls.name == name
    assert issubclass(cls.Config, StrictConfig)
    assert cls.Config.model_config.get("extra") == "forbid"
    model = create_model(name)  # defaults alone make a valid model
    assert clone(model).get_params() == model.get_params()
    for method in ("fit", "score", "state_dict", "load_state_dict"):
        assert getattr(cls, method) is not getattr(Recommender, method), f"{name}.{method}"


def _contract_models() -> set[str]:
    """``model_name`` of every test class that derives (directly or not) from the contract."""
    classes: dict[str, tuple[list[str], str | None]] = {}
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                     for b in node.bases]
            name = None
            for stmt in node.body:
                targets = ([stmt.target] if isinstance(stmt, ast.AnnAssign)
                           else getattr(stmt, "targets", []))
                value = getattr(stmt, "value", None)
                if any(getattr(t, "id", None) == "model_name" for t in targets) and isinstance(
                        value, ast.Constant):
                    name = value.value
            classes[node.name] = (bases, name)

    def derives(cls: str, seen: frozenset[str] = frozenset()) -> bool:
        if cls == "RecommenderContract":
            return True
        if cls not in classes or cls in seen:
            return False
        return any(derives(b, seen | {cls}) for b in classes[cls][0])

    return {name for cls, (_, name) in classes.items() if name and derives(cls)}


def test_every_implemented_model_runs_the_shared_contract():
    missing = sorted(set(available_models()) - _contract_models())
    assert not missing, (f"no test class subclasses tests/models/contract.py's "
                         f"RecommenderContract for: {', '.join(missing)}")

"""`recsys config MODEL`: every key with its default, accepted values and search space; --yaml is
a usable --config file; an unknown key elsewhere lists the valid ones."""

from __future__ import annotations

import pytest
import yaml

from recsys.cli import main
from recsys.errors import RecsysError
from recsys.models.registry import MODELS, get_model_class
from recsys.models.tuning import default_grid, default_space


def table(capsys, model: str) -> dict[str, list[str]]:
    assert main(["config", model]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rule, *rows = lines
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    cells = {}
    for row in rows:
        parts = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        cells[parts[0]] = parts[1:]
    assert header.split()[:3] == ["key", "default", "accepts"]
    return cells


@pytest.mark.parametrize("name", list(MODELS))
def test_every_key_is_listed_with_its_default_and_search(capsys, name):
    cls = get_model_class(name)
    cells = table(capsys, name)
    assert list(cells) == list(cls.Config.model_fields)
    defaults = cls().get_params()
    space, grid = default_space(cls), default_grid(cls) or {}
    for key, (default, accepts, *searched) in cells.items():
        assert default == (repr(defaults[key]) if isinstance(defaults[key], str)
                           else str(defaults[key]))
        assert accepts
        shown = searched[0] if searched else ""
        assert ("study:" in shown) == (key in space) and ("grid:" in shown) == (key in grid)


def test_bounds_and_choices_read_as_words(capsys):
    cells = table(capsys, "multdae")
    assert cells["dropout"][1] == "float, >= 0, < 1"
    assert cells["optimizer"][1] == "one of 'adam', 'adamw', 'sgd', 'rmsprop'"
    assert cells["hidden_dims"][1] == "list of int, >= 1"
    assert cells["l2"][2].startswith("study: 1e-05 .. 0.1 (log)")


def test_yaml_is_the_defaults_and_validates(capsys):
    assert main(["config", "multvae", "--yaml"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    cls = get_model_class("multvae")
    assert shown == cls().get_params()
    assert cls.Config(**shown).model_dump() == shown


def test_an_unknown_model_is_one_line(capsys):
    assert main(["config", "mulvae"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mulvae' (did you mean 'multvae'?)" in err and err.count("\n") == 1


def test_an_unknown_key_names_the_closest_and_lists_the_valid_ones():
    from recsys.config import validate_config

    cls = get_model_class("ease")
    with pytest.raises(RecsysError) as exc:
        validate_config(cls.Config, {"lamda": 3.0}, where="ease config")
    assert str(exc.value) == ("ease config: unknown key 'lamda' (did you mean 'lambda_'?); "
                              "valid keys: lambda_, device")

"""Validated configuration.

Every model has one pydantic config class (``extra="forbid"``): an unknown key is an error that
names the key and suggests the closest valid one. Configs round-trip to plain dicts (and YAML).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.errors import RecsysError, closest


class StrictConfig(BaseModel):
    """Base for all configs: unknown keys are errors, values are validated on assignment."""

    # No inf/NaN: `lambda_: .inf` or `lr: 1e400` would pass `gt=0` and train garbage.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)


class TrainConfig(StrictConfig):
    """What the shared training engine (recsys.training) reads; neural model configs extend it."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(500, ge=1)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    lr_schedule: Literal["none", "cosine", "step", "plateau"] = "none"
    lr_step_size: int = Field(30, ge=1)
    lr_gamma: float = Field(0.5, gt=0)
    eval_every: int = Field(1, ge=1)
    patience: int | None = Field(20, ge=1)
    metric: str = "ndcg@100"
    checkpoint_every: int = Field(1, ge=1)
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    bf16: bool = False
    # float32 matmuls on TF32 tensor cores during training on CUDA (torch's default is full
    # float32: 1.8x slower for a Mult-VAE epoch on an H100); no effect on CPU.
    tf32: bool = True
    # Replay each full batch's step as one CUDA graph (models that support it, no lr schedule,
    # one process); no effect on CPU.
    cuda_graph: bool = True


C = TypeVar("C", bound=StrictConfig)


def validate_config(cls: type[C], params: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from ``params``; turn pydantic's report into one clear line."""
    try:
        return cls(**params)
    except ValidationError as exc:
        raise RecsysError(_one_line(cls, exc, where)) from None


def _one_line(cls: type[StrictConfig], exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    if not err["loc"]:
        # A rule across keys (a model validator): its message names the keys itself.
        return f"{where}: {str(err['msg']).removeprefix('Value error, ')}"
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return (f"{where}: unknown key '{key}'{closest(key, cls.model_fields)}; valid keys: "
                f"{', '.join(cls.model_fields)}")
    return f"{where}: invalid value for '{key}': {err['msg']} (got {err.get('input')!r})"


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (numbers, bools, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise RecsysError(f"--set {item!r}: expected key=value")
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping, read with YAML's safe loader: plain values, lists and
    mappings only; a tag that would build a Python object is refused by name."""
    path = Path(path)
    if not path.exists():
        raise RecsysError(f"{path}: config file not found")
    if path.is_dir():
        raise RecsysError(f"{path}: it is a directory; pass the config file inside it")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise RecsysError(f"{path}: bytes that are not UTF-8 at offset {exc.start}; save the "
                          "config as UTF-8 text") from None
    except OSError as exc:  # no permission, a socket
        raise RecsysError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        tag = re.search(r"tag '([^']*)'", str(exc.problem))
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "a tag"
        raise RecsysError(f"{path}{f' line {mark.line + 1}' if mark else ''}: the tag '{name}' is "
                          "refused: configs are read with YAML's safe loader (plain values, "
                          "lists and mappings only)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecsysError(f"{path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise RecsysError(f"{path}: expected a mapping of config keys at the top level")
    return data

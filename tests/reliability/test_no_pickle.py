"""Nothing a user can hand us is unpickled.

Static: the sources of recsys/ and pipelines/ are scanned (AST) for pickle-family imports,
``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=True)``, ``read_pickle``,
widened torch safe-globals, unsafe YAML loaders, pickle-based MLflow flavours and eval/exec.
The scanner is itself tested on a snippet that commits each sin.

Dynamic: a saved model, a training checkpoint and a prepared dataset that each carry a pickled
object whose unpickling would create a marker file are refused with one line, and the marker
never appears.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reliability.helpers import REPO, assert_one_line_error, cli, snapshot

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve",
                  "marshal", "jsonpickle"}


class Trap:
    """Unpickling this creates ``marker`` (open(..., "w")): proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (builtins.open, (str(self.marker), "w"))


# -- static scan ---------------------------------------------------------------------------------


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan(source: str, filename: str = "<source>") -> list[str]:
    """Violations in ``source``, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):  # import aliases first: np -> numpy, load -> torch.load
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                    a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in PICKLE_MODULES:
                    bad(node, f"imports {mod}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        if name in ("torch.load", "torch.serialization.load") \
                and not _is_true(_kw(node, "weights_only")):
            bad(node, f"{name} without weights_only=True")
        elif name in ("numpy.load",) and _kw(node, "allow_pickle") is not None \
                and not (isinstance(_kw(node, "allow_pickle"), ast.Constant)
                         and _kw(node, "allow_pickle").value is False):
            bad(node, "numpy.load with allow_pickle other than False")
        elif name.endswith("read_pickle") or name.endswith("to_pickle"):
            bad(node, f"{name}")
        elif name.startswith("torch.serialization.") and "safe_globals" in name:
            bad(node, f"{name} widens what weights_only unpickles")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            loader = _kw(node, "Loader")
            if name != "yaml.load" or loader is None or "Safe" not in (
                    _dotted(loader, aliases) or ""):
                bad(node, f"{name} (use yaml.safe_load)")
        elif name.split(".")[0] == "mlflow" and name.endswith(".load_model") \
                and name.split(".")[1] in ("pytorch", "sklearn", "keras", "tensorflow"):
            bad(node, f"{name} unpickles a whole model")
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            bad(node, f"{name}()")
    return found


def _is_text(node: ast.expr) -> bool:
    """A literal string, an f-string, or ``str(...)`` / ``os.fspath(...)`` of something: a path
    (whatever it is built from, the value passed is text, never a model object)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    return isinstance(node, ast.Call) and ast.unparse(node.func) in ("str", "os.fspath")


def pickled_pyfunc(source: str, filename: str = "<source>") -> list[str]:
    """MLflow pyfunc models logged from a PythonModel *instance* (cloudpickled, and unpickled by
    ``mlflow.pyfunc.load_model``) rather than from code (``python_model="model.py"``)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call):
            value = _kw(node, "python_model")
            if value is not None and not _is_text(value):
                found.append(f"{filename}:{node.lineno}: python_model={ast.unparse(value)}")
    return found


def _sources() -> list[Path]:
    files = sorted((REPO / "recsys").rglob("*.py")) + sorted((REPO / "pipelines").glob("*.py"))
    assert len(files) > 20, "the scan should see the whole package"
    return files


SINS = '''
import pickle
import numpy as np
import torch as T
from torch import load
import yaml, pandas as pd
from joblib import load as jl
state = T.load("w.pt")
state = load("w.pt", weights_only=False)
ok = T.load("w.pt", map_location="cpu", weights_only=True)
z = np.load("a.npz", allow_pickle=True)
z2 = np.load("a.npz", allow_pickle=flag)
fine = np.load("a.npz", allow_pickle=False)
also_fine = np.load("a.npy")
frame = pd.read_pickle("f.pkl")
T.serialization.add_safe_globals([object])
cfg = yaml.load(text)
cfg2 = yaml.load(text, Loader=yaml.SafeLoader)
cfg3 = yaml.safe_load(text)
import mlflow
m = mlflow.pytorch.load_model("runs:/x/model")
eval("1 + 1")
net.eval()
'''


def test_the_scanner_finds_every_kind_of_sin():
    found = scan(SINS)
    lines = sorted(int(f.split(":")[1]) for f in found)
    # pickle, joblib, T.load, load(weights_only=False), allow_pickle=True, allow_pickle=flag,
    # read_pickle, add_safe_globals, yaml.load, mlflow.pytorch, eval(); not the fine ones.
    assert lines == [2, 7, 8, 9, 11, 12, 15, 16, 17, 21, 22], found
    assert pickled_pyfunc("Model.log(python_model=Wrapper(), name='m')\n"
                          "Model.log(python_model='model.py', name='m')\n"
                          "Model.log(python_model=str(CODE), name='m')\n"
                          "Model.log(python_model=f'{root}/model.py', name='m')\n"
                          "Model.log(python_model=WRAPPER, name='m')\n"
                          "Model.log(python_model=str(Wrapper()).x, name='m')\n") == [
        "<source>:1: python_model=Wrapper()", "<source>:5: python_model=WRAPPER",
        "<source>:6: python_model=str(Wrapper()).x"]


def test_no_pickle_on_anything_a_user_can_hand_us():
    found = [v for path in _sources()
             for v in scan(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


def test_mlflow_models_are_logged_from_code_not_pickled():
    found = [v for path in _sources()
             for v in pickled_pyfunc(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


# -- dynamic: pickled objects in files we read ---------------------------------------------------


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "UNPICKLED"
    yield path
    assert not path.exists(), "a pickled object was unpickled"


def test_the_trap_is_real(tmp_path, marker):
    # With plain unpickling the payload does run: the refusals below are not vacuous.
    witness = tmp_path / "witness"
    torch.save({"w": Trap(witness)}, tmp_path / "t.pt")
    torch.load(tmp_path / "t.pt", weights_only=False)
    assert witness.exists()


@pytest.mark.parametrize("command", ["evaluate", "recommend", "predict"])
def test_weights_with_a_pickled_object_are_refused(world, tmp_path, marker, capsys, command):
    run = Path(shutil.copytree(world.run_autorec if command == "predict" else world.run_ease,
                               tmp_path / "run"))
    state = torch.load(run / "model" / "weights.pt", weights_only=True)
    state["extra"] = Trap(marker)
    torch.save(state, run / "model" / "weights.pt")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,101\n")
    argv = {"evaluate": ["evaluate", run, "--data", world.data],
            "recommend": ["recommend", run, "--data", world.data, "--k", "3",
                          "--out", tmp_path / "out.csv"],
            "predict": ["predict", run, "--pairs", pairs, "--out", tmp_path / "out.csv"]}[command]
    result = cli(argv, capsys)
    assert_one_line_error(result, "holds Python objects other than tensors; refusing")
    assert not (tmp_path / "out.csv").exists()


def _trapped_checkpoint(neural_run, tmp_path: Path, marker: Path) -> Path:
    run = Path(shutil.copytree(neural_run.run, tmp_path / "run"))
    latest = max((run / "checkpoints").glob("epoch-*.pt"))
    payload = torch.load(latest, weights_only=True)
    payload["network"]["trap"] = Trap(marker)
    torch.save(payload, latest)
    # The sidecar is made to match: the digest is not what stops it, weights_only is.
    data = latest.read_bytes()
    side = latest.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "sha256": hashlib.sha256(data).hexdigest(),
                                "bytes": len(data)}))
    return run


def test_checkpoint_with_a_pickled_object_is_refused(neural_run, tmp_path, marker, capsys):
    run = _trapped_checkpoint(neural_run, tmp_path, marker)
    before = snapshot(run)
    result = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--resume",
                  *neural_run.args], capsys)
    assert result.code == 2 and "Traceback" not in result.err
    assert "not a loadable checkpoint" in result.err.splitlines()[0]
    assert snapshot(run) == before


def test_checkpoint_with_a_pickled_object_is_refused_in_one_line(neural_run, tmp_path, marker,
                                                                 capsys):
    run = _trapped_checkpoint(neural_run, tmp_path, marker)
    result = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--resume",
                  *neural_run.args], capsys)
    assert_one_line_error(result, "not a loadable checkpoint (it holds Python objects other "
                                  "than tensors")
    assert "weights_only" not in result.err and "\x1b" not in result.err
    assert "--overwrite" in result.err  # the way out that `train` accepts


def test_prepared_data_with_pickled_arrays_is_refused(world, tmp_path, marker, capsys):
    data = Path(shutil.copytree(world.data, tmp_path / "data"))
    with np.load(data / "train.npz") as z:
        arrays = dict(z)
    arrays["data"] = np.array([Trap(marker)] * len(arrays["data"]), dtype=object)
    np.savez(data / "train.npz", **arrays)  # object arrays are stored pickled
    result = cli(["evaluate", world.run_ease, "--data", data], capsys)
    assert_one_line_error(result, "train.npz: not a valid part file")
    assert "allow_pickle" not in result.err  # never advise the user to unpickle it

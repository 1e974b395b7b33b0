"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process on the same
global batch; plus the refusals that need no process group.

What "match" means, and why:

- Mult-DAE (dropout 0) and AutoRec take no random draws inside a step, and the two ranks' shards
  of global batch j are exactly the rows of batch j of the single-process run. The only
  difference left is floating-point summation order (the gradient is the mean of two half-batch
  means instead of one mean): per-epoch losses and validation metrics agreed to 1e-7 relative and
  the final weights to 3e-8 absolute; the tolerances are 1e-6 for both.
- Mult-VAE draws its latent noise per row, and each rank draws its own (independent streams
  seeded from seed, epoch and rank), so the two runs are two samples of the same stochastic
  training, not one computation. On ml-latest-small (below), one-process runs over seeds 0-4
  gave test NDCG@100 0.209 +- 0.011 (std) and DDP runs 0.206 +- 0.009; the per-seed gap was
  0.0006-0.014. The test asks for |DDP - single| <= 0.03 (about 3 std) on NDCG@100, validation
  and test, with the same seed.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.cli import main
from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.training import latest_checkpoint, load_checkpoint
from recsys.training.distributed import epoch_seed, launched_by_torchrun

TORCHRUN = Path(sys.executable).parent / "torchrun"
WORLD = 2
# Epochs, the global batch (each of the 2 ranks takes half) and no early stopping.
COMMON = ["--set", "epochs=3", "--set", "batch_size=32", "--set", "patience=null",
          "--set", "seed=7", "--metric", "ndcg@10", "--metrics", "ndcg@10,recall@10",
          "--device", "cpu", "--quiet"]
MODELS = {
    "multdae": ["--set", "dropout=0", "--set", "hidden_dims=[16]"],
    "autorec": ["--set", "hidden=16", "--set", "lr=0.01", "--metric", "rmse",
                "--metrics", "rmse,mae"],
}
EXACT_RTOL = 1e-6  # per-epoch losses and metrics (measured: <= 1e-7)
EXACT_WEIGHTS_ATOL = 1e-6  # final weights after 3 epochs (measured: 3e-8)
MULTVAE_NDCG_TOLERANCE = 0.03  # see the module docstring
MULTVAE = ["--set", "epochs=5", "--set", "batch_size=64", "--set", "patience=null",
           "--set", "seed=0", "--set", "hidden_dims=[64]", "--set", "latent_dim=16",
           "--set", "total_anneal_steps=50", "--metric", "ndcg@100",
           "--metrics", "ndcg@100,recall@20", "--device", "cpu", "--quiet"]


def ratings_dataset(n_users: int = 96, n_items: int = 48, seed: int = 0) -> Dataset:
    """Explicit 1..5 ratings from a low-rank taste model, split per rating into train / valid /
    test (70/10/20). Row counts (96 users, 48 items) are multiples of the world size, so no rank
    pads its shard with a repeated row, and every user and item has training ratings."""
    rng = np.random.default_rng(seed)
    affinity = rng.normal(size=(n_users, 3)) @ rng.normal(size=(3, n_items))
    rated = rng.random((n_users, n_items)) < 0.45
    rating = np.clip(np.round(3 + affinity), 1, 5).astype(np.float32)
    part = rng.choice(3, size=(n_users, n_items), p=[0.7, 0.1, 0.2])
    users, items = Vocabulary(np.arange(n_users) + 1), Vocabulary(np.arange(n_items) + 1001)

    def interactions(which: int) -> Interactions:
        u, i = np.nonzero(rated & (part == which))
        return Interactions.from_frame(pd.DataFrame({"user": u, "item": i,
                                                     "rating": rating[u, i]}), users, items)

    train = interactions(0)
    assert (np.diff(train.matrix.indptr) > 0).all()
    assert (np.bincount(train.matrix.indices, minlength=n_items) > 0).all()
    parts = {"train": train, "valid": interactions(1), "test": interactions(2)}
    return Dataset(parts, {"implicit": False, "rating_scale": [1.0, 5.0], "dataset": "taste"})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "data"
    ratings_dataset().save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", **(extra_env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [str(TORCHRUN), f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "recsys.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def train_both(model: str, data: Path, tmp: Path, options: list[str],
               ddp_tracking: list[str] | None = None) -> tuple[Path, Path]:
    """The same config trained in one process and under torchrun; the two run directories."""
    single, ddp = tmp / f"{model}-single", tmp / f"{model}-ddp"
    args = ["train", model, "--data", str(data), *options]
    assert main([*args, "--no-track", "--out", str(single)]) == 0
    done = torchrun([*args, *(ddp_tracking or ["--no-track"]), "--out", str(ddp)], cwd=tmp)
    assert done.returncode == 0, done.stderr[:4000] + "\n...\n" + done.stderr[-2000:]
    return single, ddp


def history(run: Path) -> list[dict[str, float]]:
    payload = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    return [{k: v for k, v in r.items() if k != "seconds"} for r in payload["history"]]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model" / "weights.pt", weights_only=True)


def metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("model", sorted(MODELS))
def test_ddp_matches_one_process_on_the_global_batch(model, data_dir, tmp_path):
    single, ddp = train_both(model, data_dir, tmp_path, [*COMMON, *MODELS[model]])
    one, two = history(single), history(ddp)
    assert [r["epoch"] for r in two] == [1, 2, 3]
    assert one[0].keys() == two[0].keys()
    for a, b in zip(one, two, strict=True):
        for key in a:
            # Other step outputs are means of the ranks' half-batch values: equal for linear
            # statistics (Mult-DAE's nll, l2), close for others (AutoRec's train_rmse, a root).
            exact = key in ("epoch", "loss", "lr") or key.startswith("valid_")
            rel = EXACT_RTOL if exact else 1e-2
            assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-9), (key, a, b)
    # The losses do change over the epochs: the comparison is not between two constant runs.
    assert one[-1]["loss"] < one[0]["loss"]
    w1, w2 = weights(single), weights(ddp)
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=EXACT_WEIGHTS_ATOL)
    m1, m2 = metrics(single), metrics(ddp)
    assert m1.keys() == m2.keys()
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=EXACT_RTOL, abs=1e-9), key
    # Rank 0 alone wrote the run: one run record, checkpoints of the last epochs.
    assert json.loads((ddp / "run.json").read_text())["model"] == model
    assert (ddp / "checkpoints" / "epoch-0003.pt").is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_resume_continues_exactly_as_the_uninterrupted_run(data_dir, tmp_path):
    """With dropout on: each rank's noise comes from (seed, epoch, rank), so a run resumed from
    rank 0's checkpoint draws what the uninterrupted run drew, on every rank."""
    args = ["train", "multdae", "--data", str(data_dir), *COMMON, "--set", "dropout=0.5",
            "--set", "hidden_dims=[16]", "--no-track"]
    for extra, out in (([], "full"), (["--set", "epochs=2"], "resumed"), (["--resume"], "resumed")):
        done = torchrun([*args, *extra, "--out", str(tmp_path / out)], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[:4000] + "\n...\n" + done.stderr[-2000:]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert history(resumed) == history(full)
    w1, w2 = weights(full), weights(resumed)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> Path:
    """ml-latest-small (embedded), 3.5+ stars as positives, items with >= 10 of them."""
    path = tmp_path_factory.mktemp("ml") / "data"
    assert main(["prepare", "ml-latest-small", "--implicit-threshold", "3.5",
                 "--min-item-interactions", "10", "--valid-fraction", "0.1", "--seed", "0",
                 "--quiet", "--out", str(path)]) == 0
    return path


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.realdata
def test_ddp_multvae_matches_one_process_within_the_noise_and_logs_once(movielens, tmp_path):
    db = tmp_path / "mlflow.db"
    single, ddp = train_both("multvae", movielens, tmp_path, MULTVAE,
                             ddp_tracking=["--tracking-uri", f"sqlite:///{db}",
                                           "--experiment", "ddp"])
    one, two = history(single), history(ddp)
    assert [r["epoch"] for r in two] == [1, 2, 3, 4, 5]
    assert two[-1]["loss"] < two[0]["loss"]
    assert two[-1]["valid_ndcg@100"] == pytest.approx(one[-1]["valid_ndcg@100"],
                                                      abs=MULTVAE_NDCG_TOLERANCE)
    assert metrics(ddp)["ndcg@100"] == pytest.approx(metrics(single)["ndcg@100"],
                                                     abs=MULTVAE_NDCG_TOLERANCE)
    # The runs differ (independent noise per rank), so the comparison above is not vacuous.
    assert two[-1]["loss"] != one[-1]["loss"]
    # One MLflow run (rank 0's), each epoch's metrics logged once, and its model logged.
    with sqlite3.connect(db) as con:
        runs = con.execute("select run_uuid, status from runs").fetchall()
        steps = con.execute("select step from metrics where key = 'train/multvae/loss' "
                            "order by step").fetchall()
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    assert [s for (s,) in steps] == [1, 2, 3, 4, 5]
    record = json.loads((ddp / "run.json").read_text())
    assert record["mlflow"]["run_id"] == runs[0][0] and record["mlflow"]["model_uri"]


# -- no process group needed ---------------------------------------------------------------------


def test_torchrun_environment_is_recognised():
    assert launched_by_torchrun({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert not launched_by_torchrun({"RANK": "1"})
    assert not launched_by_torchrun({})


def test_ranks_draw_independent_noise_streams():
    seeds = {epoch_seed(7, epoch, rank) for epoch in (1, 2) for rank in (0, 1)}
    assert len(seeds) == 4
    assert epoch_seed(7, 1, 0) == epoch_seed(7, 1, 0)


@pytest.mark.parametrize(("model", "extra", "says"), [
    ("recvae", [], "'recvae' steps its own optimisers"),
    ("cfgan", [], "'cfgan' steps its own optimisers"),
    ("ease", [], "'ease' is not a neural model"),
    ("multvae", ["--tune"], "--tune is not distributed"),
])
def test_what_cannot_train_data_parallel_is_refused_once(model, extra, says, data_dir, tmp_path,
                                                         monkeypatch, capsys):
    args = ["train", model, "--data", str(data_dir), "--out", str(tmp_path / "run"),
            "--no-track", *extra]
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", rank)
        if rank == "0":
            assert main(args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]
        else:  # the other ranks stop with the same code and print nothing
            with pytest.raises(SystemExit) as stop:
                main(args)
            assert stop.value.code == 2
            assert capsys.readouterr().err == ""
    assert not (tmp_path / "run").exists()

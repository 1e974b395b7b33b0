"""kill -9 in the middle of `recsys train` and of `recsys recommend`, then `--resume`: the result
equals an uninterrupted run (CPU, fixed seed), and while the process runs (and after it dies) no
file under a final name is ever incomplete or corrupt.

The kill point is deterministic but not a round number: the first poll that sees a committed
checkpoint (train) or chunk (recommend) at or past a threshold drawn from a fixed hash. Every poll
checks the files under their final names: committed checkpoints must match the SHA-256 in their
metadata, JSON must parse, committed chunks must be whole, the final output must not exist until
it is complete. All three runs of each test (reference, killed, resumed) are real processes with
the same environment (one thread per library, so reductions are identical)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from recsys.data.interactions import Dataset
from reliability.helpers import (
    cli,
    recsys_command,
    run_process,
    subprocess_env,
    write_ratings,
)

pytestmark = pytest.mark.slow

POLL_SECONDS = 0.005
DEADLINE_SECONDS = 300


def _threshold(name: str, low: int, high: int) -> int:
    """A fixed, arbitrary kill point in [low, high)."""
    return low + zlib.crc32(name.encode()) % (high - low)


def _kill_when(argv: list, ready: Callable[[], bool], check: Callable[[], None],
               log: Path) -> int:
    """Start `recsys ARGV`, run ``check`` at every poll, kill -9 once ``ready()``; the exit
    status (negative: killed)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([*recsys_command(), *map(str, argv)], stdout=out,
                                stderr=subprocess.STDOUT, env=subprocess_env())
        deadline = time.monotonic() + DEADLINE_SECONDS
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                check()
                if ready():
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(POLL_SECONDS)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    check()
    return code


@pytest.fixture(scope="module")
def bigger(tmp_path_factory) -> Path:
    """600 users x 300 items: epochs and chunks slow enough to be caught in the middle."""
    root = tmp_path_factory.mktemp("kill")
    ratings = write_ratings(root / "ratings.csv", n_users=600, n_items=300, per_user=25, seed=1)
    result = run_process(["prepare", "--input", ratings, "--implicit-threshold", "4",
                          "--out", root / "data", "--quiet"], timeout=120)
    assert result.code == 0, result.err
    return root / "data"


# -- train ---------------------------------------------------------------------------------------

class CheckpointWatch:
    """Validates a run directory's final-name files as training writes them."""

    def __init__(self, run: Path, folder: str = "checkpoints") -> None:
        self.run = run
        self.folder = folder  # the first fit's, or a refit's (checkpoints/refit-NNNN)
        self.verified: set[tuple[str, str]] = set()
        self.committed: set[int] = set()

    def __call__(self) -> None:
        folder = self.run / self.folder
        for side in sorted(folder.glob("epoch-*.json")) if folder.is_dir() else []:
            try:
                meta = json.loads(side.read_text())  # never a half-written sidecar
                payload = side.with_suffix(".pt").read_bytes()
            except FileNotFoundError:
                continue  # pruned between listing and reading
            key = (side.name, meta["sha256"])
            if key not in self.verified:
                assert hashlib.sha256(payload).hexdigest() == meta["sha256"], side
                assert len(payload) == meta["bytes"]
                self.verified.add(key)
            self.committed.add(int(meta["epoch"]))
        for name in ("run.json", "metrics.json", "model/model.json"):
            path = self.run / name
            if path.exists():
                try:
                    json.loads(path.read_text())
                except FileNotFoundError:
                    pass

    def final(self) -> None:
        """After the process is gone: every payload under a final name loads (committed or not)
        and every committed one matches its digest."""
        self()
        for pt in (self.run / self.folder).glob("epoch-*.pt"):
            torch.load(pt, map_location="cpu", weights_only=True)
        weights = self.run / "model" / "weights.pt"
        if weights.exists():
            torch.load(weights, map_location="cpu", weights_only=True)


def test_kill_9_during_train_then_resume_equals_an_uninterrupted_run(bigger, tmp_path):
    epochs = 40
    args = ["--data", bigger, "--set", f"epochs={epochs}", "--set", "checkpoint_every=1",
            "--set", "patience=null", "--set", "batch_size=32", "--seed", "5",
            "--device", "cpu", "--no-track", "--quiet"]
    reference = tmp_path / "reference"
    result = run_process(["train", "multdae", *args, "--out", reference])
    assert result.code == 0, result.err

    run = tmp_path / "run"
    watch = CheckpointWatch(run)
    kill_at = _threshold("train", 3, 12)
    code = _kill_when(["train", "multdae", *args, "--out", run],
                      ready=lambda: any(e >= kill_at for e in watch.committed), check=watch,
                      log=tmp_path / "killed.log")
    assert code == -signal.SIGKILL, f"not killed (exit {code}): training ended before epoch " \
                                    f"{kill_at}; raise `epochs`"
    watch.final()
    assert not (run / "metrics.json").exists() and max(watch.committed) < epochs

    result = run_process(["train", "multdae", *args, "--out", run, "--resume"])
    assert result.code == 0, result.err
    watch.final()
    _assert_same_outcome(run, reference)
    record = json.loads((run / "run.json").read_text())
    assert record["metrics"] == json.loads((reference / "run.json").read_text())["metrics"]


def test_kill_9_during_the_refit_then_resume_equals_an_uninterrupted_run(bigger, tmp_path):
    """The refit on train + valid (recsys.training.refit) has checkpoints of its own: killed in
    the middle of it, the resume restores the finished first fit, continues the refit from its
    last checkpoint and ends where an uninterrupted run ends."""
    epochs = 12  # validated only at the last epoch: the refit trains all 12 again
    args = ["--data", bigger, "--set", f"epochs={epochs}", "--set", f"eval_every={epochs}",
            "--set", "checkpoint_every=1", "--set", "patience=null", "--set", "batch_size=32",
            "--seed", "5", "--device", "cpu", "--no-track", "--quiet"]
    reference = tmp_path / "reference"
    result = run_process(["train", "multdae", *args, "--out", reference])
    assert result.code == 0, result.err
    assert json.loads((reference / "run.json").read_text())["refit"]["epochs"] == epochs

    run = tmp_path / "run"
    first, refit = CheckpointWatch(run), CheckpointWatch(run, f"checkpoints/refit-{epochs:04d}")

    def check() -> None:
        first()
        refit()

    kill_at = _threshold("refit", 2, 9)
    code = _kill_when(["train", "multdae", *args, "--out", run],
                      ready=lambda: any(e >= kill_at for e in refit.committed), check=check,
                      log=tmp_path / "killed.log")
    assert code == -signal.SIGKILL, f"not killed (exit {code}): the refit ended before epoch " \
                                    f"{kill_at}; raise `epochs`"
    first.final()
    refit.final()
    assert max(first.committed) == epochs and max(refit.committed) < epochs
    assert not (run / "run.json").exists()  # written once the refit is done

    result = run_process(["train", "multdae", *args, "--out", run, "--resume"])
    assert result.code == 0, result.err
    _assert_same_outcome(run, reference)


def _assert_same_outcome(run: Path, reference: Path) -> None:
    """The resumed run ends where the uninterrupted one did: same test metrics, same weights."""
    assert (run / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    mine = torch.load(run / "model" / "weights.pt", weights_only=True)
    theirs = torch.load(reference / "model" / "weights.pt", weights_only=True)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


# -- recommend ---------------------------------------------------------------------------------

class ChunkWatch:
    """Validates the output and the committed chunks of `recsys recommend` as they appear."""

    def __init__(self, out: Path, rows_per_chunk: int, reference: bytes) -> None:
        self.out = out
        self.parts = out.parent / f".{out.name}.partial"
        self.rows = rows_per_chunk
        self.reference = reference
        self.done = 0
        self.seen: set[str] = set()

    def __call__(self) -> None:
        if self.out.exists():  # only ever the complete file
            assert self.out.read_bytes() == self.reference
        progress = self.parts / "progress.json"
        try:
            state = json.loads(progress.read_text())
        except FileNotFoundError:
            return
        self.done = max(self.done, int(state["done"]))
        for i in range(int(state["done"])):  # every committed chunk is there, and whole
            part = next(self.parts.glob(f"part-{i:06d}.*"), None)
            if part is None:
                assert self.out.exists(), f"chunk {i} committed but missing"
                return
            if part.name in self.seen:
                continue
            try:
                if part.suffix == ".csv":
                    rows = part.read_bytes().count(b"\n")
                else:
                    rows = pq.read_metadata(part).num_rows
            except FileNotFoundError:
                return  # the finished run removed the parts folder meanwhile
            assert rows == self.rows, f"{part.name}: {rows} rows, expected {self.rows}"
            self.seen.add(part.name)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_kill_9_during_recommend_then_resume_is_byte_identical(bigger, tmp_path, capsys,
                                                               suffix):
    run = tmp_path / "ease"
    result = cli(["train", "ease", "--data", bigger, "--out", run, "--no-track", "--quiet"],
                 capsys)
    assert result.code == 0, result.err
    n_users = len(Dataset.load(bigger).users)
    chunk, k = 2, 10
    assert n_users % chunk == 0
    args = ["recommend", run, "--data", bigger, "--k", k, "--chunk-size", chunk,
            "--device", "cpu"]

    reference = tmp_path / f"reference{suffix}"
    result = run_process([*args, "--out", reference])
    assert result.code == 0, result.err

    out = tmp_path / "lists" / f"top{suffix}"
    out.parent.mkdir()
    watch = ChunkWatch(out, chunk * k, reference.read_bytes())
    kill_at = _threshold(f"recommend{suffix}", 20, 120)
    code = _kill_when([*args, "--out", out], ready=lambda: watch.done >= kill_at, check=watch,
                      log=tmp_path / "killed.log")
    assert code == -signal.SIGKILL, f"not killed (exit {code}): all chunks were written first"
    assert not out.exists() and watch.done < n_users // chunk

    result = run_process([*args, "--out", out, "--resume"])
    assert result.code == 0, result.err
    assert out.read_bytes() == reference.read_bytes()
    # The hidden parts folder and any temporary are gone: only the output remains.
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]

"""A damaged checkpoint is detected by the SHA-256 in its metadata and refused with one line on
`recsys train --resume` (exit 2), leaving the run as it was; an uncommitted one (no metadata) is
skipped and training resumes, exactly, from the checkpoint before it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reliability.helpers import assert_one_line_error, cli, run_process, snapshot


@pytest.fixture(autouse=True)
def one_thread():
    # The shared run was trained on one thread; equal numbers need equal reductions.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _copy(neural_run, tmp_path: Path) -> tuple[Path, Path]:
    run = Path(shutil.copytree(neural_run.run, tmp_path / "run"))
    return run, max((run / "checkpoints").glob("epoch-*.pt"))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garble_sidecar(path: Path) -> None:
    path.with_suffix(".json").write_text('{"sha256": ')


def _wrong_digest(path: Path) -> None:
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "sha256": "0" * 64}))


@pytest.mark.parametrize("damage, expected", [
    pytest.param(_flip, "checkpoint is corrupted (SHA-256", id="flipped-bytes"),
    pytest.param(_truncate, "checkpoint is corrupted (SHA-256", id="truncated"),
    pytest.param(_wrong_digest, "checkpoint is corrupted (SHA-256", id="digest-mismatch"),
    pytest.param(_garble_sidecar, "unreadable checkpoint metadata", id="garbled-metadata"),
])
def test_damaged_checkpoint_is_refused_on_resume(neural_run, tmp_path, capsys,
                                                 damage: Callable[[Path], None], expected: str):
    run, latest = _copy(neural_run, tmp_path)
    damage(latest)
    before = snapshot(run)
    result = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--resume",
                  *neural_run.args], capsys)
    assert_one_line_error(result, expected)
    assert latest.stem in result.err  # names the checkpoint to delete
    assert snapshot(run) == before  # nothing rewritten, nothing added


def test_uncommitted_checkpoint_is_skipped_and_resume_is_exact(neural_run, tmp_path, capsys):
    # A kill between the payload and its metadata leaves a payload without a sidecar: it is
    # ignored, training resumes from the epoch before and ends exactly where the run ended.
    run, latest = _copy(neural_run, tmp_path)
    latest.with_suffix(".json").unlink()
    (run / "metrics.json").unlink()
    result = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--resume",
                  *neural_run.args], capsys)
    assert result.code == 0, result.err
    assert (run / "metrics.json").read_text() == (neural_run.run / "metrics.json").read_text()
    mine = torch.load(run / "model" / "weights.pt", weights_only=True)
    theirs = torch.load(neural_run.run / "model" / "weights.pt", weights_only=True)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.slow
def test_flipped_bytes_through_a_real_process(neural_run, tmp_path):
    run, latest = _copy(neural_run, tmp_path)
    _flip(latest)
    before = snapshot(run)
    result = run_process(["train", "multdae", "--data", neural_run.data, "--out", run,
                          "--resume", *neural_run.args], timeout=120)
    assert_one_line_error(result, "checkpoint is corrupted")
    assert snapshot(run) == before


@pytest.mark.parametrize("change, expected", [
    pytest.param(["--set", "dropout=0.3"], "config key 'dropout' was 0.5", id="other-config"),
    pytest.param(["--seed", "1"], "config key 'seed' was 0", id="other-seed"),
])
def test_resume_with_other_settings_is_refused(neural_run, tmp_path, capsys, change, expected):
    run, _ = _copy(neural_run, tmp_path)
    before = snapshot(run)
    result = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--resume",
                  *neural_run.args, *change], capsys)
    assert_one_line_error(result, expected)
    assert snapshot(run) == before


def test_resume_on_other_data_is_refused(neural_run, world, tmp_path, capsys):
    run, _ = _copy(neural_run, tmp_path)
    before = snapshot(run)
    result = cli(["train", "multdae", "--data", world.data_x, "--out", run, "--resume",
                  *neural_run.args], capsys)
    assert_one_line_error(result, "resume with the same prepared data")
    assert snapshot(run) == before

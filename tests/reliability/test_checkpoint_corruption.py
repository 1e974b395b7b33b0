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

from recsys.training.checkpoint import clean_leftovers, latest_checkpoint, save_checkpoint
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
    # The other way out is one `train` accepts: a run directory is refused without --resume
    # unless --overwrite is given.
    assert "pass --overwrite instead of --resume" in result.err
    assert "without --resume" not in result.err
    assert snapshot(run) == before  # nothing rewritten, nothing added


def test_the_advice_to_start_over_works(neural_run, tmp_path, capsys):
    run, latest = _copy(neural_run, tmp_path)
    _flip(latest)
    refused = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--resume",
                   *neural_run.args], capsys)
    assert refused.code == 2
    result = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--overwrite",
                  *neural_run.args], capsys)
    assert result.code == 0, result.err
    # A fresh run with the same seed: the run the damaged one was a copy of.
    assert (run / "metrics.json").read_text() == (neural_run.run / "metrics.json").read_text()


def _committed(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_pruning_removes_the_payload_first_so_a_kill_leaves_nothing_for_good(tmp_path,
                                                                            monkeypatch):
    folder = tmp_path / "checkpoints"
    for epoch in (1, 2):
        save_checkpoint(folder, {"w": torch.full((3,), float(epoch))}, epoch, keep=2)
    # Killed between the two deletions of pruning epoch 1 (the second unlink never happens).
    real_unlink, calls = Path.unlink, []

    def killed_after_one(self: Path, missing_ok: bool = False) -> None:
        calls.append(self.name)
        if len(calls) > 1:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after it runs
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, {"w": torch.full((3,), 3.0)}, 3, keep=2)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert calls[0] == "epoch-0001.pt"  # the payload went first
    # What is left is a sidecar without a payload: still listed, so the next pruning takes it.
    assert "epoch-0001.json" in _committed(folder) and "epoch-0001.pt" not in _committed(folder)
    save_checkpoint(folder, {"w": torch.full((3,), 4.0)}, 4, keep=2)
    assert _committed(folder) == ["epoch-0003.json", "epoch-0003.pt", "epoch-0004.json",
                                  "epoch-0004.pt"]


def test_resume_clears_what_a_killed_process_left(neural_run, tmp_path, capsys):
    run, latest = _copy(neural_run, tmp_path)
    folder = latest.parent
    # A payload written before its sidecar (the kill came in between), one left by an old-style
    # half-pruning, and the temporaries of writes cut short.
    latest.with_suffix(".json").unlink()
    (folder / "epoch-0001.pt").write_bytes(latest.read_bytes())
    (folder / f".{latest.name}.k2j4ab.tmp").write_bytes(latest.read_bytes()[:100])
    (folder / ".epoch-0002.json.x81ncq.tmp").write_text('{"sha2')
    (run / "metrics.json").unlink()
    result = cli(["train", "multdae", "--data", neural_run.data, "--out", run, "--resume",
                  *neural_run.args], capsys)
    assert result.code == 0, result.err
    assert _committed(folder) == _committed(neural_run.run / "checkpoints")
    assert (run / "metrics.json").read_text() == (neural_run.run / "metrics.json").read_text()


def test_leftover_cleaning_spares_committed_checkpoints_and_other_files(tmp_path):
    folder = tmp_path / "checkpoints"
    for epoch in (1, 2):
        save_checkpoint(folder, {"w": torch.zeros(2)}, epoch, keep=2)
    (folder / "epoch-0003.pt").write_bytes(b"uncommitted")
    (folder / ".epoch-0004.pt.abc.tmp").write_bytes(b"partial")
    (folder / "notes.txt").write_text("mine")
    assert [p.name for p in clean_leftovers(folder)] == [".epoch-0004.pt.abc.tmp",
                                                         "epoch-0003.pt"]
    assert _committed(folder) == ["epoch-0001.json", "epoch-0001.pt", "epoch-0002.json",
                                  "epoch-0002.pt", "notes.txt"]
    assert latest_checkpoint(folder) == folder / "epoch-0002.pt"


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

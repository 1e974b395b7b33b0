"""A few bad inputs through a real `recsys` process: the exit status and stderr a shell sees
(no traceback even where the error comes from deep inside a library), and no leftovers."""

from __future__ import annotations

import pytest

from reliability.helpers import assert_one_line_error, run_process, snapshot

pytestmark = pytest.mark.slow  # five interpreter starts with torch: ~20 s on a shared box


@pytest.mark.parametrize("argv, expected", [
    pytest.param(lambda w, t: ["prepare", "--input", _write(t / "r.csv", b"user,item\n1,\xff\n"),
                               "--out", t / "out"], "bytes that are not UTF-8", id="prepare"),
    pytest.param(lambda w, t: ["train", "multdae", "--data", w.data, "--out", t / "out",
                               "--set", "epoch=3", "--no-track"], "unknown key 'epoch'",
                 id="train"),
    pytest.param(lambda w, t: ["evaluate", t, "--data", w.data], "is not a run directory",
                 id="evaluate"),
    pytest.param(lambda w, t: ["recommend", w.run_ease, "--data", w.data, "--k", "100000",
                               "--out", t / "out.csv"], "is larger than the catalogue",
                 id="recommend"),
])
def test_real_process_exit_2_one_line(world, tmp_path, argv, expected):
    args = argv(world, tmp_path)
    before, world_before = snapshot(tmp_path), snapshot(world.root)
    result = run_process(args, timeout=120)
    assert_one_line_error(result, expected)
    assert result.err.startswith("error: ")
    assert snapshot(tmp_path) == before and snapshot(world.root) == world_before


def test_debug_flag_shows_the_traceback(world, tmp_path):
    result = run_process(["--debug", "evaluate", tmp_path, "--data", world.data], timeout=120)
    assert result.code != 0 and "Traceback" in result.err and "RecsysError" in result.err


def _write(path, data: bytes):
    path.write_bytes(data)
    return path

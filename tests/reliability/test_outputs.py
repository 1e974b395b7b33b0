"""Outputs: recsys never loses a user's files and never mixes two runs' outputs.

- Every command's output (prepare, train, recommend, predict, evaluate --json/--per-user,
  compare) under a read-only folder, given as a symbolic link, and where something recsys did not
  write already lies: exit 2, one line naming the output, and the place exactly as it was.
  Each command replaces its own earlier output, and leaves no lock or temporary beside it.
- Replacing a prepared dataset swaps folders: a rename that fails at any step keeps the old
  dataset whole under its name; temporaries of killed runs are removed by the next write.
- Two real `recsys` processes on one output: the second gets one line naming the first's pid,
  the first finishes with only its own output.
- A full disk (a small tmpfs, needs root): one line, and nothing left on the disk.
- `recommend --resume` reports the rows of the finished file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pytest

from recsys.data import io
from recsys.data.interactions import Dataset
from recsys.scoring import export
from reliability.conftest import World
from reliability.helpers import (
    assert_one_line_error,
    cli,
    names,
    recsys_command,
    snapshot,
    subprocess_env,
)

PAGE = 4096


# -- the outputs of every command --------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One command's output: how to run the command writing ``out``, whether ``out`` is a
    folder, what a user's own thing at ``out`` looks like, and the words refusing it."""

    id: str
    argv: Callable[[World, Path, Path], list[Any]]  # (world, scratch folder, out)
    suffix: str  # of a file output; "" for a folder
    foreign: Callable[[Path], None]
    refusal: str

    @property
    def folder(self) -> bool:
        return not self.suffix


def _file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(out: Path) -> None:
    """The issue's case: a user's folder with a metadata.json and code beside it."""
    _file(out / "metadata.json", "{}")
    _file(out / "src" / "code.py", "x = 1\n")


def _user_model_folder(out: Path) -> None:  # names that `train --overwrite` removes in a run
    _file(out / "config.yaml", "mine: true\n")
    _file(out / "model" / "weights.pt", "my weights")


def _evaluate_run(world: World, tmp: Path) -> Path:
    """A copy of the EASE run: a successful evaluate writes into its run directory."""
    run = tmp / "run_ease"
    if not run.exists():
        shutil.copytree(world.run_ease, run)
    return run


def _pairs(tmp: Path, n: int = 2) -> Path:
    path = tmp / "pairs.csv"
    if not path.exists():
        rows = "".join(f"{1 + i % 60},{101 + i % 40}\n" for i in range(n))
        _file(path, "user,item\n" + rows)
    return path


def _compare_file(world: World, tmp: Path) -> Path:
    path = tmp / "compare.yaml"
    _file(path, f"data: {world.data}\nmetrics: [ndcg@10]\nmodels:\n  - model: pop\n")
    return path


OUTPUTS = [
    Output("prepare", lambda w, t, out: ["prepare", "--input", w.ratings, "--out", out,
                                         "--quiet"],
           "", _project, "exists and is not a prepared dataset"),
    Output("train", lambda w, t, out: ["train", "pop", "--data", w.data, "--out", out,
                                       "--overwrite", "--no-track", "--quiet"],
           "", _user_model_folder, "is not empty and holds no run"),
    Output("recommend", lambda w, t, out: ["recommend", w.run_ease, "--data", w.data, "--k", 5,
                                           "--out", out, "--device", "cpu", "--quiet"],
           ".csv", lambda out: _file(out, "user,item,rating\n1,101,5\n"),
           "exists and is not a list file"),
    Output("predict", lambda w, t, out: ["predict", w.run_autorec, "--pairs", _pairs(t),
                                         "--data", w.data_x, "--out", out, "--quiet"],
           ".csv", lambda out: _file(out, "keep me\n"), "exists and is not a prediction file"),
    Output("evaluate-json", lambda w, t, out: ["evaluate", _evaluate_run(w, t), "--data", w.data,
                                               "--device", "cpu", "--no-ci", "--json", out,
                                               "--quiet"],
           ".json", lambda out: _file(out, '{"name": "my settings", "tags": ["a"]}\n'),
           "exists and is not a metrics file"),
    Output("evaluate-per-user", lambda w, t, out: ["evaluate", _evaluate_run(w, t), "--data",
                                                   w.data, "--device", "cpu", "--no-ci",
                                                   "--per-user", out, "--quiet"],
           ".csv", lambda out: _file(out, "user,item,rating\n1,101,5\n"),
           "exists and is not a per-user table"),
    Output("compare", lambda w, t, out: ["compare", _compare_file(w, t), "--out", out,
                                         "--no-track", "--quiet"],
           "", lambda out: _file(out / "notes.txt", "mine"),
           "exists and is not a comparison folder"),
]
BY_ID = {o.id: o for o in OUTPUTS}


def _run_mount(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder nothing can be written into. Root ignores permissions, so as root it is a
    read-only bind mount; otherwise a folder without write permission."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if shutil.which("mount") is None:
            pytest.skip("running as root, where permissions do not stop writes, and no `mount` "
                        "command to make a read-only bind mount")
        bound = _run_mount("--bind", ro, ro)
        if bound.returncode:
            pytest.skip(f"running as root and cannot bind-mount read-only ({bound.stderr.strip()})")
        try:
            remounted = _run_mount("-o", "remount,bind,ro", ro)
            if remounted.returncode or _writable(ro):
                pytest.skip("running as root and cannot remount a bind mount read-only "
                            f"({remounted.stderr.strip()})")
            yield ro
        finally:
            _umount(ro)
    else:
        ro.chmod(0o555)
        try:
            if _writable(ro):
                pytest.skip("a folder without write permission is still writable here")
            yield ro
        finally:
            ro.chmod(0o755)


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: o.id)
def test_output_in_a_read_only_folder_is_one_line_and_writes_nothing(output, readonly_dir,
                                                                      tmp_path, world, capsys):
    out = readonly_dir / f"out{output.suffix}"
    argv = output.argv(world, tmp_path, out)
    before = snapshot(tmp_path), names(tmp_path)
    result = cli(argv, capsys)
    assert_one_line_error(result, str(out))
    assert re.search(r"read-only file system|permission denied", result.err), result.err
    assert (snapshot(tmp_path), names(tmp_path)) == before
    assert not os.listdir(readonly_dir)


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: o.id)
def test_output_given_as_a_symlink_is_refused(output, tmp_path, world, capsys):
    target = tmp_path / f"real{output.suffix}"
    if output.folder:
        target.mkdir()
    else:
        _file(target, "what the link points to\n")
    out = tmp_path / f"link{output.suffix}"
    out.symlink_to(target)
    argv = output.argv(world, tmp_path, out)
    before = snapshot(tmp_path), names(tmp_path)
    result = cli(argv, capsys)
    assert_one_line_error(result, f"{out} is a symbolic link (to {target})")
    assert (snapshot(tmp_path), names(tmp_path)) == before
    assert out.is_symlink()


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: o.id)
def test_output_that_recsys_did_not_write_is_never_replaced(output, tmp_path, world, capsys):
    out = tmp_path / f"out{output.suffix}"
    output.argv(world, tmp_path, out)  # the command's own inputs first
    output.foreign(out)
    argv = output.argv(world, tmp_path, out)
    before = snapshot(tmp_path), names(tmp_path)
    result = cli(argv, capsys)
    assert_one_line_error(result, output.refusal)
    assert str(out) in result.err
    assert (snapshot(tmp_path), names(tmp_path)) == before


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: o.id)
def test_each_command_replaces_its_own_output_and_leaves_nothing_beside_it(output, tmp_path,
                                                                           world, capsys):
    out = tmp_path / "place" / f"out{output.suffix}"
    out.parent.mkdir()
    argv = output.argv(world, tmp_path, out)
    first = cli(argv, capsys)
    assert first.code == 0, first.err
    second = cli(argv, capsys)
    assert second.code == 0, second.err
    # No lock, no temporary, no partial folder: only the output itself.
    assert os.listdir(out.parent) == [out.name]


def test_an_input_inside_the_output_folder_is_not_deleted(tmp_path, world, capsys):
    out = tmp_path / "data"
    assert cli(["prepare", "--input", world.ratings, "--out", out, "--quiet"], capsys).code == 0
    ratings = out / "ratings.csv"
    shutil.copy(world.ratings, ratings)
    before = snapshot(tmp_path)
    result = cli(["prepare", "--input", ratings, "--out", out, "--quiet"], capsys)
    assert_one_line_error(result, "it holds ratings.csv")
    assert snapshot(tmp_path) == before


def test_a_dataset_written_before_markers_is_replaced_only_when_it_holds_only_its_files(
        tmp_path, world, capsys):
    out = tmp_path / "data"
    shutil.copytree(world.data, out)
    (out / io.MARKER).unlink()  # as recsys wrote datasets before markers
    argv = ["prepare", "--input", world.ratings, "--seed", "1", "--out", out, "--quiet"]
    assert cli(argv, capsys).code == 0
    assert io.read_marker(out)["kind"] == "dataset"
    assert Dataset.load(out).meta["split"]["seed"] == 1

    (out / io.MARKER).unlink()
    _file(out / "notes.txt", "mine")
    before = snapshot(tmp_path)
    assert_one_line_error(cli(argv, capsys), "it holds")
    assert snapshot(tmp_path) == before


def test_an_artifact_of_another_kind_is_not_replaced(tmp_path, world, capsys):
    out = tmp_path / "lists"
    out.mkdir()
    io.write_marker(out, "spark-lists", 1, [])
    before = snapshot(tmp_path)
    result = cli(["prepare", "--input", world.ratings, "--out", out, "--quiet"], capsys)
    assert_one_line_error(result, "is a recsys spark-lists, not a prepared dataset")
    assert snapshot(tmp_path) == before


def test_train_overwrite_removes_only_what_train_writes(tmp_path, world, capsys):
    run = tmp_path / "run"
    argv = ["train", "pop", "--data", world.data, "--out", run, "--no-track", "--quiet"]
    assert cli(argv, capsys).code == 0
    _file(run / "notes.txt", "mine")
    assert cli([*argv, "--overwrite"], capsys).code == 0
    assert (run / "notes.txt").read_text() == "mine"
    # A run.json that is not a run record, beside files of the user's: never a run.
    fake = tmp_path / "fake"
    _file(fake / "run.json", "[1, 2]")
    _user_model_folder(fake)
    before = snapshot(fake)
    result = cli(["train", "pop", "--data", world.data, "--out", fake, "--overwrite",
                  "--no-track", "--quiet"], capsys)
    assert_one_line_error(result, "that recsys did not write")
    assert snapshot(fake) == before


def test_compare_refuses_a_model_folder_that_is_not_a_run(tmp_path, world, capsys):
    out = tmp_path / "cmp"
    config = _compare_file(world, tmp_path)
    assert cli(["compare", config, "--out", out, "--no-track", "--quiet"], capsys).code == 0
    shutil.rmtree(out / "pop")  # the user puts a folder of theirs where the run was
    _file(out / "pop" / "mine.txt", "mine")
    before = snapshot(tmp_path)
    result = cli(["compare", config, "--out", out, "--no-track", "--quiet"], capsys)
    assert_one_line_error(result, "(model 'pop') exists and is not a run")
    assert snapshot(tmp_path) == before


# -- replacing a folder: every step can fail, the old artifact survives -------------------------


@pytest.mark.parametrize("failing", [
    pytest.param({"exchange"}, id="atomic-exchange"),
    pytest.param({1}, id="fallback-rename-old-aside"),
    pytest.param({2}, id="fallback-rename-new-in"),
    pytest.param({2, 3}, id="fallback-rename-new-in-and-old-back"),
])
def test_a_failed_rename_keeps_the_old_dataset(failing, tmp_path, world, capsys, monkeypatch):
    data = tmp_path / "data"
    assert cli(["prepare", "--input", world.ratings, "--seed", "0", "--out", data, "--quiet"],
               capsys).code == 0
    old = snapshot(data)
    aside = tmp_path / ".data.aside"
    real_replace = os.replace
    steps: list[tuple[str, str]] = []

    def replace(src: Any, dst: Any) -> None:
        # Only the renames of the swap count: those that move `data` or its aside name.
        if {Path(src), Path(dst)} & {data, aside}:
            steps.append((Path(src).name, Path(dst).name))
            if len(steps) in failing:
                raise OSError(errno.EACCES, "injected rename failure", str(dst))
        real_replace(src, dst)

    def exchange(a: Path, b: Path) -> bool:
        if "exchange" in failing:
            raise OSError(errno.EACCES, "injected exchange failure", str(b))
        return False  # the other cases test the fallback

    monkeypatch.setattr(io, "_exchange", exchange)
    monkeypatch.setattr(os, "replace", replace)
    result = cli(["prepare", "--input", world.ratings, "--seed", "1", "--out", data, "--quiet"],
                 capsys)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_one_line_error(result, "permission denied")
    if failing == {2, 3}:  # both renames failed: the old dataset waits, whole, aside
        assert not data.exists() and snapshot(aside) == old
        with io.output_lock(data):
            io.clean_stale(data)  # what the next write under the name does first
    assert snapshot(data) == old
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no temporary, no aside left
    # And the next prepare replaces it.
    monkeypatch.undo()
    assert cli(["prepare", "--input", world.ratings, "--seed", "1", "--out", data, "--quiet"],
               capsys).code == 0
    assert Dataset.load(data).meta["split"]["seed"] == 1


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "fallback"])
def test_replacing_swaps_in_the_new_dataset(exchange, tmp_path, world, capsys, monkeypatch):
    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    data = tmp_path / "data"
    for seed in (0, 1):
        assert cli(["prepare", "--input", world.ratings, "--seed", seed, "--out", data,
                    "--quiet"], capsys).code == 0
        assert Dataset.load(data).meta["split"]["seed"] == seed
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_temporaries_of_killed_runs_are_removed_by_the_next_write(tmp_path, world, capsys):
    data = tmp_path / "data"
    assert cli(["prepare", "--input", world.ratings, "--out", data, "--quiet"], capsys).code == 0
    shutil.copytree(data, tmp_path / ".data.k2j4ab9x.tmp")  # killed while writing
    shutil.copytree(data, tmp_path / ".data.aside")  # killed after the swap
    _file(tmp_path / ".data.csv.k2j4ab9x.tmp", "another output's temporary")
    assert cli(["prepare", "--input", world.ratings, "--out", data, "--quiet"], capsys).code == 0
    assert sorted(os.listdir(tmp_path)) == [".data.csv.k2j4ab9x.tmp", "data"]


def test_a_dataset_left_aside_by_a_killed_swap_is_put_back(tmp_path, world, capsys):
    data = tmp_path / "data"
    assert cli(["prepare", "--input", world.ratings, "--out", data, "--quiet"], capsys).code == 0
    old = snapshot(data)
    os.replace(data, tmp_path / ".data.aside")  # killed between the two renames
    with io.output_lock(data):
        io.clean_stale(data)
    assert snapshot(data) == old and sorted(os.listdir(tmp_path)) == ["data"]


# -- one writer at a time: two real processes ---------------------------------------------------


def _start(argv: list[Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([*recsys_command(), *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env())


def _wait_for_lock(proc: subprocess.Popen[str], lock: Path) -> bool:
    """Poll until ``proc`` holds ``lock`` (its pid is in it), then stop it there (SIGSTOP):
    True; False when it finished first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            holder = lock.read_text().split()
        except FileNotFoundError:
            holder = []
        if holder and holder[0] == str(proc.pid):
            proc.send_signal(signal.SIGSTOP)
            if lock.exists() and proc.poll() is None:
                return True
            proc.send_signal(signal.SIGCONT)
            return False
        time.sleep(0.002)
    return False


def _second_writer_is_refused(first: list[Any], second: list[Any], lock: Path, command: str
                              ) -> subprocess.Popen[str]:
    """Run ``first``, hold it while it owns the lock, run ``second`` to its end: it must fail in
    one line naming the first's pid. Returns the (resumed, finished) first process."""
    for _ in range(3):  # the first may finish before it is seen holding the lock: start over
        proc = _start(first)
        if _wait_for_lock(proc, lock):
            break
        proc.communicate(timeout=300)
    else:
        pytest.fail(f"never saw `recsys {command}` holding {lock}")
    try:
        other = subprocess.run([*recsys_command(), *map(str, second)], capture_output=True,
                               text=True, timeout=300, env=subprocess_env())
    finally:
        proc.send_signal(signal.SIGCONT)
    assert other.returncode == 2, other.stderr
    assert other.stderr.count("\n") == 1 and "Traceback" not in other.stderr, other.stderr
    assert f"is being written by another recsys {command} (pid {proc.pid})" in other.stderr
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("k_first, k_second", [(20, 5), (5, 5)])
def test_two_recommend_runs_on_one_output_never_mix(k_first, k_second, tmp_path, world):
    out = tmp_path / "lists.csv"

    def argv(k: int) -> list[Any]:
        return ["recommend", world.run_ease, "--data", world.data, "--k", k, "--out", out,
                "--device", "cpu", "--chunk-size", 7]

    _second_writer_is_refused(argv(k_first), argv(k_second), tmp_path / ".lists.csv.lock",
                              "recommend")
    lists = pacsv.read_csv(out).to_pandas()
    assert set(lists.groupby("user")["rank"].max()) == {k_first}
    assert not lists.duplicated(["user", "rank"]).any()
    assert sorted(os.listdir(tmp_path)) == ["lists.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("output", [BY_ID["prepare"], BY_ID["train"], BY_ID["compare"]],
                         ids=lambda o: o.id)
def test_two_writers_of_one_output_folder_never_mix(output, tmp_path, world):
    out = tmp_path / "out"
    argv = output.argv(world, tmp_path, out)
    _second_writer_is_refused(argv, argv, tmp_path / ".out.lock", argv[0])
    assert ".out.lock" not in os.listdir(tmp_path)


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: a disk that can be filled in a moment."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (mount -t tmpfs)")
    fs = tmp_path / "fs"
    fs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(fs)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"needs root to mount a tmpfs, and mounting failed here "
                    f"({mounted.stderr.strip()})")
    try:
        yield fs
    finally:
        _umount(fs)


def _free(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def _fill(fs: Path, leave: int) -> None:
    """Leave exactly ``leave`` bytes (whole pages) free on ``fs``."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, _free(fs) - leave)
    finally:
        os.close(fd)
    assert _free(fs) == leave


# The free space each command meets: a few pages, so that recommend has committed chunks and
# prepare written files before the disk is full; none for outputs smaller than a page.
FULL = [("prepare", 2 * PAGE), ("recommend", 4 * PAGE), ("predict", PAGE),
        ("evaluate-json", 0), ("evaluate-per-user", 0)]


@pytest.mark.parametrize("command, leave", FULL, ids=[c for c, _ in FULL])
def test_a_full_disk_is_one_line_and_leaves_nothing_on_it(command, leave, small_tmpfs,
                                                          tmp_path, world, capsys):
    output = BY_ID[command]
    out = small_tmpfs / f"out{output.suffix}"
    argv = output.argv(world, tmp_path, out)
    if command == "recommend":
        argv = [*argv, "--k", 20, "--chunk-size", 5]  # 12 chunks of a page or so each
    if command == "predict":
        argv[argv.index("--pairs") + 1] = _pairs(tmp_path / "many", n=5000)  # ~100 KB out
    _fill(small_tmpfs, leave)
    result = cli(argv, capsys)
    assert_one_line_error(result, f"{out}: no space left on the device")
    if command == "recommend":
        assert "the partial output was removed" in result.err
    assert os.listdir(small_tmpfs) == ["filler"]  # no output, temporary, partial or lock
    assert _free(small_tmpfs) == leave


def test_recommend_removes_its_partial_output_when_the_disk_fills_mid_run(tmp_path, world,
                                                                          capsys, monkeypatch):
    """The same on any machine: the disk fills while the fourth chunk is written, after three
    were committed to the partial folder."""
    out = tmp_path / "lists.csv"
    partial = tmp_path / ".lists.csv.partial"
    seen: list[list[str]] = []
    real_write = export.ChunkedWriter.write

    def write(self: export.ChunkedWriter, index: int, table: Any) -> None:
        if index == 3:
            seen.append(sorted(os.listdir(partial)))
            with io.atomic_path(self._part(index)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, index, table)

    monkeypatch.setattr(export.ChunkedWriter, "write", write)
    result = cli(["recommend", world.run_ease, "--data", world.data, "--k", 5, "--out", out,
                  "--device", "cpu", "--chunk-size", 5], capsys)
    assert_one_line_error(result, f"--out {out}: no space left on the device")
    assert seen == [["part-000000.csv", "part-000001.csv", "part-000002.csv", "progress.json"]]
    assert os.listdir(tmp_path) == []


# -- recommend --resume counts the rows of the finished file ---------------------------------------


@pytest.mark.parametrize("recorded", [True, False], ids=["progress-rows", "counted-from-parts"])
def test_resume_reports_the_rows_of_the_finished_file(recorded, tmp_path, world, capsys,
                                                      monkeypatch):
    out = tmp_path / "lists.csv"
    argv = ["recommend", world.run_ease, "--data", world.data, "--k", 5, "--out", out,
            "--device", "cpu", "--chunk-size", 7]
    real_write = export.ChunkedWriter.write

    def killed_after_five_chunks(self: export.ChunkedWriter, index: int, table: Any) -> None:
        if index == 5:
            raise KeyboardInterrupt
        real_write(self, index, table)

    monkeypatch.setattr(export.ChunkedWriter, "write", killed_after_five_chunks)
    assert cli(argv, capsys).code == 130
    monkeypatch.undo()
    progress = tmp_path / ".lists.csv.partial" / "progress.json"
    if not recorded:  # a partial folder written before rows were recorded
        state = json.loads(progress.read_text())
        del state["rows"]
        progress.write_text(json.dumps(state))
    result = cli([*argv, "--resume"], capsys)
    assert result.code == 0, result.err
    rows = pacsv.read_csv(out).num_rows
    assert rows == 5 * len(Dataset.load(world.data).users)
    assert f"{rows} rows" in result.err


# -- the Spark engine's output folder (without starting Spark) ----------------------------------


class _FakeLists:
    """What `write_lists` calls on a DataFrame: ``.write.mode(m).parquet(uri)``, here writing
    the files Spark's Parquet writer leaves."""

    def __init__(self, rows: str) -> None:
        self.rows = rows
        self.write = self

    def mode(self, mode: str) -> _FakeLists:
        return self

    def parquet(self, uri: str) -> None:
        folder = Path(uri.removeprefix("file://"))
        folder.mkdir(exist_ok=True)
        (folder / "part-00000-abc.snappy.parquet").write_text(self.rows)
        (folder / "_SUCCESS").write_text("")


def test_spark_lists_replace_only_a_lists_dataset(tmp_path):
    from types import SimpleNamespace

    from recsys.errors import RecsysError
    from recsys.scoring.spark import write_lists

    spark = SimpleNamespace(sparkContext=SimpleNamespace(master="local[2]"))
    out = tmp_path / "lists"
    for rows in ("first", "second"):  # its own output, replaced
        write_lists(spark, _FakeLists(rows), str(out))
        assert (out / "part-00000-abc.snappy.parquet").read_text() == rows
    assert io.read_marker(out)["kind"] == "spark-lists"
    assert sorted(os.listdir(tmp_path)) == ["lists"]

    (out / io.MARKER).unlink()  # as written before markers: Spark's files only, replaced
    write_lists(spark, _FakeLists("third"), str(out))
    assert (out / "part-00000-abc.snappy.parquet").read_text() == "third"

    mine = tmp_path / "mine"
    _file(mine / "report.docx", "mine")
    with pytest.raises(RecsysError, match="exists and is not a Spark lists dataset"):
        write_lists(spark, _FakeLists("x"), str(mine))
    assert os.listdir(mine) == ["report.docx"]

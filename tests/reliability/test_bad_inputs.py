"""Bad input to every command: exit code 2, one line on stderr naming what is wrong, no traceback,
and nothing left behind (no output, no temporary, no change to the inputs).

Each case builds its inputs in a fresh folder (tiny files, or a copy of a run it damages), then
runs `recsys` in this process (fast; `tests/reliability/test_bad_inputs_process.py` repeats a few
as real processes). The folder must be byte-for-byte what the case built, the shared `world`
(prepared data and trained runs) untouched, and the would-be output absent.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from reliability.conftest import World
from reliability.helpers import assert_one_line_error, cli, snapshot

HEADER = "user,item,rating,timestamp\n"
# 20 users x up to 15 items, every user with several ratings: a file `prepare` accepts.
GOOD = "".join(f"{u},{i},{(u + i) % 5 + 1},{u * 100 + i}\n"
               for u in range(1, 21) for i in range(1, 16) if (u * i) % 3)


@dataclass
class Ctx:
    """What a case builds its command from: a scratch folder and the shared world."""

    tmp: Path
    world: World
    keep: list[Any] = field(default_factory=list)  # objects that must live during the run

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, self.tmp / name))

    @staticmethod
    def free_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def busy_port(self) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        self.keep.append(s)
        return s.getsockname()[1]


Build = Callable[[Ctx], list[Any]]


def case(id: str, build: Build, expected: str, *marks: Any) -> Any:
    return pytest.param(build, expected, id=id, marks=marks)


def _damaged_run(c: Ctx, damage: Callable[[Path], None]) -> Path:
    run = c.copy(c.world.run_ease, "run")
    damage(run)
    return run


def _torch_save(obj: Any) -> Callable[[Path], None]:
    return lambda run: torch.save(obj, run / "model" / "weights.pt")


def _prep(c: Ctx, content: str | bytes, *extra: Any, name: str = "r.csv") -> list[Any]:
    return ["prepare", "--input", c.file(name, content), "--out", c.out, "--quiet", *extra]


def _train(c: Ctx, model: str, *extra: Any, data: Path | None = None) -> list[Any]:
    return ["train", model, "--data", data or c.world.data, "--out", c.out, "--no-track",
            "--quiet", "--device", "cpu", *extra]


def _evaluate(c: Ctx, *extra: Any, run: Path | None = None) -> list[Any]:
    return ["evaluate", run or c.world.run_ease, "--data", c.world.data, "--device", "cpu",
            "--json", c.tmp / "out.json", *extra]


def _recommend(c: Ctx, *extra: Any, k: int = 5, run: Path | None = None,
               partial: str | None = None) -> list[Any]:
    if partial is not None:  # chunks an interrupted run left (kept for --resume)
        c.file(".out.csv.partial/progress.json", partial)
    return ["recommend", run or c.world.run_ease, "--data", c.world.data, "--k", k, "--out",
            c.tmp / "out.csv", "--device", "cpu", *extra]


def _predict(c: Ctx, pairs: str | bytes, *extra: Any, run: Path | None = None) -> list[Any]:
    return ["predict", run or c.world.run_autorec, "--pairs", c.file("pairs.csv", pairs),
            "--out", c.tmp / "out.csv", *extra]


def _compare(c: Ctx, text: str, *extra: Any) -> list[Any]:
    return ["compare", c.file("compare.yaml", text), "--no-track", "--out", c.out, *extra]


def _models(c: Ctx, *specs: str) -> str:
    return f"data: {c.world.data}\nmodels:\n" + "".join(f"  - {s}\n" for s in specs)


CASES = [
    # -- the console script itself ------------------------------------------------------------
    case("cli-unknown-command", lambda c: ["trian"], "invalid choice: 'trian'"),
    case("cli-unknown-flag", lambda c: ["train", "ease", "--dta", c.world.data],
         "unrecognized arguments: --dta"),
    # -- datasets ------------------------------------------------------------------------------
    case("datasets-unknown-flag", lambda c: ["datasets", "--cahce", c.tmp],
         "unrecognized arguments: --cahce"),
    # -- prepare: malformed rating files --------------------------------------------------------
    case("prepare-missing-header", lambda c: _prep(c, GOOD), "no 'user' column"),
    case("prepare-wrong-delimiter",
         lambda c: _prep(c, (HEADER + GOOD).replace(",", ";"), "--sep", ","),
         "the file looks ';'-separated: pass --sep ';'"),
    case("prepare-non-utf8", lambda c: _prep(c, (HEADER + GOOD).encode() + b"3,\xe9\xe9,4,5\n"),
         "bytes that are not UTF-8"),
    case("prepare-binary-file", lambda c: _prep(c, bytes(range(256)) * 8), "not UTF-8"),
    case("prepare-nan-rating", lambda c: _prep(c, HEADER + GOOD + "3,4,nan,5\n"),
         "column 'rating': nan is not a valid rating"),
    case("prepare-inf-rating", lambda c: _prep(c, HEADER + GOOD + "3,4,inf,5\n"),
         "column 'rating': inf is not a valid rating"),
    case("prepare-text-rating", lambda c: _prep(c, HEADER + GOOD + "3,4,good,5\n"),
         "'good' is not a number"),
    case("prepare-nan-id", lambda c: _prep(c, HEADER + GOOD + "nan,4,3,5\n"),
         "column 'user': ids are not numbers ('nan')"),
    case("prepare-fractional-id", lambda c: _prep(c, HEADER + GOOD + "3,4.5,3,5\n"),
         "column 'item': ids are fractional numbers ('4.5')"),
    case("prepare-empty-file", lambda c: _prep(c, ""), "the file is empty"),
    case("prepare-header-only", lambda c: _prep(c, HEADER), "no rating rows after the header"),
    case("prepare-ragged-rows", lambda c: _prep(c, HEADER + GOOD + "1,2\n"),
         "rows have differing numbers of fields"),
    case("prepare-bad-timestamp", lambda c: _prep(c, HEADER + GOOD + "1,2,3,yesterday\n"),
         "'yesterday' is neither a number nor a date"),
    case("prepare-missing-file",
         lambda c: ["prepare", "--input", c.tmp / "nope.csv", "--out", c.out],
         "nope.csv: file not found"),
    case("prepare-input-is-a-folder",
         lambda c: ["prepare", "--input", c.tmp, "--out", c.out], "it is a directory"),
    case("prepare-garbage-parquet", lambda c: _prep(c, b"PAR1garbage", name="r.parquet"),
         "not a readable Parquet file"),
    case("prepare-columns-typo", lambda c: _prep(c, HEADER + GOOD, "--columns", "usr=user"),
         "unknown field 'usr' (did you mean 'user'?)"),
    case("prepare-columns-missing", lambda c: _prep(c, HEADER + GOOD, "--columns", "user=uid"),
         "no column 'uid' (mapped to user by --columns)"),
    case("prepare-threshold-too-high",
         lambda c: _prep(c, HEADER + GOOD, "--implicit-threshold", "9"),
         "no rating is >= the implicit threshold 9.0"),
    case("prepare-filters-leave-nothing",
         lambda c: _prep(c, HEADER + GOOD, "--min-user-interactions", "1000"),
         "nothing is left after filtering"),
    case("prepare-test-fraction", lambda c: _prep(c, HEADER + GOOD, "--test-fraction", "1.5"),
         "--test-fraction 1.5: must be in (0, 1)"),
    case("prepare-split-typo", lambda c: _prep(c, HEADER + GOOD, "--split", "randum"),
         "invalid choice: 'randum'"),
    case("prepare-unknown-dataset", lambda c: ["prepare", "ml-10k", "--out", c.out],
         "did you mean 'ml-100k'?"),
    case("prepare-no-source", lambda c: ["prepare", "--out", c.out], "give exactly one source"),
    case("prepare-disjoint-test-users",
         lambda c: ["prepare", "--train-file", c.file("train.csv", HEADER + GOOD),
                    "--test-file", c.file("test.csv", HEADER + "900,1,4,1\n"), "--out", c.out],
         "none of its users appear in"),
    case("prepare-out-not-a-dataset",
         lambda c: ["prepare", "--input", c.file("r.csv", HEADER + GOOD),
                    "--out", c.file("mine.txt", "keep me").parent],
         "exists and is not a prepared dataset"),
    # -- train: models, configs, data, run directories -----------------------------------------
    case("train-unknown-model", lambda c: _train(c, "eaze"),
         "unknown model 'eaze' (did you mean 'ease'?)"),
    case("train-set-typo", lambda c: _train(c, "ease", "--set", "lamda_=3"),
         "unknown key 'lamda_' (did you mean 'lambda_'?)"),
    case("train-set-no-value", lambda c: _train(c, "ease", "--set", "lambda_"),
         "--set 'lambda_': expected key=value"),
    case("train-set-wrong-type", lambda c: _train(c, "ease", "--set", "lambda_=abc"),
         "invalid value for 'lambda_'"),
    case("train-set-infinite", lambda c: _train(c, "ease", "--set", "lambda_=.inf"),
         "invalid value for 'lambda_'"),
    case("train-neural-set-typo", lambda c: _train(c, "multdae", "--set", "epoch=3"),
         "unknown key 'epoch' (did you mean 'epochs'?)"),
    case("train-neural-negative", lambda c: _train(c, "multdae", "--set", "epochs=-3"),
         "invalid value for 'epochs'"),
    case("train-yaml-typo",
         lambda c: _train(c, "ease", "--config", c.file("ease.yaml", "lamda_: 3\n")),
         "ease.yaml): unknown key 'lamda_' (did you mean 'lambda_'?)"),
    case("train-yaml-invalid",
         lambda c: _train(c, "ease", "--config", c.file("ease.yaml", "lambda_: [\n")),
         "ease.yaml line 2: not valid YAML"),
    case("train-yaml-not-a-mapping",
         lambda c: _train(c, "ease", "--config", c.file("ease.yaml", "- 1\n")),
         "expected a mapping of config keys"),
    case("train-yaml-non-utf8",
         lambda c: _train(c, "ease", "--config", c.file("ease.yaml", b"\xff\xfelambda_: 1\n")),
         "bytes that are not UTF-8"),
    case("train-yaml-missing", lambda c: _train(c, "ease", "--config", c.tmp / "nope.yaml"),
         "nope.yaml: config file not found"),
    case("train-tune-grid-typo",
         lambda c: _train(c, "ease", "--tune", "--config",
                          c.file("ease.yaml", "tune:\n  lamda_: [1, 2]\n")),
         "tune: unknown key 'lamda_'"),
    case("train-bad-metric", lambda c: _train(c, "ease", "--metric", "ndgc@100"),
         "unknown metric 'ndgc@100' (did you mean 'ndcg@100'?)"),
    case("train-bad-metric-k", lambda c: _train(c, "ease", "--metrics", "recall@0"),
         "K must be at least 1"),
    case("train-bad-device", lambda c: _train(c, "multdae", "--device", "tpu"),
         "unknown device 'tpu'"),
    case("train-cuda-unavailable", lambda c: _train(c, "multdae", "--device", "cuda"),
         "CUDA is not available",
         pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    case("train-rating-model-on-implicit-data", lambda c: _train(c, "autorec"),
         "predicts ratings but"),
    case("train-dims-wider-than-catalogue",
         lambda c: _train(c, "multdae", "--set", "hidden_dims=[100000]", "--set", "epochs=1"),
         "wider than the catalogue"),
    case("train-data-missing", lambda c: _train(c, "ease", data=c.tmp / "nodata"),
         "is not a prepared dataset"),
    case("train-data-is-a-file", lambda c: _train(c, "ease", data=c.file("r.csv", GOOD)),
         "is not a prepared dataset"),
    case("train-data-damaged",
         lambda c: _train(c, "ease", data=_damage_data(c, "metadata.json", b"[]")),
         "metadata.json: expected a JSON object"),
    case("train-out-is-a-file",
         lambda c: ["train", "ease", "--data", c.world.data, "--out", c.file("outfile", "x"),
                    "--no-track"], "exists and is not a directory"),
    case("train-out-holds-a-run",
         lambda c: ["train", "ease", "--data", c.world.data, "--out",
                    c.copy(c.world.run_ease, "run"), "--no-track"], "already holds a run"),
    case("train-resume-other-model",
         lambda c: ["train", "pop", "--data", c.world.data, "--out",
                    c.copy(c.world.run_ease, "run"), "--resume", "--no-track"],
         "holds a run of 'ease', not 'pop'"),
    case("train-resume-and-overwrite",
         lambda c: _train(c, "ease", "--resume", "--overwrite"), "pass one of them"),
    # -- evaluate ------------------------------------------------------------------------------
    case("evaluate-not-a-run", lambda c: _evaluate(c, run=c.world.data),
         "is not a run directory (no run.json)"),
    case("evaluate-missing-run", lambda c: _evaluate(c, run=c.tmp / "nope"),
         "is not a run directory"),
    case("evaluate-damaged-run-json",
         lambda c: _evaluate(c, run=_damaged_run(
             c, lambda r: (r / "run.json").write_bytes(b"{\xff"))),
         "run.json: unreadable"),
    case("evaluate-damaged-model-json",
         lambda c: _evaluate(c, run=_damaged_run(
             c, lambda r: (r / "model" / "model.json").write_text("{"))),
         "model.json: not a readable model description"),
    case("evaluate-weights-missing",
         lambda c: _evaluate(c, run=_damaged_run(
             c, lambda r: (r / "model" / "weights.pt").unlink())),
         "weights.pt: cannot load weights"),
    case("evaluate-weights-truncated",
         lambda c: _evaluate(c, run=_damaged_run(c, lambda r: (r / "model" / "weights.pt")
                                                 .write_bytes(b"PK\x03\x04"))),
         "weights.pt: cannot load weights"),
    case("evaluate-weights-of-another-model",
         lambda c: _evaluate(c, run=_damaged_run(c, _torch_save({"w": torch.zeros(2)}))),
         "the weights do not fit model 'ease'"),
    case("evaluate-data-missing",
         lambda c: ["evaluate", c.world.run_ease, "--data", c.tmp / "nope"],
         "is not a prepared dataset"),
    case("evaluate-data-of-another-run",
         lambda c: ["evaluate", c.world.run_ease, "--data", c.world.data_x],
         "use the prepared data the run was trained on"),
    case("evaluate-bad-metric", lambda c: _evaluate(c, "--metrics", "ndcg@10,foo@3"),
         "unknown metric 'foo@3'"),
    case("evaluate-rating-metric-on-ranking-model", lambda c: _evaluate(c, "--metrics", "rmse"),
         "does not predict ratings"),
    case("evaluate-json-is-a-folder",
         lambda c: ["evaluate", c.world.run_ease, "--data", c.world.data, "--json", c.tmp],
         "is a directory; give a file name"),
    case("evaluate-per-user-format", lambda c: _evaluate(c, "--per-user", c.tmp / "u.txt"),
         "use a .csv or .parquet file name"),
    case("evaluate-batch-size", lambda c: _evaluate(c, "--batch-size", "0"),
         "--batch-size must be at least 1"),
    # -- recommend -----------------------------------------------------------------------------
    case("recommend-k-zero", lambda c: _recommend(c, k=0), "--k must be at least 1"),
    case("recommend-k-larger-than-catalogue", lambda c: _recommend(c, k=100000),
         "is larger than the catalogue"),
    case("recommend-out-format",
         lambda c: ["recommend", c.world.run_ease, "--data", c.world.data, "--k", "5",
                    "--out", c.tmp / "out.txt"], "unknown format '.txt'"),
    case("recommend-not-a-run", lambda c: _recommend(c, run=c.world.data),
         "is not a run directory"),
    case("recommend-data-of-another-run",
         lambda c: ["recommend", c.world.run_ease, "--data", c.world.data_x, "--k", "5",
                    "--out", c.tmp / "out.csv"], "use the prepared data the run was trained on"),
    case("recommend-users-missing", lambda c: _recommend(c, "--users", c.tmp / "nope.csv"),
         "nope.csv: no such file"),
    case("recommend-users-empty", lambda c: _recommend(c, "--users", c.file("u.csv", "")),
         "the file holds no user ids"),
    case("recommend-users-non-utf8",
         lambda c: _recommend(c, "--users", c.file("u.csv", b"user\n\xe9\n")),
         "cannot read ids"),
    case("recommend-users-not-integers",
         lambda c: _recommend(c, "--users", c.file("u.csv", "user\n1\nabc\n")),
         "user id 'abc' is not an integer"),
    case("recommend-users-ragged",
         lambda c: _recommend(c, "--users", c.file("u.csv", "user\n1,2\n")),
         "rows have more fields than the header"),
    case("recommend-users-wrong-column",
         lambda c: _recommend(c, "--users", c.file("u.csv", "uid,x\n1,2\n")),
         "expected a 'user' column"),
    case("recommend-allow-nothing-known",
         lambda c: _recommend(c, "--allow", c.file("a.csv", "item\n999999\n")),
         "none of its items is in the catalogue"),
    case("recommend-histories-columns",
         lambda c: _recommend(c, "--histories", c.file("h.csv", "u,i\n1,2\n")),
         "missing column user, item"),
    case("recommend-histories-ragged",
         lambda c: _recommend(c, "--histories", c.file("h.csv", "user,item\nnew,101,7\n")),
         "rows have more fields than the header"),
    case("recommend-histories-and-users",
         lambda c: _recommend(c, "--histories", c.file("h.csv", "user,item\nnew,101\n"),
                              "--users", c.file("u.csv", "user\n1\n")), "drop --users"),
    case("recommend-resume-other-inputs",
         lambda c: _recommend(c, "--resume", partial='{"fingerprint": {"k": 9}, "done": 3}'),
         "was made with other inputs or options"),
    case("recommend-chunk-size", lambda c: _recommend(c, "--chunk-size", "0"),
         "--chunk-size must be at least 1"),
    case("recommend-weights-pickled-object",
         lambda c: _recommend(c, run=_damaged_run(c, _torch_save({"w": Path("/")}))),
         "holds Python objects other than tensors"),
    # -- predict -------------------------------------------------------------------------------
    case("predict-pairs-missing",
         lambda c: ["predict", c.world.run_autorec, "--pairs", c.tmp / "nope.csv", "--out",
                    c.tmp / "out.csv"], "no such file"),
    case("predict-pairs-empty", lambda c: _predict(c, ""), "the file is empty"),
    case("predict-pairs-no-header", lambda c: _predict(c, "1,101\n2,102\n"),
         "missing column user and item"),
    case("predict-pairs-wrong-delimiter", lambda c: _predict(c, "user;item\n1;101\n"),
         "missing column user and item"),
    case("predict-pairs-non-utf8", lambda c: _predict(c, b"user,item\n\xe9,101\n"),
         "cannot read CSV"),
    case("predict-pairs-blank-id", lambda c: _predict(c, "user,item\n1,\n"),
         "row 2 has an empty user or item id"),
    case("predict-pairs-ragged", lambda c: _predict(c, "user,item\n1,101,7\n"),
         "pairs.csv: row 2 has 3 fields, more fields than the header (user,item)"),
    case("predict-pairs-ragged-later-row",
         lambda c: _predict(c, "user,item\n1,101\n2,102\n3,103,7\n"),
         "pairs.csv: row 4 has 3 fields, more fields than the header (user,item)"),
    case("predict-pairs-header-only", lambda c: _predict(c, "user,item\n"),
         "pairs.csv: no pairs after the header"),
    case("predict-ranking-model", lambda c: _predict(c, "user,item\n1,101\n",
                                                     run=c.world.run_ease),
         "does not predict ratings"),
    case("predict-not-a-run", lambda c: _predict(c, "user,item\n1,101\n", run=c.world.data),
         "is not a run directory"),
    case("predict-data-of-another-run",
         lambda c: _predict(c, "user,item\n1,101\n", "--data", c.world.data),
         "use the prepared data the run was trained on"),
    case("predict-out-is-a-folder",
         lambda c: ["predict", c.world.run_autorec, "--pairs",
                    c.file("p.csv", "user,item\n1,101\n"), "--out", c.tmp],
         "is a directory; give a file name"),
    # -- compare -------------------------------------------------------------------------------
    case("compare-key-typo", lambda c: _compare(c, _models(c, "model: pop") + "metrcs: [x]\n"),
         "unknown key 'metrcs' (did you mean 'metrics'?)"),
    case("compare-model-typo", lambda c: _compare(c, _models(c, "model: eaze")),
         "unknown model 'eaze'"),
    case("compare-param-typo",
         lambda c: _compare(c, _models(c, "model: ease\n    params: {lamda_: 3}")),
         "unknown key 'lamda_'"),
    case("compare-bad-metric",
         lambda c: _compare(c, _models(c, "model: pop") + "metrics: [ndgc@10]\n"),
         "unknown metric 'ndgc@10'"),
    case("compare-no-models", lambda c: _compare(c, f"data: {c.world.data}\nmodels: []\n"),
         "invalid value for 'models'"),
    case("compare-duplicate-label", lambda c: _compare(c, _models(c, "model: pop", "model: pop")),
         "appears twice"),
    case("compare-data-missing",
         lambda c: _compare(c, f"data: {c.tmp / 'nope'}\nmodels:\n  - model: pop\n"),
         "is not a prepared dataset"),
    case("compare-invalid-yaml", lambda c: _compare(c, "data: [\n"), "not valid YAML"),
    case("compare-missing-file", lambda c: ["compare", c.tmp / "nope.yaml", "--no-track"],
         "config file not found"),
    case("compare-only-typo", lambda c: _compare(c, _models(c, "model: pop"), "--only", "popp"),
         "--only popp: no such model label"),
    case("compare-table-format", lambda c: _compare(c, _models(c, "model: pop"),
                                                    "--table", c.tmp / "t.txt"),
         "use a .csv file name"),
    case("compare-prepare-typo",
         lambda c: _compare(c, f"data: {c.tmp / 'new'}\nprepare:\n  datset: ml-latest-small\n"
                               "models:\n  - model: pop\n"),
         "compare.yaml: prepare: unknown key 'datset' (did you mean 'dataset'?)"),
    case("compare-prepare-bad-value",
         lambda c: _compare(c, f"data: {c.tmp / 'new'}\nprepare:\n  dataset: ml-latest-small\n"
                               "  test-fraction: lots\nmodels:\n  - model: pop\n"),
         "compare.yaml: prepare: argument --test-fraction: invalid float value: 'lots'"),
    # -- ui ------------------------------------------------------------------------------------
    case("ui-port-out-of-range", lambda c: ["ui", "--port", "70000"],
         "use a port between 1 and 65535"),
    case("ui-port-in-use", lambda c: ["ui", "--port", c.busy_port()], "is in use"),
    case("ui-unsupported-store", lambda c: ["ui", "--port", c.free_port(),
                                            "--tracking-uri", "foo://bar"],
         "tracking URI 'foo://bar': the MLflow UI cannot open a 'foo' store"),
    case("ui-sqlite-folder-is-a-file",
         lambda c: ["ui", "--port", c.free_port(), "--tracking-uri",
                    f"sqlite:///{c.file('taken', 'x')}/sub/m.db"],
         "taken is a file, so the database's folder cannot be created"),
    case("ui-sqlite-not-a-database",
         lambda c: ["ui", "--port", c.free_port(), "--tracking-uri",
                    f"sqlite:///{c.file('notes.db', 'hello')}"], "is not a SQLite database"),
    case("ui-sqlite-in-memory", lambda c: ["ui", "--port", c.free_port(), "--tracking-uri",
                                           "sqlite://"], "is an in-memory database"),
    case("ui-server-unreachable",
         lambda c: ["ui", "--tracking-uri", f"http://127.0.0.1:{c.free_port()}"],
         "cannot reach the MLflow tracking server at http://127.0.0.1:"),
    # -- quickstart ----------------------------------------------------------------------------
    case("quickstart-unknown-model", lambda c: ["quickstart", "--out", c.out, "--models", "eaze"],
         "unknown model 'eaze' (did you mean 'ease'?)"),
    case("quickstart-no-models", lambda c: ["quickstart", "--out", c.out, "--models", ","],
         "no model"),
]


def _damage_data(c: Ctx, name: str, content: bytes) -> Path:
    data = c.copy(c.world.data, "data")
    (data / name).write_bytes(content)
    return data


@pytest.fixture(scope="module")
def world_before(world: World) -> dict[str, str]:
    return snapshot(world.root)


@pytest.mark.parametrize("build, expected", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(build, expected, tmp_path, world,
                                                         world_before, capsys, monkeypatch):
    # A new user's shell: no tracking URI left behind by a test that talked to a server (MLflow's
    # set_tracking_uri exports it for the whole process), which would send `ui` to that server.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ctx = Ctx(tmp_path / "case", world)
    ctx.tmp.mkdir()
    argv = build(ctx)
    built = snapshot(ctx.tmp)
    try:
        result = cli(argv, capsys)
    finally:
        for obj in ctx.keep:
            obj.close()
    assert_one_line_error(result, expected)
    # Nothing written, nothing half-written, nothing changed: the folder is what the case built
    # (no output, no hidden temporary, damaged copies untouched), and the shared world too.
    assert snapshot(ctx.tmp) == built
    assert not ctx.out.exists() and not (ctx.tmp / "out.csv").exists()
    assert snapshot(world.root) == world_before

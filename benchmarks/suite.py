"""The suite's runs: each section prepares, trains, evaluates or scores through the commands and
scripts a user would run, every measurement in a fresh process (benchmarks/measure.py), and
collects the figures into the results that benchmarks/render.py turns into RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench_baselines import PREPARE as _BASELINES_PREPARE
from flops import ML20M_RAW_ROWS
from measure import BENCH, REPO, importable, machine_info, measure, median, training_summary

DATASETS = ("ml-100k", "ml-latest-small")
MODELS = ("pop", "itemknn", "ease", "als", "multvae", "multdae", "recvae", "cdae")
TUNED = {"itemknn", "ease", "als", "bpr"}  # baselines: their config's grid, on validation
NEURAL = {"multvae", "multdae", "recvae", "cdae", "autorec", "cfgan"}
METRICS = "recall@20,recall@50,ndcg@100"
# The protocol of bench_baselines.py / bench_vae.py and of PROTOCOLS.md's peer table: ratings >= 4
# as positives, users with >= 5 of them, per-user random 80/20, 10% of train for validation.
PREPARE_ARGS = _BASELINES_PREPARE[2:]
RECBOLE_MODELS = ("MultiVAE", "MultiDAE", "RecVAE", "EASE")
ALS_PEER = "implicit ALS (untuned, 64 factors)"
# Issue 18: a 30-trial Mult-DAE study on ml-100k in a few minutes; --quick runs a 5-trial one.
STUDY_TRIALS, QUICK_STUDY_TRIALS = 30, 5



class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.failures: list[str] = []
        self.env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # implicit's request
        if args.threads:
            self.env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        if args.mirror:
            self.env["RECSYS_MIRROR"] = args.mirror
        self.results: dict[str, Any] = {}
        self.started = time.perf_counter()

    # -- plumbing --------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{elapsed / 60:5.1f} min] {text}", flush=True)

    def fail(self, what: str, m: Any) -> dict[str, Any]:
        tail = m.tail() if m is not None else ""
        self.failures.append(what)
        self.say(f"FAILED: {what} (log: {m.log if m is not None else '-'})\n{tail}")
        log = "-" if m is None else m.log
        if m is not None and m.log.is_relative_to(REPO):
            log = m.log.relative_to(REPO)
        return {"error": f"failed, see {log}"}

    def cli(self, log: str, *args: str, env: dict[str, str] | None = None) -> Any:
        return measure("recsys.cli", list(args), self.logs / f"{log}.log", env=env or self.env)

    def script(self, log: str, name: str, *args: str) -> tuple[Any, Any]:
        """Run benchmarks/NAME with ``--json`` into the log folder; (measured, parsed json)."""
        out = self.logs / f"{log}.json"
        out.unlink(missing_ok=True)
        m = measure(str(BENCH / name), [*args, "--json", str(out)], self.logs / f"{log}.log",
                    module=False, env=self.env)
        data = json.loads(out.read_text()) if m.ok and out.is_file() else None
        return m, data

    def thread_args(self) -> list[str]:
        return ["--threads", str(self.args.threads)] if self.args.threads else []

    def mirror_args(self) -> list[str]:
        return ["--mirror", self.args.mirror] if self.args.mirror else []

    # -- data ------------------------------------------------------------------------------------

    def available(self, name: str) -> bool:
        if name == "ml-latest-small":
            return (REPO / "data" / "ml-latest-small" / "ratings.csv").is_file()
        mirror = Path(self.args.mirror) if self.args.mirror else None
        return mirror is not None and ((mirror / name / "u.data").is_file()
                                       or (mirror / f"{name}.zip").is_file())

    def prepare(self, name: str, repeat: int) -> dict[str, Any]:
        """`recsys prepare` of the protocol's split, ``repeat`` times (median seconds)."""
        target = self.out / "data" / name
        # ml-latest-small ships with recsys, and `recsys prepare` refuses a mirror for it.
        source = [] if name == "ml-latest-small" else self.mirror_args()
        runs = []
        for i in range(repeat):
            shutil.rmtree(target, ignore_errors=True)
            m = self.cli(f"prepare-{name}", "prepare", name, *PREPARE_ARGS, *source,
                         "--out", str(target), "--quiet")
            if not m.ok:
                return self.fail(f"recsys prepare {name} (run {i + 1})", m)
            runs.append(m)
        meta = json.loads((target / "metadata.json").read_text())
        return {"dir": str(target), "seconds": median([m.wall for m in runs]),
                "seconds_all": [round(m.wall, 2) for m in runs],
                "cpu_seconds": median([m.cpu for m in runs]),
                "peak_mb": median([m.peak_mb for m in runs]), "users": meta["n_users"],
                "items": meta["n_items"],
                "interactions": sum(meta["counts"]["interactions"].values())}

    def data_dir(self, name: str) -> Path | None:
        """The prepared split, preparing it once if the real section did not."""
        real = self.results.get("real", {}).get(name, {})
        if "dir" in real.get("prepare", {}):
            return Path(real["prepare"]["dir"])
        prep = self.results.setdefault("real", {}).setdefault(name, {})
        prep["prepare"] = self.prepare(name, 1)
        return Path(prep["prepare"]["dir"]) if "dir" in prep["prepare"] else None

    # -- training --------------------------------------------------------------------------------

    def train(self, name: str, data: Path, model: str, *, tune: bool, config: bool = True,
              label: str | None = None, extra: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> dict[str, Any]:
        label = label or model
        run = self.out / "runs" / name / label.replace(" ", "_")
        args = ["train", model, "--data", str(data), "--out", str(run), "--overwrite", "--quiet",
                "--no-track", "--device", "cpu", "--metrics", METRICS]
        cfg = REPO / "configs" / f"{model}.yaml"
        if config and cfg.is_file():
            args += ["--config", str(cfg)]
        if tune:
            args.append("--tune")
        args += extra
        if self.args.quick and model in NEURAL:
            args += ["--set", "epochs=2"]
        fits = []
        for i in range(self.args.fit_repeat):
            m = self.cli(f"train-{name}-{label.replace(' ', '_')}", *args, env=env)
            if not m.ok:
                return self.fail(f"recsys train {model} on {name} (run {i + 1})", m)
            info = json.loads((run / "run.json").read_text())
            fits.append((m, info))
        m, info = fits[0]
        tuned = info.get("tuned") or {}
        row = {"model": label, **{k: float(v) for k, v in info["metrics"].items()},
               "fit_seconds": median([i["fit_seconds"] for _, i in fits]),
               "fit_seconds_all": [round(i["fit_seconds"], 2) for _, i in fits],
               "tune_seconds": float(info.get("tune_seconds") or 0.0),
               "tuned": tuned.get("params"), "candidates": len(tuned.get("candidates", [])),
               "wall_seconds": median([f.wall for f, _ in fits]),
               "cpu_seconds": median([f.cpu for f, _ in fits]),
               "peak_mb": median([f.peak_mb for f, _ in fits])}
        states = [c.get("state") for c in tuned.get("candidates", [])]
        if any(states):  # an Optuna study's trials (a grid's candidates have no state)
            row["pruned"] = states.count("PRUNED")
        row.update(training_summary(run))
        return row

    # -- sections --------------------------------------------------------------------------------

    def real(self) -> None:
        a = self.args
        real = self.results.setdefault("real", {})
        for name in a.datasets:
            if not self.available(name):
                real[name] = {"skipped": f"{name} not found (set RECSYS_MIRROR or --mirror)"}
                self.say(f"skip {name}: not found in the mirror")
                continue
            self.say(f"{name}: prepare x{a.repeat}")
            entry = real.setdefault(name, {})
            entry["prepare"] = self.prepare(name, a.repeat)
            if "dir" not in entry["prepare"]:
                continue
            self.say(f"  {entry['prepare']['seconds']:.2f} s, {entry['prepare']['users']} users x "
                     f"{entry['prepare']['items']} items")
            data = Path(entry["prepare"]["dir"])
            rows = entry.setdefault("models", [])
            for model in a.models:
                self.say(f"{name}: train {model}" + (" --tune" if model in TUNED else ""))
                row = self.train(name, data, model, tune=model in TUNED)
                if "error" not in row:
                    rows.append(row)
                    self.say(f"  ndcg@100 {row['ndcg@100']:.4f} recall@20 {row['recall@20']:.4f} "
                             f"fit {row['fit_seconds']:.1f} s ({row['cpu_seconds']:.0f} CPU s for "
                             "the whole call)")
                else:
                    rows.append({"model": model, **row})
        self.say(f"full-ranking evaluation (bench_eval.py --only small, x{a.repeat})")
        m, data = self.script("eval-small", "bench_eval.py", "--only", "small", "--devices", "cpu",
                              "--repeat", str(a.repeat), *self.thread_args())
        real["eval"] = data if data is not None else self.fail("bench_eval.py --only small", m)
        if self.available("ml-100k") and ("ml-100k" in a.datasets or a.quick):
            real["study"] = self.study()

    def study(self) -> dict[str, Any]:
        """Issue 18: `recsys train multdae --tune --trials 30` beside the default fit on the same
        ml-100k split, both on one thread whatever ``--threads`` says (the target is set for a
        2-core machine shared with other jobs)."""
        trials = QUICK_STUDY_TRIALS if self.args.quick else STUDY_TRIALS
        data = self.data_dir("ml-100k")
        if data is None:
            return {"error": "ml-100k could not be prepared"}
        env = {**self.env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.say("ml-100k: Mult-DAE with its defaults, one thread")
        default = self.train("ml-100k", data, "multdae", tune=False, config=False,
                             label="multdae-defaults", env=env)
        self.say(f"ml-100k: Mult-DAE, a {trials}-trial Optuna study (--tune --trials {trials}), "
                 "one thread")
        tuned = self.train("ml-100k", data, "multdae", tune=True, config=False,
                           label=f"multdae-{trials}-trials", extra=("--trials", str(trials)),
                           env=env)
        for row in (default, tuned):
            if "error" not in row:
                self.say(f"  {row['model']}: {row['wall_seconds']:.0f} s wall, ndcg@100 "
                         f"{row['ndcg@100']:.4f}")
        return {"data": "ml-100k", "model": "multdae", "trials": trials, "threads": 1,
                "default": default, "tuned": tuned}

    def ratings(self) -> None:
        if self.available("ml-100k"):
            self.results["autorec"] = self.autorec(with_ours=True)
        else:
            self.results["autorec"] = {"skipped": "ml-100k not found (set RECSYS_MIRROR)"}
            self.say("skip the u1..u5 folds: ml-100k not found in the mirror")

    def autorec(self, with_ours: bool) -> dict[str, Any]:
        """bench_autorec.py on the canonical folds: I-AutoRec (``with_ours``), the global mean
        and, when installed, Surprise SVD."""
        a = self.args
        models = (["iautorec", "mean"] if with_ours else ["mean"])
        if importable("surprise"):
            models.append("svd")
        out = self.out / "autorec"
        extra = ["--set", "epochs=2"] if a.quick and with_ours else []
        self.say(f"ml-100k folds u{',u'.join(a.folds)}: {', '.join(models)} (bench_autorec.py)")
        m = measure(str(BENCH / "bench_autorec.py"),
                    ["--folds", ",".join(a.folds), "--models", ",".join(models), "--out",
                     str(out), *self.mirror_args(), *self.thread_args(), *extra],
                    self.logs / "autorec.log", module=False, env=self.env)
        if not m.ok:
            return self.fail("bench_autorec.py", m)
        return {**json.loads((out / "autorec.json").read_text()), "models": models,
                "wall_seconds": m.wall}

    def peers(self) -> None:
        a = self.args
        peers = self.results.setdefault("peers", {})
        for name in a.datasets:
            if not self.available(name):
                continue
            data = self.data_dir(name)
            if data is None:
                continue
            self.say(f"{name}: peer {ALS_PEER} (recsys train als, defaults, no --tune)")
            row = self.train(name, data, "als", tune=False, config=False, label="als-untuned")
            peers.setdefault(name, {})[ALS_PEER] = {**row, "model": ALS_PEER, "measured": True}
        recbole = peers.setdefault("recbole", {})
        if not importable("recbole"):
            recbole["note"] = "recbole is not installed (pip install -e '.[bench]')"
            self.say("RecBole: not installed, its PROTOCOLS.md figures are cited instead")
        elif "ml-100k" in a.datasets and self.available("ml-100k"):
            data = self.data_dir("ml-100k")
            for model in RECBOLE_MODELS:
                self.say(f"ml-100k: RecBole {model}")
                work = self.out / "recbole" / model
                shutil.rmtree(work, ignore_errors=True)
                out = self.logs / f"recbole-{model}.json"
                out.unlink(missing_ok=True)
                m = measure(str(BENCH / "workers.py"),
                            ["recbole", "--model", model, "--data", str(data), "--work",
                             str(work), "--json", str(out)],
                            self.logs / f"recbole-{model}.log", module=False,
                            env={**self.env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
                if m.ok and out.is_file():
                    recbole[f"RecBole {model}"] = {**json.loads(out.read_text()),
                                                   "wall_seconds": m.wall, "cpu_seconds": m.cpu,
                                                   "peak_mb": m.peak_mb}
                else:
                    recbole[f"RecBole {model}"] = self.fail(f"RecBole {model}", m)
        if "ratings" not in a.sections and self.available("ml-100k") and importable("surprise"):
            peers["surprise"] = self.autorec(with_ours=False)

    def cfgan(self) -> None:
        """CFGAN beside tuned EASE, Mult-VAE and ALS on its own protocol (every rating a
        positive): benchmarks/bench_cfgan.py, one fit of configs/cfgan.yaml (~7 min on CPU)."""
        a = self.args
        if not self.available("ml-100k"):
            self.results["cfgan"] = {"error": "ml-100k not in the dataset mirror"}
            return
        self.say("ml-100k, every rating positive: CFGAN beside tuned EASE, Mult-VAE and ALS "
                 "(bench_cfgan.py)")
        work = self.out / "cfgan"
        shutil.rmtree(work / "runs", ignore_errors=True)
        extra = ["--models", "cfgan,ease", "--set", "epochs=2"] if a.quick else []
        m = measure(str(BENCH / "bench_cfgan.py"),
                    ["--out", str(work), *self.mirror_args(), *self.thread_args(), *extra],
                    self.logs / "cfgan.log", module=False, env=self.env)
        done = work / "results.json"
        self.results["cfgan"] = (json.loads(done.read_text()) if m.ok and done.is_file()
                                 else self.fail("bench_cfgan.py", m))

    def synthetic(self) -> None:
        """ML-20M shape on the CPU at ``--scale`` (prepare, evaluation, top-100, VAE epoch)."""
        a = self.args
        syn = self.synthetic_rows("synthetic", "cpu", a.scale, ["fp32"], a.vae_batches,
                                  prepare=True)
        if not a.quick and all(abs(a.scale * mult - 1) > 1e-9 for mult in a.sizes):
            # Prepare is CPU work and cheap at full size: its 20M-row target is measured as set,
            # not extrapolated, whatever scale the rest ran at.
            self.say(f"synthetic x1: prepare of a {ML20M_RAW_ROWS:,}-row ratings.csv "
                     f"(bench_prepare.py, x{a.repeat})")
            m, data = self.script("prepare-x1", "bench_prepare.py", "--rows",
                                  str(ML20M_RAW_ROWS), "--repeat", str(a.repeat), "--sources",
                                  "ml-20m")
            syn["prepare_full"] = data if data is not None else self.fail("prepare x1", m)

    def scale(self) -> None:
        """10x ML-20M's users on the CPU (issue 21): prepare of a 100M-row ratings.csv, then
        evaluation and top-100 of every user at --scale-users (bench_scale.py), and `recsys
        recommend` with the local and the Spark engine at --spark-users."""
        a = self.args
        rows = int(a.scale_rows)
        users = round(rows * 1_366_770 / 100_000_000)
        self.say(f"scale: prepare of a {rows:,}-row ratings.csv, {users:,} users")
        m, data = self.script("scale-prepare", "bench_prepare.py", "--rows", str(rows),
                              "--users", str(users), "--items", "20108", "--sources", "ml-20m",
                              "--no-recbole")
        out: dict[str, Any] = {"prepare": [data] if data is not None else [],
                               "measured": "by benchmarks/run.py --only scale"}
        if data is None:
            out["note"] = f"prepare: {self.fail('scale prepare', m)['error']}"
        self.say(f"scale: evaluation and top-100 at {a.scale_users} users; engines at "
                 f"{a.spark_users}")
        m, data = self.script("scale", "bench_scale.py", "--users", a.scale_users,
                              "--batch-sizes", a.scale_batches, "--engines", "local,spark",
                              "--spark-users", a.spark_users)
        if data is None:
            out["note"] = (out.get("note", "") + " bench_scale.py: "
                           + self.fail("bench_scale.py", m)["error"]).strip()
        out.update(data or {})
        self.results["scale"] = out

    def gpu(self) -> None:
        """ML-20M shape on the GPU at ``--gpu-scale`` (full size by default): evaluation, top-100,
        a Mult-VAE epoch per precision. Its machine is recorded with it, since ``--merge-from``
        puts it beside CPU sections measured elsewhere."""
        a = self.args
        syn = self.synthetic_rows("gpu", "cuda", a.gpu_scale, a.precisions, 0, prepare=False)
        syn["machine"] = machine_info()

    def synthetic_rows(self, key: str, dev: str, scale: float, precisions: list[str],
                       vae_batches: int, prepare: bool) -> dict[str, Any]:
        a = self.args
        syn = self.results.setdefault(key, {"scale": scale, "sizes": a.sizes, "device": dev,
                                            "rows": []})
        for mult in a.sizes:
            s = scale * mult
            label = f"{key} x{s:g}"
            row: dict[str, Any] = {"scale": s, "mult": mult}
            if prepare:
                rows_csv = max(1000, round(ML20M_RAW_ROWS * s))
                self.say(f"{label}: prepare of a {rows_csv:,}-row ratings.csv "
                         f"(bench_prepare.py, x{a.repeat})")
                m, data = self.script(f"prepare-x{s:g}", "bench_prepare.py", "--rows",
                                      str(rows_csv), "--repeat", str(a.repeat), "--sources",
                                      "ml-20m")
                row["prepare"] = data if data is not None else self.fail(f"prepare {label}", m)
            self.say(f"{label}: full-ranking evaluation of all users on {dev}")
            m, data = self.script(f"eval-{dev}-x{s:g}", "bench_eval.py", "--only", "large",
                                  "--scale", str(s), "--devices", dev, "--repeat",
                                  str(a.repeat), *self.thread_args())
            row["eval"] = data if data is not None else self.fail(f"eval {label}", m)
            self.say(f"{label}: top-100 for all users on {dev} (bench_topk.py)")
            m, data = self.script(f"topk-{dev}-x{s:g}", "bench_topk.py", "--scale", str(s),
                                  "--mults", "1", "--modes", "scoring", "--devices", dev,
                                  "--repeat", str(a.repeat), *self.thread_args())
            row["topk"] = data if data is not None else self.fail(f"topk {label}", m)
            row["vae"] = []
            for precision in precisions:
                self.say(f"{label}: Mult-VAE epoch, batch 500, {precision} on {dev}")
                extra = ["--max-batches", str(vae_batches)] if vae_batches else []
                m, data = self.script(f"vae-{dev}-x{s:g}-{precision}", "workers.py",
                                      "vae-epoch", "--scale", str(s), "--device", dev,
                                      "--repeat", str(a.repeat), "--precision", precision,
                                      *extra, *self.thread_args())
                row["vae"].append(data if data is not None
                                  else {"precision": precision,
                                        **self.fail(f"vae {label} {precision}", m)})
            syn["rows"].append(row)
        return syn


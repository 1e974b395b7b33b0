"""Tuned autoencoders against their defaults, tuned EASE and RecBole's same model (issue 18).

For each dataset the README's top-N split is prepared, then only the public commands run:

    recsys prepare DATASET --split random --implicit-threshold 4 --min-user-interactions 5 \
        --test-fraction 0.2 --valid-fraction 0.1 --seed 0 --out P
    recsys train ease --data P --out RUN --no-track --tune                 # the reference
    recsys train MODEL --data P --out RUN --no-track                       # defaults
    recsys train MODEL --data P --out RUN --no-track --tune --trials 30    # Optuna study

and RecBole 1.2.1's same model (its default settings) is fitted on the same train / valid / test
parts (benchmarks/peers.py ``recbole_fit``). Test figures are the run's metrics.json (`recsys
train` evaluates the refitted model on the test part once); the validation figure is the chosen
trial's score (tuned) or the best epoch's (defaults); pruned and failed trials are counted from
run.json's study record, and the chosen config is RUN/tuned.yaml.

    RECSYS_MIRROR=/path/to/zips python benchmarks/bench_tune.py [--models multvae,multdae,recvae]
        [--datasets ml-100k,ml-latest-small] [--trials 30] [--threads 1] [--no-recbole]
        [--reuse-defaults] [--out benchmarks/out/tune]
    python benchmarks/bench_tune.py --table-only    # the table again, from results.json

--reuse-defaults keeps the default-config rows (and, with --no-recbole, RecBole's figures; and
the reference EASE row when it was chosen under the selection rule) that results.json already
holds for a dataset instead of fitting them again: they do not depend on the studies (a changed
training path needs a fresh run). Each tuned row records how the kept
config was chosen (`selection`: the one-SE rule's gain over the defaults and its standard error).

Results: benchmarks/out/tune/results.json (one entry per dataset, rewritten after each row, and
merged with the entries other invocations wrote there, so datasets may run in separate processes)
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from measure import importable, machine_info, now_utc, training_summary, versions  # noqa: E402
from peers import recbole_fit  # noqa: E402

METRIC = "ndcg@100"
RECBOLE_NAMES = {"multvae": "MultiVAE", "multdae": "MultiDAE", "recvae": "RecVAE"}
PREPARE_FLAGS = ["--split", "random", "--implicit-threshold", "4", "--min-user-interactions",
                 "5", "--test-fraction", "0.2", "--valid-fraction", "0.1", "--seed", "0"]
COLUMNS = ["dataset", "model", "config", "wall time", "valid NDCG@100", "test NDCG@100",
           "recall@20", "recall@50", "RecBole same model NDCG@100"]
ENV: dict[str, str] = {}


def recsys(*args: str, log: Path) -> tuple[int, float]:
    """One public CLI call (a subprocess, as a user runs it), its output appended to ``log``;
    returns the exit status and the wall seconds."""
    command = "recsys " + " ".join(args)
    print(f"$ {command}", file=sys.stderr, flush=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **ENV}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        sink.write(f"\n$ {command}\n")
        sink.flush()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=REPO, env=env,
                              stdout=sink, stderr=sink)
    return done.returncode, time.perf_counter() - started


def wall(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"


def train_row(model: str, prep: Path, run: Path, log: Path, trials: int | None) -> dict[str, Any]:
    """Train ``model`` with its defaults (``trials`` None), or tuned: a study of ``trials``
    (a grid where ``trials`` is 0, the closed-form baselines' --tune), and read what it wrote."""
    args = ["train", model, "--data", str(prep), "--out", str(run), "--no-track", "--overwrite",
            "--quiet"]
    if trials is not None:
        args += ["--tune"] + (["--trials", str(trials)] if trials else [])
    command = "recsys " + " ".join(a for a in args if a not in ("--overwrite", "--quiet"))
    status, seconds = recsys(*args, log=log)
    row: dict[str, Any] = {"model": model, "command": command, "wall_seconds": seconds,
                           "finished": now_utc()}
    if status != 0:
        return {**row, "error": f"exit {status}, see {log}"}
    info = json.loads((run / "run.json").read_text())
    metrics = info["metrics"]
    row.update({f"test {m}": metrics.get(m) for m in (METRIC, "recall@20", "recall@50")})
    row["refit_epochs"] = (info.get("refit") or {}).get("epochs")
    tuned = info.get("tuned")
    if tuned:
        candidates = tuned.get("candidates", [])
        states = [c.get("state", "COMPLETE") for c in candidates]
        # Which trial won says whether the study searched at all (trial 0 is TPE's first
        # random draw).
        scores = [c.get(METRIC) if state == "COMPLETE" else None
                  for c, state in zip(candidates, states, strict=True)]
        row["best_trial"] = max((i for i, v in enumerate(scores) if v is not None),
                                key=lambda i: scores[i], default=None)
        row["selection"] = tuned.get("selection")
        row.update({"search": tuned.get("search"), "valid " + METRIC: tuned.get("score"),
                    "trials_run": len(states), "pruned": states.count("PRUNED"),
                    "failed": states.count("FAIL"), "params": tuned.get("params"),
                    "tune_seconds": info.get("tune_seconds"),
                    "tuned_yaml": (run / "tuned.yaml").read_text()})
        row["config"] = (f"`--tune --trials {trials}`, {row['pruned']} pruned"
                         + (f", {row['failed']} failed" if row["failed"] else "")
                         if tuned.get("search") == "study"
                         else f"`--tune` ({len(states)}-point grid)")
        if (row["selection"] or {}).get("kept_default"):
            row["config"] += ", defaults kept (one-SE rule)"
    else:
        row["valid " + METRIC] = training_summary(run, METRIC).get(f"valid_{METRIC}")
        row["config"] = "default"
    return row


def run_dataset(name: str, args: argparse.Namespace, entry: dict[str, Any], save: Any,
                before: dict[str, Any]) -> None:
    """Fill ``entry`` with one row per fit, calling ``save`` after each, so that a long run that
    is stopped keeps what it has; ``before``: the dataset's entry from an earlier run (for
    --reuse-defaults)."""
    folder = Path(args.out) / name
    log = folder / "log.txt"
    prep = folder / "prepared"
    mirror = ["--mirror", args.mirror] if name == "ml-100k" and args.mirror else []
    status, _ = recsys("prepare", name, *PREPARE_FLAGS, *mirror, "--out", str(prep),
                       "--quiet", log=log)
    if status != 0:
        sys.exit(f"bench_tune: preparing {name} failed, see {log}")
    entry.update({"prepare": "recsys prepare " + " ".join([name, *PREPARE_FLAGS]),
                  "started": now_utc(), "rows": [], "recbole": {}})
    rows = entry["rows"]
    earlier = {r["model"]: r for r in before.get("rows", [])
               if r.get("config") == "default" and "error" not in r} if args.reuse_defaults else {}
    if args.reuse_defaults and args.no_recbole:
        entry["recbole"].update(before.get("recbole", {}))
    # The reference EASE row too, when it was made under the selection rule (its `selection`).
    reference = next((r for r in before.get("rows", []) if r["model"] == "ease"
                      and r.get("selection") and "error" not in r), None)
    if args.reuse_defaults and reference is not None:
        rows.append({**reference, "reused": True})
    else:
        rows.append(train_row("ease", prep, folder / "runs" / "ease-tuned", log, 0))
    save()
    for model in args.models.split(","):
        if model in earlier:
            rows.append({**earlier[model], "reused": True})
        else:
            rows.append(train_row(model, prep, folder / "runs" / f"{model}-default", log, None))
        save()
        rows.append(train_row(model, prep, folder / "runs" / f"{model}-tuned", log, args.trials))
        save()
        peer = RECBOLE_NAMES.get(model)
        if not args.no_recbole and peer:
            started = time.perf_counter()
            try:
                result = recbole_fit(peer, prep, folder / "recbole" / model)
            except Exception as error:  # noqa: BLE001 - one peer failing must not end the run
                result = {"model": f"RecBole {peer}", "error": repr(error)}
            entry["recbole"][model] = {**result, "wall_seconds": time.perf_counter() - started}
            save()
    entry["finished"] = now_utc()
    save()


def save_merged(path: Path, results: dict[str, Any]) -> None:
    """Write our datasets into ``path``, keeping the entries other invocations wrote there
    (locked, so that two processes running one dataset each do not lose each other's rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = json.loads(path.read_text()) if path.exists() else {"datasets": {}}
        merged.update({k: v for k, v in results.items() if k != "datasets"})
        merged.setdefault("datasets", {}).update(results["datasets"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=2, default=str))
        tmp.replace(path)


def fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def table(results: dict[str, Any]) -> str:
    """The Markdown table over every dataset in ``results``, and issue 18's two checks."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    checks = []
    for name, entry in results["datasets"].items():
        recbole = entry.get("recbole", {})
        for row in entry.get("rows", []):
            peer = recbole.get(row["model"], {})
            model = "EASE (reference)" if row["model"] == "ease" else row["model"]
            cells = [name, model, row.get("config") or f"failed: {row.get('error')}",
                     wall(row.get("wall_seconds")), fmt(row.get("valid " + METRIC)),
                     fmt(row.get("test " + METRIC)), fmt(row.get("test recall@20")),
                     fmt(row.get("test recall@50")),
                     fmt(peer.get(METRIC)) if row["model"] in RECBOLE_NAMES else ""]
            lines.append("| " + " | ".join(cells) + " |")
        rows = {(r["model"], r.get("config") == "default"): r for r in entry.get("rows", [])
                if "error" not in r}
        ease = rows.get(("ease", False))
        tuned = {m: r for (m, default), r in rows.items() if m != "ease" and not default}
        if ease and tuned:
            best = max(tuned.values(), key=lambda r: r["test " + METRIC])
            holds = best["test " + METRIC] >= ease["test " + METRIC]
            checks.append(f"- {name}: best tuned autoencoder {best['model']} "
                          f"{best['test ' + METRIC]:.4f} vs tuned EASE "
                          f"{ease['test ' + METRIC]:.4f}: {'holds' if holds else 'does not hold'}")
        for model, row in tuned.items():
            peer = recbole.get(model, {}).get(METRIC)
            if peer is not None:
                holds = row["test " + METRIC] > peer
                checks.append(f"- {name}: tuned {model} {row['test ' + METRIC]:.4f} vs RecBole "
                              f"{peer:.4f}: {'holds' if holds else 'does not hold'}")
    return "\n".join(lines + [""] + checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="multvae,multdae,recvae")
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--trials", type=int, default=30, help="trials of each study")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of every call (OMP_NUM_THREADS) and of RecBole")
    parser.add_argument("--no-recbole", action="store_true", help="skip RecBole's fits")
    parser.add_argument("--reuse-defaults", action="store_true",
                        help="keep results.json's default-config rows of each dataset (and "
                             "RecBole's, with --no-recbole) instead of fitting them again")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "tune"))
    parser.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"),
                        help="folder holding ml-100k.zip (default $RECSYS_MIRROR)")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of OUT/results.json and exit")
    args = parser.parse_args(argv)
    path = Path(args.out) / "results.json"
    if args.table_only:
        print(table(json.loads(path.read_text())))
        return 0
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if not args.no_recbole and not importable("recbole"):
        sys.exit("bench_tune: RecBole is not importable; `pip install recbole==1.2.1` (the bench "
                 "extra) or pass --no-recbole")
    ENV.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": machine_info(), "versions": versions(),
                               "trials": args.trials, "threads": args.threads, "datasets": {}}
    before = json.loads(path.read_text()).get("datasets", {}) if path.exists() else {}
    for name in args.datasets.split(","):
        results["datasets"][name] = {}
        run_dataset(name, args, results["datasets"][name],
                    lambda: save_merged(path, results), before.get(name, {}))
    with contextlib.suppress(OSError):
        results = json.loads(path.read_text())
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

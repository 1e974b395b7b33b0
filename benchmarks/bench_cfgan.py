"""CFGAN beside tuned EASE, Mult-VAE and ALS on one split, through the public CLI.

The split is the one the CFGAN paper reports on (Chae et al., CIKM 2018): ml-100k with every
rating as a positive, a per-user random 80/20 split, and here 10% of each user's training part
carved out for validation (epochs and hyper-parameters are chosen on it, never on the test part):

    recsys prepare ml-100k --split random --implicit-threshold 1 --test-fraction 0.2 \\
        --valid-fraction 0.1 --seed 0 --out DIR

Each system is fitted by ``recsys train MODEL --data DIR --out RUN --config configs/MODEL.yaml``
(the baselines with ``--tune``: their config's grid searched on validation NDCG@20; CFGAN with
its config's values, chosen on validation, unless ``--tune-cfgan``) and scored by
``recsys evaluate RUN --data DIR --metrics precision@20,recall@20,ndcg@20 --json F``.

    RECSYS_MIRROR=../shared/datasets python benchmarks/bench_cfgan.py --threads 1
    python benchmarks/bench_cfgan.py --models cfgan,ease   # a subset
    python benchmarks/bench_cfgan.py --set based=user      # CFGAN config overrides
    python benchmarks/bench_cfgan.py --cfgan-seeds 0,1,2   # CFGAN's spread over seeds

Prints a Markdown table and writes ``benchmarks/out/cfgan/results.json`` and ``results.md``.
Recall@20 is capped (divided by min(20, |relevant|)); the paper's is not (0.360 there).
"""

from __future__ import annotations

import argparse
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

from measure import training_summary  # noqa: E402
from render import rows_markdown  # noqa: E402
from targets import CFGAN_TARGET as TARGET  # noqa: E402

from recsys.data.io import write_json  # noqa: E402

METRICS = "precision@20,recall@20,ndcg@20"
SELECT_BY = "ndcg@20"  # validation metric for --tune and early stopping
PREP = ["--split", "random", "--implicit-threshold", "1", "--test-fraction", "0.2",
        "--valid-fraction", "0.1", "--seed", "0"]
MODELS = ("cfgan", "ease", "multvae", "als")
PAPER = {"precision@20": 0.294, "recall@20": 0.360, "ndcg@20": 0.433}  # their split, test epochs
THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for the CLI calls, from --threads


def recsys(*args: str) -> None:
    """One public CLI call; its output goes to our stderr, a failure stops the benchmark."""
    cmd = [sys.executable, "-m", "recsys.cli", *args]
    print("$ recsys " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **THREADS}
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"bench_cfgan: `recsys {' '.join(args)}` failed (exit {done.returncode})")


def prepare(out: Path, mirror: str | None) -> Path:
    target = out / "data" / "ml100k-all"
    if not (target / "metadata.json").is_file():
        extra = ["--mirror", mirror] if mirror else []
        recsys("prepare", "ml-100k", *PREP, *extra, "--out", str(target), "--quiet")
    return target


def fit_and_evaluate(model: str, data: Path, runs: Path, tune: bool, overrides: list[str],
                     seed: int | None = None) -> dict[str, Any]:
    label = model if seed is None else f"{model}-seed{seed}"
    run = runs / label
    args = ["train", model, "--data", str(data), "--out", str(run), "--overwrite", "--quiet",
            "--no-track", "--metric", SELECT_BY, "--metrics", METRICS]
    config = REPO / "configs" / f"{model}.yaml"
    if config.is_file():
        args += ["--config", str(config.relative_to(REPO))]
    if tune:
        args.append("--tune")
    for item in overrides:
        args += ["--set", item]
    if seed is not None:
        args += ["--seed", str(seed)]
    started = time.perf_counter()
    recsys(*args)
    wall = time.perf_counter() - started
    scores = runs / f"{label}.json"
    recsys("evaluate", str(run), "--data", str(data), "--metrics", METRICS, "--json",
           str(scores), "--no-ci")
    info = json.loads((run / "run.json").read_text())
    row: dict[str, Any] = {"model": model if seed is None else f"{model} (seed {seed})",
                           **{k: float(v) for k, v in json.loads(scores.read_text()).items()},
                           "fit_seconds": float(info["fit_seconds"]),
                           "tune_seconds": float(info.get("tune_seconds") or 0.0),
                           "wall_seconds": wall,
                           "tuned": (info.get("tuned") or {}).get("params")}
    row.update(training_summary(run, SELECT_BY))
    return row


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of several CFGAN seeds (metrics and seconds)."""
    keys = [*METRICS.split(","), f"valid_{SELECT_BY}", "fit_seconds"]
    return {"model": f"cfgan (mean of {len(rows)} seeds)",
            **{k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}}


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: the target, and CFGAN against EASE (CFGAN's seed mean if several)."""
    by = {r["model"].split(" (seed")[0]: r for r in rows}
    mean = next((r for r in rows if r["model"].startswith("cfgan (mean")), None)
    lines = []
    cfgan, ease = mean or by.get("cfgan"), by.get("ease")
    if cfgan is not None:
        met = all(cfgan[k] >= v for k, v in TARGET.items())
        seeds = [r for r in rows if r["model"].startswith("cfgan (seed")]
        spread = ("" if len(seeds) < 2 else
                  f"; seeds P@20 {min(r['precision@20'] for r in seeds):.4f}.."
                  f"{max(r['precision@20'] for r in seeds):.4f}, NDCG@20 "
                  f"{min(r['ndcg@20'] for r in seeds):.4f}..{max(r['ndcg@20'] for r in seeds):.4f}")
        lines.append(f"CFGAN target (P@20 >= {TARGET['precision@20']}, NDCG@20 >= "
                     f"{TARGET['ndcg@20']}): {'met' if met else 'NOT met'} by {cfgan['model']} "
                     f"(P@20 {cfgan['precision@20']:.4f}, NDCG@20 {cfgan['ndcg@20']:.4f}{spread}; "
                     f"paper {PAPER['precision@20']} / {PAPER['ndcg@20']} on its split with "
                     "test-set epoch selection)")
    if cfgan is not None and ease is not None:
        diffs = {k: cfgan[k] - ease[k] for k in ("precision@20", "ndcg@20")}
        side = "below" if all(d < 0 for d in diffs.values()) else (
            "above" if all(d > 0 for d in diffs.values()) else "level with")
        lines.append(f"CFGAN is {side} tuned EASE: P@20 {diffs['precision@20']:+.4f}, NDCG@20 "
                     f"{diffs['ndcg@20']:+.4f}, at {cfgan['fit_seconds']:.0f} s of training "
                     f"against EASE's {ease['fit_seconds']:.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "cfgan"))
    parser.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"),
                        help="dataset mirror holding ml-100k (default $RECSYS_MIRROR)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--tune-cfgan", action="store_true",
                        help="grid-search CFGAN's `tune:` section too (each candidate is a "
                             "full GAN fit: slow on CPU)")
    parser.add_argument("--cfgan-seeds", default=None, metavar="LIST",
                        help="fit CFGAN once per seed (e.g. 0,1,2) and report their mean too "
                             "(default: one fit with the config's seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a CFGAN config key (repeatable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of every CLI call (OMP_NUM_THREADS; default: "
                             "torch's own). On a machine whose cores are shared, 1 is faster and "
                             "steadier: spinning OpenMP threads stall when cores are taken")
    args = parser.parse_args(argv)
    if args.threads is not None:
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    out = Path(args.out)
    data = prepare(out, args.mirror)
    seeds = ([int(x) for x in args.cfgan_seeds.split(",") if x.strip()] if args.cfgan_seeds
             else [None])
    rows = []
    for m in models:
        if m != "cfgan":
            rows.append(fit_and_evaluate(m, data, out / "runs", True, []))
            continue
        fits = [fit_and_evaluate(m, data, out / "runs", args.tune_cfgan, args.set, seed)
                for seed in seeds]
        rows += fits + ([mean_row(fits)] if len(fits) > 1 else [])

    columns = ["model", *METRICS.split(","), f"valid_{SELECT_BY}", "best_epoch", "epochs_run",
               "fit_seconds", "tune_seconds", "tuned"]
    table = rows_markdown(rows, columns)
    lines = verdict(rows)
    text = (f"## ml-100k, every rating positive, random 80/20 (10% of train for validation), "
            f"test part\n\n{table}\n\n" + "\n".join(f"- {ln}" for ln in lines) + "\n")
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    write_json(out / "results.json", {"data": str(data), "prepare": PREP, "rows": rows,
                                      "cfgan_overrides": args.set, "verdict": lines,
                                      "torch_threads": args.threads or _threads()})
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())

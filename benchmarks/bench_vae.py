"""Autoencoders (Mult-VAE, Mult-DAE, RecVAE, CDAE) against tuned EASE, through the public CLI.

Every number comes from ``recsys prepare`` / ``recsys train`` (early stopping on the validation
part, never the test part) / the test metrics ``recsys train`` writes, in one run, all systems on
the same split. Three tables:

1. quality: ml-100k, ratings >= 4 as positives, users with >= 5 positives, per-user random 80/20,
   10% of each user's training part carved out for validation; NDCG@100 (+ Recall@20/50).
2. strong: strong generalisation (Liang et al. 2018) on ml-latest-small and ml-100k: 1/10 of the
   users held out for validation and 1/10 for test, 80% of their items folded in, 20% scored.
3. speed: Mult-VAE's fit to convergence (training + per-epoch validation + early stopping) on the
   quality split, CPU.

RecBole 1.2.1 (MultiVAE, MultiDAE) runs on the same split when it is importable (``pip install
recbole==1.2.1``, the ``bench`` extra); otherwise its figures from ../shared/PROTOCOLS.md (same
protocol, their own seed) are cited and marked as such.

    python benchmarks/bench_vae.py                    # all three tables
    python benchmarks/bench_vae.py --only quality     # or strong, speed (repeatable)
    python benchmarks/bench_vae.py --tune             # re-run the configs' `tune:` grids first
    python benchmarks/bench_vae.py --threads 1        # one torch thread per call (shared CPUs)

ml-100k comes from the dataset mirror (``RECSYS_MIRROR`` or ``--mirror``); ml-latest-small is
embedded. Results: a Markdown table on stdout and ``benchmarks/out/vae/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from measure import importable, training_summary  # noqa: E402
from peers import recbole_fit  # noqa: E402
from render import rows_markdown  # noqa: E402

from recsys.data.io import write_json  # noqa: E402

METRICS = "ndcg@100,recall@20,recall@50"
THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for the CLI calls, from --threads
AUTOENCODERS = ("multvae", "multdae", "recvae", "cdae")

# RecBole 1.2.1 on our protocol (PROTOCOLS.md "Peers measured here": same filters and 80/20
# split, their own seed; 10% of train for early stopping; 2 CPU cores).
RECBOLE_CITED = {"MultiVAE": {"ndcg@100": 0.428, "recall@20": 0.372, "fit_seconds": 40.0},
                 "MultiDAE": {"ndcg@100": 0.435, "recall@20": 0.377, "fit_seconds": 46.0},
                 "RecVAE": {"ndcg@100": 0.432, "recall@20": 0.380, "fit_seconds": 82.0}}

QUALITY_PREP = ["--split", "random", "--implicit-threshold", "4", "--min-user-interactions", "5",
                "--test-fraction", "0.2", "--valid-fraction", "0.1", "--seed", "0"]
# Liang et al.'s filters (ratings > 3.5 kept, users with >= 5) and their seed.
STRONG_PREP = ["--split", "strong", "--implicit-threshold", "4", "--min-user-interactions", "5",
               "--test-fraction", "0.2", "--seed", "98765"]


def recsys(*args: str) -> float:
    """One public CLI call; its output goes to our stderr, a failure stops the benchmark.

    Returns the CPU seconds (user + system, all threads) the call used: on a shared machine this
    is steadier than wall time.
    """
    cmd = [sys.executable, "-m", "recsys.cli", *args]
    print("$ recsys " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **THREADS}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=sys.stderr, stderr=sys.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"bench_vae: `recsys {' '.join(args)}` failed (exit {done.returncode})")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepare(name: str, options: list[str], out: Path, mirror: str | None) -> Path:
    target = out / "data" / f"{name}-{options[1]}"
    if not (target / "metadata.json").is_file():
        extra = ["--mirror", mirror] if mirror else []
        recsys("prepare", name, *options, *extra, "--out", str(target), "--quiet")
    return target


def train(model: str, data: Path, run: Path, tune: bool) -> dict[str, Any]:
    """Fit one system with its config; return its test metrics and timings from run.json."""
    args = ["train", model, "--data", str(data), "--out", str(run), "--overwrite", "--quiet",
            "--no-track", "--metrics", METRICS]
    config = REPO / "configs" / f"{model}.yaml"
    if config.is_file():
        args += ["--config", str(config.relative_to(REPO))]
    if model == "ease" or tune:
        args.append("--tune")
    started = time.perf_counter()
    cpu = recsys(*args)
    wall = time.perf_counter() - started
    info = json.loads((run / "run.json").read_text())
    row = {"model": model, **{k: float(v) for k, v in info["metrics"].items()},
           "fit_seconds": float(info["fit_seconds"]),
           "tune_seconds": float(info.get("tune_seconds") or 0.0), "wall_seconds": wall,
           "cpu_seconds": cpu,
           "tuned": (info.get("tuned") or {}).get("params")}
    row.update(training_summary(run))
    return row


# -- RecBole on the same split (optional) --------------------------------------------------------


def run_recbole(model: str, data: Path, out: Path) -> dict[str, Any]:
    """RecBole's ``model`` on our three parts (benchmarks/peers.py ``recbole_fit``)."""
    return recbole_fit(model, data, out)


# -- the tables ----------------------------------------------------------------------------------


def quality(out: Path, mirror: str | None, tune: bool) -> dict[str, Any]:
    data = prepare("ml-100k", QUALITY_PREP, out, mirror)
    rows = [train(m, data, out / "runs" / "quality" / m, tune) for m in ("ease", *AUTOENCODERS)]
    if importable("recbole"):
        peers = [run_recbole(m, data, out) for m in ("MultiVAE", "MultiDAE")]
    else:
        peers = [{"model": f"RecBole {m} (cited)", **v, "measured": False}
                 for m, v in RECBOLE_CITED.items()]
    return {"data": str(data), "rows": rows, "peers": peers}


def strong(out: Path, mirror: str | None, tune: bool) -> dict[str, Any]:
    tables = {}
    for name in ("ml-latest-small", "ml-100k"):
        data = prepare(name, STRONG_PREP, out, mirror)
        rows = [train(m, data, out / "runs" / "strong" / name / m, tune)
                for m in ("ease", *AUTOENCODERS)]
        tables[name] = {"data": str(data), "rows": rows}
    return tables


def speed(out: Path, mirror: str | None, quality: dict[str, Any] | None) -> dict[str, Any]:
    """Mult-VAE's fit time on the quality split against RecBole MultiVAE's (same run if
    importable, else cited); reuses the quality table's fits when it ran."""
    data = prepare("ml-100k", QUALITY_PREP, out, mirror)
    rows = (quality or {}).get("rows", [])
    vae = next((r for r in rows if r["model"] == "multvae"), None)
    if vae is None:
        vae = train("multvae", data, out / "runs" / "quality" / "multvae", False)
    peers = (quality or {}).get("peers", [])
    peer = next((p for p in peers if p["model"].startswith("RecBole MultiVAE")), None)
    if peer is None:
        peer = (run_recbole("MultiVAE", data, out) if importable("recbole")
                else {"model": "RecBole MultiVAE (cited)", **RECBOLE_CITED["MultiVAE"],
                      "measured": False})
    return {"multvae": vae, "recbole_multivae": peer,
            "ratio": vae["fit_seconds"] / peer["fit_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=("quality", "strong", "speed"),
                        help="run only these tables (repeatable; default all)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "vae"))
    parser.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"),
                        help="dataset mirror holding ml-100k (default $RECSYS_MIRROR)")
    parser.add_argument("--tune", action="store_true",
                        help="grid-search each autoencoder's `tune:` section on validation first")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of every CLI call (OMP_NUM_THREADS; default: "
                             "torch's choice). On a machine shared with other jobs 1 is far "
                             "steadier: spinning OpenMP threads stall when cores are taken")
    args = parser.parse_args(argv)
    if args.threads is not None:
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    only = set(args.only or ("quality", "strong", "speed"))
    out = Path(args.out)
    results: dict[str, Any] = {"torch_threads": args.threads or _threads(),
                               "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    cols = ["model", "ndcg@100", "recall@20", "recall@50", "valid_ndcg@100", "best_epoch",
            "epochs_run", "fit_seconds", "cpu_seconds"]

    if "quality" in only:
        q = quality(out, args.mirror, args.tune)
        results["quality"] = q
        print("\n## ml-100k, ratings >= 4, users >= 5 positives, random 80/20 (test part)\n")
        print(rows_markdown(q["rows"], cols))
        print()
        print(rows_markdown(q["peers"], ["model", "ndcg@100", "recall@20", "fit_seconds"]))
        if not any(p["measured"] for p in q["peers"]):
            print("\n(RecBole is not importable here: its rows are the figures cited in "
                  "PROTOCOLS.md, measured on the same protocol with another seed.)")
    if "strong" in only:
        s = strong(out, args.mirror, args.tune)
        results["strong"] = s
        for name, table in s.items():
            print(f"\n## strong generalisation, {name} (held-out test users)\n")
            print(rows_markdown(table["rows"], cols))
    if "speed" in only:
        sp_ = speed(out, args.mirror, results.get("quality"))
        results["speed"] = sp_
        v, p = sp_["multvae"], sp_["recbole_multivae"]
        print("\n## Mult-VAE fit to convergence on ml-100k (CPU)\n")
        print(f"recsys multvae: fit {v['fit_seconds']:.1f} s ({v.get('epochs_run')} epochs, best "
              f"{v.get('best_epoch')}; the whole `recsys train` call used "
              f"{v['cpu_seconds']:.1f} CPU s), test ndcg@100 {v['ndcg@100']:.4f}")
        peer = "measured" if p["measured"] else "cited from PROTOCOLS.md"
        print(f"RecBole MultiVAE ({peer}): {p['fit_seconds']:.1f} s, ndcg@100 "
              f"{p['ndcg@100']:.3f}; ratio {sp_['ratio']:.2f}")
    results["load_average_after"] = os.getloadavg()
    write_json(out / "results.json", results)
    print(f"\nresults written to {out / 'results.json'}", file=sys.stderr)
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())

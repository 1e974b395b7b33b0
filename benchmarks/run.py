"""The benchmark suite, one command: ours against peers, real and synthetic data, RESULTS.md.

It prepares, trains, evaluates and scores our models and the peers (the ``bench`` extra:
RecBole 1.2.1, Surprise; implicit is always installed) on the same data in the same run, and
writes benchmarks/RESULTS.md.

Sections (``--only``, repeatable or comma-separated; default all):

- ``real`` (CPU, always): ml-100k (from the dataset mirror) and ml-latest-small (embedded):
  prepare time; the accuracy table (pop, tuned ItemKNN / EASE / ALS, Mult-VAE, Mult-DAE, RecVAE,
  CDAE) with fit seconds, through ``recsys prepare`` / ``recsys train``; full-ranking evaluation
  time of all users (benchmarks/bench_eval.py); a 30-trial Mult-DAE study (``recsys train
  multdae --tune --trials 30``; 5 trials under ``--quick``) beside its defaults on ml-100k, one
  thread each, wall times and test NDCG@100.
- ``ratings`` (CPU): I-AutoRec RMSE on ml-100k's canonical folds u1..u5 beside the global mean
  and Surprise SVD when installed (benchmarks/bench_autorec.py).
- ``peers``: RecBole MultiVAE / MultiDAE / RecVAE / EASE on the same ml-100k split, implicit ALS
  untuned (64 factors), Surprise SVD on u1..u5. A peer that is not installed is replaced by the
  figure ../shared/PROTOCOLS.md (or the peer's README) cites, marked "cited, not measured here".
- ``cfgan``: CFGAN on its own protocol (ml-100k, every rating a positive) beside tuned EASE,
  Mult-VAE and ALS (benchmarks/bench_cfgan.py; ~10 minutes on CPU).
- ``synthetic`` (CPU): ML-20M shape (136,677 x 20,108, ~10M interactions;
  recsys.data.synthetic) at ``--scale`` and 2x, 4x of it: prepare of the raw ratings.csv
  (bench_prepare.py, also at the full 20M rows), full-ranking evaluation of all users
  (bench_eval.py), top-100 for all users (bench_topk.py), one Mult-VAE training epoch, batch 500
  (benchmarks/workers.py vae-epoch): time and peak memory.
- ``scale`` (CPU, only when asked: ``--only scale``; tens of minutes): 10x ML-20M's users
  (issue 21): prepare of a ``--scale-rows`` ratings.csv (bench_prepare.py), full-ranking
  evaluation and top-100 of every user at ``--scale-users`` and two batch sizes, and `recsys
  recommend` through the local and the Spark engine at ``--spark-users`` (bench_scale.py).
- ``gpu`` (when torch sees a CUDA device; left out otherwise): the same evaluation, top-100 and
  Mult-VAE epoch (fp32, tf32, bf16) at ``--gpu-scale`` (default the full ML-20M shape) and its
  multiples, with achieved TFLOP/s and modelled memory bandwidth against the H100's figures; the
  GPU and its host are recorded with the section.

Every measurement runs in a fresh process (peak memory is its own); timings are medians of
``--repeat`` runs; the issue's targets are listed as met / not met / not measured here.
``--merge`` keeps the sections not run now from the last results.json in ``--out`` (each
section's command, date and machine are listed in RESULTS.md), to redo one section without the
others; ``--merge-from`` takes them from another run's results.json, e.g. a GPU machine's.

This file parses the options and merges earlier runs; suite.py runs the sections (measure.py:
fresh processes, the machine, the versions; workers.py: the Mult-VAE epoch and RecBole workers;
peers.py: RecBole on our split and the cited figures), targets.py holds the targets as data and
render.py writes RESULTS.md (flops.py: the cost models behind TFLOP/s and GB/s).

    python benchmarks/run.py                          # everything (gpu section if CUDA)
    python benchmarks/run.py --repeat 3 --scale 0.05  # CPU synthetic: 0.05, 0.1, 0.2 of ML-20M
    python benchmarks/run.py --only gpu --out /tmp/g  # on a GPU machine; then, on a CPU one,
    python benchmarks/run.py --merge-from /tmp/g/results.json  # the rest beside its figures
    python benchmarks/run.py --render OUT/results.json --merge-from /tmp/g/results.json
    python benchmarks/run.py --render OUT/results.json --only scale  # rewrite that section only
    python benchmarks/run.py --quick                  # smoke run, a few minutes
    python benchmarks/run.py --only synthetic --scale 0.1
    make bench                                        # installs the bench extra, then runs this
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from measure import REPO, machine_info, machine_line, now_utc, versions  # noqa: E402
from render import SECTION_MARKDOWN, render  # noqa: E402
from suite import DATASETS, MODELS, Suite  # noqa: E402

SECTIONS = ("real", "ratings", "peers", "cfgan", "synthetic", "scale", "gpu")
OPT_IN = {"scale"}  # run only when --only names them (tens of minutes, 100M rows)
# Where each section keeps its figures in results.json.
SECTION_KEYS = {"real": "real", "ratings": "autorec", "peers": "peers", "cfgan": "cfgan",
                "synthetic": "synthetic", "scale": "scale", "gpu": "gpu"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--only", action="append", default=None, metavar="SECTION",
                   help=f"run only these sections ({', '.join(SECTIONS)}; repeatable or "
                        "comma-separated; default all)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs of each speed measurement, the median is kept (default 3)")
    p.add_argument("--fit-repeat", type=int, default=1,
                   help="fits of each model (median fit seconds; metrics are deterministic)")
    p.add_argument("--scale", type=float, default=None,
                   help="CPU synthetic size as a fraction of ML-20M's users (default 0.05); "
                        "--sizes multiplies it")
    p.add_argument("--gpu-scale", type=float, default=1.0,
                   help="GPU synthetic size as a fraction of ML-20M's users (default 1)")
    p.add_argument("--sizes", default="1,2,4", help="multiples of --scale (default 1,2,4)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: repeat 1, 2 epochs per neural model, ml-latest-small, tiny "
                        "scales; results go to the --out folder, not benchmarks/RESULTS.md")
    p.add_argument("--datasets", default=",".join(DATASETS), help="real datasets to run")
    p.add_argument("--models", default=",".join(MODELS),
                   help="models of the accuracy table (registry names)")
    p.add_argument("--folds", default="1,2,3,4,5", help="ml-100k folds for AutoRec / SVD")
    p.add_argument("--mirror", default=None,
                   help="dataset mirror holding ml-100k (default $RECSYS_MIRROR, else "
                        "../shared/datasets next to the repository if present)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of every measured process (OMP_NUM_THREADS). Default: 1 "
                        "when the machine is already busy (1-min load average >= usable cores "
                        "- 0.5), else torch's choice: OpenMP threads that wait on a descheduled "
                        "sibling made small-batch training ~25x slower on a shared 2-core "
                        "machine; 0 = torch's choice always")
    p.add_argument("--scale-rows", type=float, default=1e8,
                   help="scale section: ratings.csv rows to prepare (users in proportion, "
                        "1.37M at the default 100M)")
    p.add_argument("--scale-users", default="136677,1366770",
                   help="scale section: user counts of the evaluation and top-100")
    p.add_argument("--scale-batches", default="1024,4096",
                   help="scale section: users per scoring batch")
    p.add_argument("--spark-users", default="5000,20000",
                   help="scale section: user counts of the local vs Spark engine comparison")
    p.add_argument("--precisions", default="fp32,tf32,bf16",
                   help="Mult-VAE epoch precisions of the gpu section (the CPU runs fp32)")
    p.add_argument("--vae-batches", type=int, default=None,
                   help="CPU: time this many batches per Mult-VAE epoch and scale up (default "
                        "3; 0 = whole epoch); the GPU always runs whole epochs")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "suite"),
                   help="working folder: prepared data, runs, logs, results.json")
    p.add_argument("--merge", action="store_true",
                   help="keep the sections not run now from OUT/results.json (RESULTS.md lists "
                        "each section's command, date and machine)")
    p.add_argument("--merge-from", action="append", default=[], metavar="RESULTS_JSON",
                   help="also take the sections not run now from this results.json of another "
                        "run (e.g. the gpu section from a GPU machine); repeatable, later wins")
    p.add_argument("--render", metavar="RESULTS_JSON", default=None,
                   help="only rewrite the Markdown from a saved results.json (no measuring); "
                        "with --merge-from, the combined results.json goes to --out; with "
                        "--only, only those sections of an existing --results file are "
                        "replaced (or added), the rest of it is kept as it is")
    p.add_argument("--results", default=None,
                   help="the Markdown to write (default benchmarks/RESULTS.md for a full run, "
                        "OUT/RESULTS.md with --quick or --only)")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    only = {s.strip() for item in (args.only or []) for s in item.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.partial = bool(only)
    args.sections = [s for s in SECTIONS if s in only or (not only and s not in OPT_IN)]
    if "gpu" in args.sections and not cuda:
        if "gpu" in only:
            p.error("--only gpu needs a CUDA device, and torch sees none here")
        # Not an error on a CPU machine: the section is left out (and --merge keeps an earlier
        # GPU run's figures).
        args.sections.remove("gpu")
    if args.quick:
        args.repeat = args.repeat or 1
        args.scale = args.scale or 0.01
        args.sizes = "1,2" if args.sizes == "1,2,4" else args.sizes
        if args.datasets == ",".join(DATASETS):
            args.datasets = "ml-latest-small"
        if args.models == ",".join(MODELS):
            args.models = "pop,ease,multvae"
        args.folds = "1"
        args.vae_batches = args.vae_batches if args.vae_batches is not None else 1
        args.gpu_scale = min(args.gpu_scale, 0.05)
    args.repeat = max(1, args.repeat or 3)
    args.fit_repeat = max(1, args.fit_repeat)
    args.scale = args.scale or 0.05
    args.sizes = [float(x) for x in args.sizes.split(",") if x.strip()]
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = set(args.datasets) - set(DATASETS)
    if bad:
        p.error(f"unknown dataset(s) {sorted(bad)}; choose from {', '.join(DATASETS)}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if args.vae_batches is None:
        args.vae_batches = 3
    args.threads_reason = "given"
    if args.threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        load = os.getloadavg()[0]
        busy = load >= cores - 0.5
        args.threads = 1 if busy else None
        args.threads_reason = (f"auto: load average {load:.2f} on {cores} cores" if busy
                               else "auto: machine idle")
    elif args.threads == 0:
        args.threads = None
    missing = [x for x in args.merge_from if not Path(x).is_file()]
    if missing:  # checked here for --render too, before anything is measured or written
        p.error(f"--merge-from {missing[0]}: no such file")
    if args.mirror is None:
        default = REPO.parent / "shared" / "datasets"
        args.mirror = os.environ.get("RECSYS_MIRROR") or (str(default) if default.is_dir()
                                                          else None)
    if args.results is None:
        scratch = args.quick or (args.partial and not args.merge)
        args.results = (str(Path(args.out) / "RESULTS.md") if scratch
                        else str(REPO / "benchmarks" / "RESULTS.md"))
    return args


def write_markdown(results: dict[str, Any], path: Path) -> None:
    from recsys.data.io import atomic_path

    text = render(results, results["run"]["command"])
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def splice_markdown(results: dict[str, Any], path: Path, sections: list[str]) -> None:
    """Replace (or add, before the GPU section or at the end) in ``path`` the Markdown of
    ``sections`` only, each a block from its ``## `` heading to the next: rows measured
    elsewhere (a GPU machine's) stay as they were written."""
    from recsys.data.io import atomic_path

    text = path.read_text() if path.is_file() else render(results, results["run"]["command"])
    for section in sections:
        block = SECTION_MARKDOWN[section](results)
        if not block:
            raise SystemExit(f"--only {section}: the results hold no figures for it")
        new = "\n".join(block).rstrip("\n") + "\n\n"
        heading = block[0]
        start = text.find(heading + "\n")
        if start < 0:
            gpu = text.find("\n## Synthetic ML-20M shape, GPU")
            start = end = gpu + 1 if gpu >= 0 else len(text)
        else:
            nxt = text.find("\n## ", start + len(heading))
            end = nxt + 1 if nxt >= 0 else len(text)
        text = text[:start] + new + text[end:]
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def merge_sections(results: dict[str, Any], provenance: dict[str, Any], sources: list[Path],
                   keep: list[str]) -> None:
    """Copy into ``results`` every section of the saved runs ``sources`` (later files win)
    except those in ``keep`` (measured now), with where and when each was measured."""
    from recsys.data.io import read_json

    for source in sources:
        old = read_json(source)
        for section in SECTIONS:
            key = SECTION_KEYS[section]
            ran = old.get("provenance", {s: None for s in SECTIONS})  # old files: all of them
            if section not in keep and key in old and section in ran:
                results[key] = old[key]
                provenance[section] = dict(old.get("provenance", {}).get(section) or {
                    "command": old["run"]["command"], "date": old["run"]["date"],
                    "commit": old["versions"]["git commit"],
                    "load_start": old["run"]["load_start"][0]})
                provenance[section].setdefault("machine", machine_line(old["machine"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from recsys.data.io import read_json, write_json

    if args.render:
        results = read_json(args.render)
        if args.merge_from:
            provenance = results.setdefault("provenance", {})
            merge_sections(results, provenance, [Path(x) for x in args.merge_from], keep=[])
            write_json(Path(args.out) / "results.json", results)
            print(f"wrote {Path(args.out) / 'results.json'}")
        if args.partial:
            splice_markdown(results, Path(args.results), args.sections)
        else:
            write_markdown(results, Path(args.results))
        print(f"wrote {args.results}")
        return 0

    suite = Suite(args)
    suite.out.mkdir(parents=True, exist_ok=True)
    if not args.merge:
        shutil.rmtree(suite.logs, ignore_errors=True)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = suite.results
    results.update(machine=machine_info(), versions=versions(), quick=args.quick)
    load_start = os.getloadavg()
    here = {"command": command, "date": now_utc(), "commit": results["versions"]["git commit"],
            "load_start": load_start[0], "machine": machine_line(results["machine"])}
    provenance: dict[str, Any] = {s: here for s in args.sections}
    previous = suite.out / "results.json"
    sources = ([previous] if args.merge and previous.is_file() else []) + [
        Path(x) for x in args.merge_from]
    merge_sections(results, provenance, sources, keep=args.sections)
    results["provenance"] = provenance
    suite.say(f"{results['machine']['cpu']}, {results['machine']['usable_cores']} cores, GPU: "
              f"{(results['machine']['gpu'] or {}).get('name', 'none')}; load {load_start[0]:.2f}"
              f"; sections: {', '.join(args.sections)}; repeat {args.repeat}")
    for section in args.sections:
        getattr(suite, section)()
    results["failures"] = suite.failures
    results["run"] = {"date": here["date"], "command": command, "repeat": args.repeat,
                      "fit_repeat": args.fit_repeat, "threads": args.threads,
                      "threads_reason": args.threads_reason,
                      "sections": args.sections, "load_start": load_start,
                      "load_end": os.getloadavg(),
                      "minutes": (time.perf_counter() - suite.started) / 60}
    write_json(suite.out / "results.json", results)
    target = Path(args.results)
    write_markdown(results, target)
    suite.say(f"wrote {target} and {suite.out / 'results.json'}"
              + (f"; {len(suite.failures)} step(s) failed" if suite.failures else ""))
    return 1 if suite.failures else 0


if __name__ == "__main__":
    sys.exit(main())

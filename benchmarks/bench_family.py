"""The autoencoder family's options against the plain models (issue 19), through the public CLI.

Two options landed off by default: the contractive penalty (``contractive``, AutoRec and Mult-DAE;
the weight of ||J_encoder||_F^2, recsys/models/nn.py `contractive_encode`) and stacked encoders
for AutoRec (``stacked_dims``: widths after ``hidden``, mirrored by the decoder). Each option's
value is chosen on VALIDATION only, against the plain model, by the project's one-standard-error
rule (`recsys.models.tuning.select`, as `recsys train --tune` applies it): the option's best value
replaces plain only when its paired gain over the validation users exceeds one standard error.
Then the test figures of plain and of each option's best value (chosen or not, so the reader sees
what the rule saved or cost) come from the default commands (refit on train + valid).

1. ``autorec``: I-AutoRec on ml-100k's canonical folds (``recsys prepare ml-100k --split
   ml100k-uN``: uN.base with 10% of each user's ratings as the validation part, uN.test as the
   test part less the ~30 ratings whose item never occurs in the base file). Candidates are fitted
   on u{--select-fold} with ``--no-refit`` and scored on its validation part (``recsys evaluate
   --part valid --per-user``); RMSE's paired gain is taken on the per-user shares of the squared
   error (their mean is the MSE, so users are the resampling unit as for NDCG), and reported on
   the RMSE scale (dMSE / (RMSE_a + RMSE_b)). Test RMSE per fold for --folds.
2. ``multdae``: Mult-DAE on the README's ml-100k top-N protocol (bench_vae.py's quality split:
   ratings >= 4, users >= 5 positives, random 80/20, 10% of train for validation, seed 0);
   candidates on validation NDCG@100, then test NDCG@100 / Recall@20 with percentile bootstrap
   intervals over users (`recsys.evaluation.stats.bootstrap_ci`) and the paired gain over plain.

One seed (--seed, default 0) for every fit. Results: Markdown on stdout and OUT/results.json
(default benchmarks/out/family), rewritten after each section.

    RECSYS_MIRROR=../shared/datasets python benchmarks/bench_family.py
    python benchmarks/bench_family.py --only multdae --dae-contractive 0.01,0.1
    python benchmarks/bench_family.py --quick --explicit-data DIR --implicit-data DIR  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_vae import QUALITY_PREP, THREADS, prepare, recsys  # noqa: E402
from measure import machine_info, machine_line, now_utc  # noqa: E402
from render import num, table  # noqa: E402

from recsys.data.io import atomic_path, read_json, write_json  # noqa: E402
from recsys.evaluation.metrics import RATING_METRICS, lower_is_better  # noqa: E402
from recsys.evaluation.stats import bootstrap_ci, paired_gain  # noqa: E402
from recsys.models.tuning import select  # noqa: E402

SECTIONS = ("multdae", "autorec")  # the shorter first
# AutoRec's grid: at the plain model's optimum on u1 (lambda 100) the penalty summed over the
# item rows is ~7,900 against a squared error of ~36,000 and an L2 term of ~15,000, so these
# weights make it ~2%, 7%, 22% and 65% of the squared error.
AUTOREC_CONTRACTIVE = "0.1,0.3,1,3"
AUTOREC_STACKED = "250;500;500,250"  # n -> 500 -> 250 -> 500 -> n, etc.
# Mult-DAE's: at the plain model's optimum the penalty is ~1,770 a user row against a multinomial
# NLL of ~234, so these weights make it ~0.8%, 2.3%, 7.6%, 23% and 76% of the likelihood term.
DAE_CONTRACTIVE = "0.001,0.003,0.01,0.03,0.1"
DAE_METRICS = "ndcg@100,recall@20"


# -- one fit, one evaluation -----------------------------------------------------------------


def fit(model: str, data: Path, run: Path, sets: dict[str, Any], *, refit: bool,
        metrics: str, seed: int) -> dict[str, Any]:
    """``recsys train MODEL`` with ``--set`` for each of ``sets``; its test metrics and
    training record from run.json."""
    args = ["train", model, "--data", str(data), "--out", str(run), "--overwrite", "--quiet",
            "--no-track", "--seed", str(seed), "--metrics", metrics]
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value)}"]  # JSON lists and numbers are YAML too
    if not refit:
        args.append("--no-refit")
    cpu = recsys(*args)
    info = read_json(run / "run.json")
    training = info.get("training") or {}
    return {"test": {k: float(v) for k, v in info["metrics"].items()},
            "fit_seconds": float(info["fit_seconds"]), "cpu_seconds": cpu,
            "best_epoch": training.get("best_epoch"), "epochs_run": training.get("epochs_run")}


def per_user(run: Path, part: str, metrics: str) -> pd.DataFrame:
    """``recsys evaluate RUN --part PART --per-user``: the per-user table, sorted by user."""
    path = run / f"per_user_{part}.csv"
    # Ours from an earlier run of this benchmark (`train --overwrite` leaves it, and `evaluate`
    # will not write over a file it cannot tell is its own).
    path.unlink(missing_ok=True)
    recsys("evaluate", str(run), "--part", part, "--metrics", metrics, "--per-user", str(path),
           "--no-ci", "--quiet")
    return pd.read_csv(path).sort_values("user", kind="stable").reset_index(drop=True)


def user_values(table_: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-user values whose mean is the figure being compared: the metric itself for a mean
    over users (NDCG), each user's share of the squared error for RMSE (mean = the MSE)."""
    if metric in RATING_METRICS:
        sse = table_["n_ratings"] * table_[metric] ** 2
        return (sse * len(table_) / table_["n_ratings"].sum()).to_numpy(np.float64)
    return table_[metric].to_numpy(np.float64)


def pooled(values: np.ndarray, metric: str) -> float:
    mean = float(np.nanmean(values))
    return float(np.sqrt(mean)) if metric in RATING_METRICS else mean


def on_scale(gain: float, metric: str, a: float, b: float) -> float:
    """A gain in `user_values` units on the metric's own scale (RMSE: dMSE / (RMSE_a + RMSE_b),
    exact for the means, so the standard error scales the same way)."""
    return gain / (a + b) if metric in RATING_METRICS else gain


# -- choosing on validation ------------------------------------------------------------------


def candidates(option: str, grid: str) -> list[Any]:
    """``--contractive 0.1,1`` -> [0.1, 1.0]; ``--stacked "250;500,250"`` -> [[250], [500, 250]]."""
    if option == "stacked_dims":
        return [[int(w) for w in part.split(",")] for part in grid.split(";") if part.strip()]
    return [float(v) for v in grid.split(",") if v.strip()]


def choose(model: str, data: Path, out: Path, options: dict[str, list[Any]], metric: str,
           base: dict[str, Any], seed: int) -> dict[str, Any]:
    """Plain and every option value fitted on train (no refit), scored on the validation part;
    per option the one-SE choice against plain (`recsys.models.tuning.select`)."""
    def one(name: str, sets: dict[str, Any]) -> dict[str, Any]:
        run = out / "runs" / model / "select" / name
        row = {"name": name, "sets": sets,
               **fit(model, data, run, {**base, **sets}, refit=False, metrics=metric, seed=seed)}
        values = user_values(per_user(run, "valid", metric), metric)
        row["valid"] = pooled(values, metric)
        print(f"  {model} {name}: valid {metric} {row['valid']:.4f} "
              f"(best epoch {row['best_epoch']}, {row['fit_seconds']:.0f} s)", file=sys.stderr)
        return {**row, "_values": values}

    lower = lower_is_better(metric)
    plain = one("plain", {})
    rows, choices = [plain], {}
    for option, values in options.items():
        family = [one(f"{option}={json.dumps(v)}", {option: v}) for v in values]
        for row in family:
            gain, se, users = paired_gain(plain["_values"], row["_values"])
            sign = 1.0 if lower else -1.0  # positive: the option beats plain
            row.update(gain=on_scale(sign * gain, metric, plain["valid"], row["valid"]),
                       se=on_scale(se, metric, plain["valid"], row["valid"]), users=users)
        scores = [plain["valid"]] + [r["valid"] for r in family]
        best = int(np.argmin(scores) if lower else np.argmax(scores))
        per = {0: plain["_values"], **{i + 1: r["_values"] for i, r in enumerate(family)}}
        chosen, record = select(best, 0, per, lower, "one-se")
        best_row = family[best - 1] if best else plain
        # The option's own best value, even when plain beats it: what the test table shows.
        top = family[int(np.argmin(scores[1:]) if lower else np.argmax(scores[1:]))]
        choices[option] = {"best": best_row["name"], "best_sets": best_row["sets"],
                           "best_option": top["name"], "best_option_sets": top["sets"],
                           "chosen": (family[chosen - 1] if chosen else plain)["name"],
                           "kept_plain": chosen == 0,
                           "gain": best_row.get("gain", 0.0), "se": best_row.get("se", 0.0),
                           "rule": record["rule"]}
        rows += family
    for row in rows:
        row.pop("_values")
    return {"metric": metric, "data": str(data), "rows": rows, "choices": choices}


def test_configs(selection: dict[str, Any], chosen_only: bool) -> dict[str, dict[str, Any]]:
    """Plain, and per option its best value on validation other than off (only a value the
    one-SE rule chose under ``chosen_only``)."""
    configs: dict[str, dict[str, Any]] = {"plain": {}}
    for c in selection["choices"].values():
        if not (chosen_only and c["kept_plain"]):
            configs[c["best_option"]] = c["best_option_sets"]
    return configs


# -- the sections ----------------------------------------------------------------------------


def autorec(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    folds = [int(f) for f in args.folds.split(",")]
    given = [Path(d) for d in args.explicit_data]
    if given and len(given) != len(folds):
        sys.exit(f"bench_family: --explicit-data given {len(given)} times for folds {folds}")

    def data(fold: int) -> Path:
        if given:
            return given[folds.index(fold)]
        return prepare("ml-100k", ["--split", f"ml100k-u{fold}"], out, args.mirror)

    if args.select_fold not in folds:
        sys.exit(f"bench_family: --select-fold {args.select_fold} is not among --folds")
    options = {"contractive": candidates("contractive", args.contractive),
               "stacked_dims": candidates("stacked_dims", args.stacked)}
    options = {k: v for k, v in options.items() if v}
    selection = choose("autorec", data(args.select_fold), out, options, "rmse",
                       args.base["autorec"], args.seed)
    configs = test_configs(selection, args.chosen_only)
    rows = []
    for fold in folds:
        row: dict[str, Any] = {"fold": f"u{fold}"}
        for name, sets in configs.items():
            run = out / "runs" / "autorec" / "test" / f"u{fold}" / name
            row[name] = fit("autorec", data(fold), run, {**args.base["autorec"], **sets},
                            refit=True, metrics="rmse,mae", seed=args.seed)
        rows.append(row)
        print(f"u{fold}: " + "  ".join(f"{n} {row[n]['test']['rmse']:.4f}" for n in configs),
              file=sys.stderr, flush=True)
    return {"selection": selection, "test": {"configs": configs, "rows": rows}}


def multdae(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    data = (Path(args.implicit_data) if args.implicit_data
            else prepare("ml-100k", QUALITY_PREP, out, args.mirror))
    options = {"contractive": candidates("contractive", args.dae_contractive)}
    selection = choose("multdae", data, out, options, "ndcg@100", args.base["multdae"],
                       args.seed)
    configs = test_configs(selection, args.chosen_only)
    rows, tables = [], {}
    for name, sets in configs.items():
        run = out / "runs" / "multdae" / "test" / name
        row = {"name": name, **fit("multdae", data, run, {**args.base["multdae"], **sets},
                                   refit=True, metrics=DAE_METRICS, seed=args.seed)}
        tables[name] = per_user(run, "test", DAE_METRICS)
        row["ci"] = bootstrap_ci(tables[name], DAE_METRICS.split(","), seed=args.seed)
        rows.append(row)
    for row in rows:
        gains = {}
        for m in DAE_METRICS.split(","):
            gain, se, users = paired_gain(tables[row["name"]][m].to_numpy(),
                                          tables["plain"][m].to_numpy())
            gains[m] = {"gain": gain, "se": se, "users": users}
        row["paired_vs_plain"] = gains
    return {"selection": selection, "test": {"configs": configs, "rows": rows}}


# -- the tables ------------------------------------------------------------------------------


def selection_table(sel: dict[str, Any]) -> str:
    m = sel["metric"]
    chosen = {c["chosen"] for c in sel["choices"].values()}
    body = [[r["name"], num(r["valid"], 4), "-" if r["name"] == "plain" else
             f"{num(r['gain'], 4)} ± {num(r['se'], 4)}", r["best_epoch"], num(r["fit_seconds"], 1),
             "yes" if r["name"] in chosen else ""] for r in sel["rows"]]
    lines = [table(["candidate", f"valid {m}", "gain over plain ± SE", "best epoch", "fit s",
                    "kept"], body), ""]
    for option, c in sel["choices"].items():
        verdict = ("plain kept: the gain is within one SE" if c["kept_plain"] and
                   c["best"] != "plain" else "plain is the best" if c["best"] == "plain"
                   else f"{c['best']} chosen: the gain exceeds one SE")
        lines.append(f"- {option}: best on validation {c['best']} (gain {num(c['gain'], 4)} ± "
                     f"{num(c['se'], 4)}); {verdict}")
    return "\n".join(lines)


def autorec_markdown(res: dict[str, Any]) -> str:
    rows, names = res["test"]["rows"], list(res["test"]["configs"])
    body = []
    for name in names:
        values = [r[name]["test"]["rmse"] for r in rows]
        diffs = [r[name]["test"]["rmse"] - r["plain"]["test"]["rmse"] for r in rows]
        spread = (f"{np.mean(diffs):+.4f} ± {np.std(diffs, ddof=1) / np.sqrt(len(diffs)):.4f}"
                  if len(diffs) > 1 and name != "plain" else "-")
        body.append([name, *(f"{v:.4f}" for v in [*values, np.mean(values)]), spread,
                     num(float(np.mean([r[name]["fit_seconds"] for r in rows])), 1)])
    head = ["test RMSE", *[r["fold"] for r in rows], "mean", "vs plain (mean ± SE over folds)",
            "fit s a fold"]
    title = "### I-AutoRec: the choice on the select fold's validation part (--no-refit)"
    return "\n".join([title, "",
                      selection_table(res["selection"]), "",
                      "### I-AutoRec: test RMSE (default commands, refit on train + valid)", "",
                      table(head, body)])


def multdae_markdown(res: dict[str, Any]) -> str:
    body = []
    for r in res["test"]["rows"]:
        cells = [r["name"]]
        for m in DAE_METRICS.split(","):
            lo, hi = r["ci"][m]
            cells.append(f"{num(r['test'][m], 4)} [{num(lo, 4)}, {num(hi, 4)}]")
        g = r["paired_vs_plain"]["ndcg@100"]
        cells += ["-" if r["name"] == "plain" else f"{g['gain']:+.4f} ± {g['se']:.4f}",
                  r["best_epoch"], num(r["fit_seconds"], 1)]
        body.append(cells)
    head = ["Mult-DAE", "test ndcg@100 [95% CI]", "test recall@20 [95% CI]",
            "ndcg@100 vs plain ± SE (paired)", "best epoch", "fit s"]
    return "\n".join(["### Mult-DAE: the choice on validation NDCG@100 (--no-refit)", "",
                      selection_table(res["selection"]), "",
                      "### Mult-DAE: test (default commands, refit on train + valid)", "",
                      table(head, body)])


RENDER = {"autorec": autorec_markdown, "multdae": multdae_markdown}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=SECTIONS,
                   help="run only this section (repeatable; default both)")
    p.add_argument("--folds", default="1,2,3,4,5", help="AutoRec test folds of ml-100k")
    p.add_argument("--select-fold", type=int, default=1,
                   help="the fold whose validation part chooses AutoRec's values")
    p.add_argument("--contractive", default=AUTOREC_CONTRACTIVE,
                   help="AutoRec contractive weights to try ('' for none)")
    p.add_argument("--stacked", default=AUTOREC_STACKED,
                   help="AutoRec stacked_dims to try, ';' between candidates ('' for none)")
    p.add_argument("--dae-contractive", default=DAE_CONTRACTIVE,
                   help="Mult-DAE contractive weights to try")
    p.add_argument("--chosen-only", action="store_true",
                   help="test only plain and values one-SE chose (default: also each option's "
                        "best value on validation when plain was kept or beat it)")
    p.add_argument("--autorec-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AutoRec config key in every AutoRec fit")
    p.add_argument("--dae-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Mult-DAE config key in every Mult-DAE fit")
    p.add_argument("--explicit-data", action="append", default=[], metavar="DIR",
                   help="prepared explicit datasets, one per --folds entry, instead of ml-100k's")
    p.add_argument("--implicit-data", metavar="DIR",
                   help="a prepared top-N dataset instead of the ml-100k quality split")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: epochs 3, the first value of each grid, the select fold only")
    p.add_argument("--seed", type=int, default=0, help="seed of every fit")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every CLI call (0: torch's choice)")
    p.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"),
                   help="dataset mirror holding ml-100k (default $RECSYS_MIRROR)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "family"))
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="only print the Markdown of a saved results.json (no fitting)")
    args = p.parse_args(argv)
    from recsys.config import parse_set_options

    args.base = {"autorec": parse_set_options(args.autorec_set),
                 "multdae": parse_set_options(args.dae_set)}
    if args.quick:
        for sets in args.base.values():
            sets.setdefault("epochs", 3)
        for key in ("contractive", "dae_contractive"):
            setattr(args, key, getattr(args, key).split(",")[0])
        args.stacked = args.stacked.split(";")[0]
        if not args.explicit_data:
            args.folds = str(args.select_fold)
    return args


def markdown_of(results: dict[str, Any]) -> str:
    head = (f"{machine_line(results['machine'])}; one seed ({results['seed']}); "
            f"{results['threads']} thread(s).")
    parts = [head] + [RENDER[s](results[s]) for s in SECTIONS if s in results]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown_of(read_json(args.render)))
        return 0
    if args.threads:
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.out)
    machine = machine_info()
    results: dict[str, Any] = {"date": now_utc(), "machine": machine, "seed": args.seed,
                               "threads": args.threads, "base_sets": args.base,
                               "command": " ".join(["bench_family.py", *(argv or sys.argv[1:])]),
                               "load_average": os.getloadavg()}
    previous = out / "results.json"
    if args.only and previous.is_file():  # keep the sections not run now from the last run
        kept = read_json(previous)
        results.update({s: kept[s] for s in SECTIONS if s in kept and s not in args.only})
        results["kept_from_earlier"] = {s: kept.get("date") for s in SECTIONS
                                        if s in kept and s not in args.only}
    for section in [s for s in SECTIONS if not args.only or s in args.only]:
        results[section] = autorec(args, out) if section == "autorec" else multdae(args, out)
        results["load_average_after"] = os.getloadavg()
        write_json(out / "results.json", results)  # after each section: a later failure keeps it
    text = markdown_of(results)
    print(text)
    with atomic_path(out / "family.md") as tmp:
        tmp.write_text(text + "\n")
    print(f"\nresults written to {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Item cold start: Mult-VAE with ``item_features`` against the plain model and a content
baseline on a split that holds a set of items out entirely, through the public CLI.

The split (`recsys prepare --split cold-items`): ratings >= 4 as positives, users with >= 5 of
them, 10% of the items (seed 0) held out of train and valid, every interaction with them test;
validation is 10% of each user's remaining (warm) interactions. MovieLens brings the item
features (genres and year).

Protocol, as in DropoutNet (Volkovs et al., NeurIPS 2017) and CLCRec (Wei et al., MM 2021): each
test user's list is ranked among the held-out items only (`recsys recommend --allow`), scored
against the test part (all of it held-out items) with the library's metric functions. The
full-catalogue figure `recsys train` writes (held-out items among the relevant ones, warm items
competing) is shown beside it.

Systems: Mult-VAE (configs/multvae.yaml) without the option, whose output weights for the
held-out items were never fitted to anything (it can only rank them arbitrarily), and with
``--set item_features=true``; CVAE (configs/cvae.yaml, conditioned on the users' features) with
the same option, on the data that has user features (ml-100k's u.user; ml-latest-small has
none, so the row is left out there); a content baseline computed here (a user's profile is the
sum of the L2-normalised feature vectors of their history, items scored by cosine to it); random
scores (one seeded draw). Popularity cannot rank items without interactions (all tie at 0), so it
is not a row.

A second table checks that the option does not hurt warm accuracy: the README's top-N split
(per-user random 80/20, same filters, seed 0), both models, test NDCG@100 from `recsys train`.

    RECSYS_MIRROR=/work/shared/datasets python benchmarks/bench_item_cold.py [--only cold|warm]
        [--dataset ml-100k|ml-latest-small]   # repeatable; default both

Results: Markdown tables on stdout and ``benchmarks/out/item_cold/results.json``.
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_vae import QUALITY_PREP, THREADS, prepare, recsys  # noqa: E402
from measure import training_summary  # noqa: E402
from render import rows_markdown  # noqa: E402

from recsys.data.interactions import Dataset  # noqa: E402
from recsys.data.io import write_json  # noqa: E402
from recsys.evaluation.metrics import ranking_metrics  # noqa: E402

DATASETS = ("ml-100k", "ml-latest-small")
COLD_PREP = ["--split", "cold-items", "--implicit-threshold", "4", "--min-user-interactions", "5",
             "--cold-item-fraction", "0.1", "--valid-fraction", "0.1", "--seed", "0"]
METRICS = ["ndcg@20", "recall@20", "ndcg@100"]
LIST_LENGTH = 100
OPTION = ["--set", "item_features=true"]
# label: (model, extra `recsys train` arguments); the warm table checks Mult-VAE's only.
VARIANTS = {"multvae": ("multvae", []), "multvae + item_features": ("multvae", OPTION)}
COLD_VARIANTS = {**VARIANTS, "cvae + item_features": ("cvae", OPTION)}
NEEDS_USER_FEATURES = {"cvae"}


def train(model: str, data: Path, run: Path, extra: list[str], metrics: str) -> dict[str, Any]:
    """`recsys train MODEL` with its shipped config (+ ``extra``); its run.json record."""
    recsys("train", model, "--data", str(data), "--out", str(run), "--overwrite", "--quiet",
           "--no-track", "--config", f"configs/{model}.yaml", "--metrics", metrics, *extra)
    return json.loads((run / "run.json").read_text())


def cold_items(ds: Dataset) -> np.ndarray:
    """Internal ids of the items with no train or valid interaction: the held-out ones."""
    fit = ds.history("test")
    return np.flatnonzero(np.diff(fit.tocsc().indptr) == 0)


def list_metrics(ds: Dataset, top: np.ndarray) -> dict[str, float]:
    """Mean metrics over the test part's evaluated users of ``top`` (users x L internal item
    ids, -1 where a list is shorter), one batch for all users."""
    split = ds.eval_split("test")
    users = split.users
    target = torch.from_numpy(split.target[users].toarray() > 0)
    ranked = torch.from_numpy(top[users])
    hits = torch.gather(target, 1, ranked.clamp(min=0)) & (ranked >= 0)
    n_rel = torch.from_numpy(np.diff(split.target[users].indptr))
    values = ranking_metrics(hits, n_rel, METRICS)
    return {name: float(v.mean()) for name, v in values.items()} | {"users": len(users)}


def recommended(ds: Dataset, run: Path, data: Path, allow: Path, out: Path) -> np.ndarray:
    """`recsys recommend --allow` lists of every user, as a users x L matrix of internal ids."""
    lists = out / "lists.parquet"
    recsys("recommend", str(run), "--data", str(data), "--allow", str(allow), "--k",
           str(LIST_LENGTH), "--out", str(lists), "--quiet")
    frame = pd.read_parquet(lists)
    top = np.full((len(ds.users), LIST_LENGTH), -1, dtype=np.int64)
    top[ds.users.index(frame["user"].to_numpy()), frame["rank"].to_numpy() - 1] = \
        ds.items.index(frame["item"].to_numpy())
    return top


def top_among(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each row's best ``LIST_LENGTH`` of ``candidates`` by ``scores`` (users x candidates)."""
    k = min(LIST_LENGTH, len(candidates))
    order = torch.topk(torch.from_numpy(scores), k, dim=1).indices.numpy()
    top = np.full((scores.shape[0], LIST_LENGTH), -1, dtype=np.int64)
    top[:, :k] = candidates[order]
    return top


def content_scores(ds: Dataset, candidates: np.ndarray) -> np.ndarray:
    """Cosine between each user's profile (sum of the L2-normalised feature vectors of the
    history) and each candidate's feature vector."""
    values = ds.features.item.values.astype(np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    unit = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    history = ds.history("test")
    history.data[:] = 1.0
    profile = history @ unit  # the profile's own norm does not change a user's ranking
    return profile @ unit[candidates].T


def source_mirror(name: str, mirror: str | None) -> str | None:
    """The mirror for a dataset read from one; none for one that ships with recsys (prepare
    refuses --mirror there)."""
    from recsys.data.movielens import embedded_path

    return None if embedded_path(name) is not None else mirror


def cold(out: Path, mirror: str | None, datasets: list[str]) -> dict[str, Any]:
    tables = {}
    for name in datasets:
        data = prepare(name, COLD_PREP, out, source_mirror(name, mirror))
        ds = Dataset.load(data)
        candidates = cold_items(ds)
        allow = out / "data" / f"{name}-cold-items.csv"
        pd.DataFrame({"item": ds.items.ids[candidates]}).to_csv(allow, index=False)
        rows = []
        for label, (model, extra) in COLD_VARIANTS.items():
            if model in NEEDS_USER_FEATURES and ds.features.user is None:
                continue  # this data has no user features to condition on
            run = out / "runs" / "cold" / name / label.replace(" + ", "-")
            info = train(model, data, run, extra, "ndcg@100")
            top = recommended(ds, run, data, allow, run)
            rows.append({"model": label, **list_metrics(ds, top),
                         "full_ndcg@100": info["metrics"]["ndcg@100"],
                         **training_summary(run), "fit_seconds": info["fit_seconds"]})
        rows.append({"model": "content (feature cosine)",
                     **list_metrics(ds, top_among(content_scores(ds, candidates), candidates))})
        rng = np.random.default_rng(0)
        noise = rng.random((len(ds.users), len(candidates)))
        rows.append({"model": "random", **list_metrics(ds, top_among(noise, candidates))})
        tables[name] = {"data": str(data), "cold_items": len(candidates),
                        "test_interactions": ds.parts["test"].nnz, "rows": rows}
    return tables


def warm(out: Path, mirror: str | None, datasets: list[str]) -> dict[str, Any]:
    tables = {}
    for name in datasets:
        data = prepare(name, QUALITY_PREP, out, source_mirror(name, mirror))
        rows = []
        for label, (model, extra) in VARIANTS.items():
            run = out / "runs" / "warm" / name / label.replace(" + ", "-")
            info = train(model, data, run, extra, "ndcg@100,recall@20")
            rows.append({"model": label, **info["metrics"], **training_summary(run),
                         "fit_seconds": info["fit_seconds"]})
        tables[name] = {"data": str(data), "rows": rows}
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=("cold", "warm"),
                        help="run only these tables (repeatable; default both)")
    parser.add_argument("--dataset", action="append", choices=DATASETS,
                        help="only these datasets (repeatable; default all)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "item_cold"))
    parser.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"),
                        help="dataset mirror holding ml-100k (default $RECSYS_MIRROR)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of every CLI call (OMP_NUM_THREADS; default 1)")
    args = parser.parse_args(argv)
    THREADS["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    only = set(args.only or ("cold", "warm"))
    out = Path(args.out)
    datasets = args.dataset or list(DATASETS)
    results: dict[str, Any] = {"torch_threads": args.threads, "load_average": os.getloadavg()}
    if "cold" in only:
        results["cold"] = cold(out, args.mirror, datasets)
        for name, t in results["cold"].items():
            print(f"\n## {name}, cold-items split: {t['cold_items']} held-out items, "
                  f"{t['test_interactions']} test interactions; ranked among the held-out "
                  "items (full_ndcg@100: the whole catalogue, from `recsys train`)\n")
            print(rows_markdown(t["rows"], ["model", *METRICS, "users", "full_ndcg@100",
                                            "valid_ndcg@100", "best_epoch", "fit_seconds"]))
    if "warm" in only:
        results["warm"] = warm(out, args.mirror, datasets)
        for name, t in results["warm"].items():
            print(f"\n## {name}, the README's top-N split (random 80/20): warm accuracy\n")
            print(rows_markdown(t["rows"], ["model", "ndcg@100", "recall@20", "valid_ndcg@100",
                                            "best_epoch", "fit_seconds"]))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

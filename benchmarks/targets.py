"""The issues' targets and how each is read from a suite's results (benchmarks/run.py)."""

from __future__ import annotations

from typing import Any

from flops import H100_SXM, ML20M_RAW_ROWS
from measure import median
from peers import CITED_RANKING
from suite import DATASETS

AUTOREC_RMSE = 0.895  # issue 5: I-AutoRec's mean RMSE over u1..u5 (bench_autorec.py)
CFGAN_TARGET = {"precision@20": 0.29, "ndcg@20": 0.42}  # issue 6 (bench_cfgan.py)


def ours_row(results: dict[str, Any], name: str, model: str) -> dict[str, Any] | None:
    rows = results.get("real", {}).get(name, {}).get("models", [])
    return next((r for r in rows if r.get("model") == model and "error" not in r), None)


def peer_row(results: dict[str, Any], name: str, peer: str) -> tuple[dict[str, Any] | None, bool]:
    """(figures, measured here?) for a peer on a dataset: measured in this run, else cited."""
    measured = results.get("peers", {}).get(name, {}).get(peer)
    if measured is None and name == "ml-100k":
        measured = results.get("peers", {}).get("recbole", {}).get(peer)
    if measured is not None and "error" not in measured:
        return measured, True
    if name == "ml-100k" and peer in CITED_RANKING:
        return CITED_RANKING[peer], False
    return None, False


def synthetic_rows(results: dict[str, Any], key: str = "synthetic") -> list[dict[str, Any]]:
    return results.get(key, {}).get("rows", [])


def first_ok(items: list[dict[str, Any]] | None, **match: Any) -> dict[str, Any] | None:
    for item in items or []:
        if all(item.get(k) == v for k, v in match.items()) and "error" not in item:
            return item
    return None


def same_metrics_row(evals: list[dict[str, Any]] | None, data: str | None = None
                     ) -> dict[str, Any] | None:
    """Our evaluation on exactly RecBole's metrics (older results: our default set)."""
    match = {} if data is None else {"data": data}
    return (first_ok(evals, engine="recsys, same metrics", **match)
            or first_ok(evals, engine="recsys", **match))


def best_vae(row: dict[str, Any]) -> dict[str, Any] | None:
    ok = [v for v in row.get("vae", []) if "error" not in v]
    return min(ok, key=lambda v: v["epoch_seconds"]) if ok else None


def targets(results: dict[str, Any]) -> list[list[str]]:
    """Issue 9's targets: [target, measured, status, why]."""
    out: list[list[str]] = []
    section = results.get("gpu", {})
    gpu = section.get("machine", {}).get("gpu")
    gpu_full = [r for r in synthetic_rows(results, "gpu") if abs(r["scale"] - 1.0) < 1e-9]
    at_gpu = gpu_full[0] if gpu_full and gpu is not None else None
    full = [r for r in synthetic_rows(results) if abs(r["scale"] - 1.0) < 1e-9]
    at_full = full[0] if full else None
    h100 = bool(gpu and "H100" in gpu["name"])
    smallest = synthetic_rows(results)[0] if synthetic_rows(results) else None

    def gpu_target(text: str, limit: float, pick: Any, cited: str) -> None:
        if at_gpu is not None:
            value = pick(at_gpu)
            if value is None:
                out.append([text, "-", "not measured", "the measurement failed (see logs)"])
                return
            status = "met" if value <= limit else "not met"
            why = "" if h100 else f"measured on {gpu['name']}, not an H100"
            out.append([text, f"{value:.3f} s", status, f"{why}; {cited}".strip("; ")])
            return
        where = ("the gpu section did not run (no CUDA device)" if gpu is None else
                 "the gpu section did not run at full scale")
        hint = ""
        if smallest is not None and pick(smallest) is not None:
            hint = (f"; CPU: {pick(smallest):.3f} s at {smallest['scale']:g} of ML-20M's users")
        out.append([text, "-", "not measured here (GPU)", where + hint + f"; {cited}"])

    gpu_target("Mult-VAE training epoch, ML-20M shape, H100 <= 0.25 s", 0.25,
               lambda r: (best_vae(r) or {}).get("epoch_seconds"),
               "RecBole 1.4-1.6 s per epoch (PROTOCOLS.md)")
    gpu_target("Full-ranking evaluation of all users, ML-20M shape, H100 <= 0.3 s", 0.3,
               lambda r: (first_ok(r.get("eval") if isinstance(r.get("eval"), list) else None,
                                   engine="recsys") or {}).get("seconds"),
               "RecBole 4.0 s for 125k users (PROTOCOLS.md)")
    gpu_target("Top-100 for all users, ML-20M shape, H100 <= 0.3 s", 0.3,
               lambda r: (first_ok(r.get("topk") if isinstance(r.get("topk"), list) else None)
                          or {}).get("seconds"),
               "plain PyTorch loop 0.37 s (PROTOCOLS.md)")

    # Prepare is CPU work: judged wherever it ran at the full 20M rows.
    prep_text = "Prepare of a 20M-row ratings.csv <= 6 s wall"
    prep_full = ((at_full or {}).get("prepare")
                 or (results.get("synthetic") or {}).get("prepare_full"))
    if isinstance(prep_full, dict) and "runs" in prep_full:
        sec = prep_full["runs"]["ml-20m --path"]["seconds"]
        rb = prep_full.get("recbole")
        peer = (f"RecBole 1.2.1's build of the same file: {rb['seconds']:.1f} s, peak "
                f"{rb['peak_mb']:,.0f} MB ({sec / rb['seconds']:.2f}x)" if rb else
                "RecBole's build 46 s for 8.4M rows (PROTOCOLS.md)")
        out.append([prep_text, f"{sec:.1f} s", "met" if sec <= 6 else "not met",
                    f"{prep_full['rows']:,} rows on this machine's CPU "
                    f"({results['machine']['usable_cores']} cores); {peer}"])
    else:
        growth = prepare_growth(results)
        out.append([prep_text, "-", "not measured here", "the synthetic section ran below full "
                    "scale" + (f"; {growth}" if growth else "")])

    if at_gpu is not None:
        v = best_vae(at_gpu)
        if v is not None:
            peak = H100_SXM[f"{v['precision']}_tflops"]
            out.append(["Achieved TFLOP/s and memory bandwidth vs the H100's",
                        f"{v['achieved_tflops']:.1f} TFLOP/s, ~{v['modelled_gb_s']:.0f} GB/s",
                        "reported", f"{v['precision']}: {100 * v['achieved_tflops'] / peak:.1f}% "
                        f"of {peak:g} TFLOP/s, ~{100 * v['modelled_gb_s'] / 1000 / 3.35:.0f}% of "
                        "3.35 TB/s (H100 SXM datasheet; bandwidth from a traffic model)"])
    else:
        out.append(["Achieved TFLOP/s and memory bandwidth vs the H100's", "-",
                    "not measured here (GPU)", "the gpu section did not run at full scale"])

    # CPU targets, ml-100k.
    vae = ours_row(results, "ml-100k", "multvae")
    peer, measured = peer_row(results, "ml-100k", "RecBole MultiVAE")
    text = "Mult-VAE time-to-convergence on ml-100k <= 0.5x RecBole's, NDCG@100 >= (CPU)"
    if vae is None:
        out.append([text, "-", "not measured", "Mult-VAE was not trained in this run"])
    elif peer is None:
        out.append([text, f"{vae['fit_seconds']:.1f} s", "not measured", "no peer figure"])
    else:
        ratio = vae["fit_seconds"] / peer["fit_seconds"]
        ok = ratio <= 0.5 and vae["ndcg@100"] >= peer["ndcg@100"]
        status = ("met" if ok else "not met") + ("" if measured else " (vs the cited figure)")
        why = (f"{vae['fit_seconds']:.1f} s / {peer['fit_seconds']:.1f} s wall, NDCG@100 "
               f"{vae['ndcg@100']:.3f} vs {peer['ndcg@100']:.3f}; ours ran "
               f"{vae.get('epochs_run', '?')} epochs (best {vae.get('best_epoch', '?')}) and the "
               f"whole `recsys train` call used {vae['cpu_seconds']:.0f} CPU s, i.e. "
               f"{vae['cpu_seconds'] / peer['fit_seconds']:.1f}x the peer's wall time even "
               "counted in CPU time (cores shared with other jobs inflate wall time)")
        if not measured:
            why += ("; RecBole not installed here: its figure is cited from PROTOCOLS.md "
                    "(their split and machine), so the ratio is indicative only")
        out.append([text, f"{ratio:.2f}x", status, why])

    text = "Full-ranking evaluation <= 0.2x RecBole's evaluator (CPU)"
    evals = results.get("real", {}).get("eval")
    evals = evals if isinstance(evals, list) else None
    ours = first_ok(evals, data="ml-100k", engine="recsys")
    theirs = first_ok(evals, data="ml-100k", engine="recbole")
    if ours and theirs:
        cells = []
        for name in DATASETS:
            a = same_metrics_row(evals, name)
            b = first_ok(evals, data=name, engine="recbole")
            if a and b:
                cells.append((name, a, b, a["seconds"] / b["seconds"]))
        worst = max(r for *_, r in cells)
        defaults = [(name, a["seconds"] / d["seconds"]) for name, a, _, _ in cells
                    for d in [first_ok(evals, data=name, engine="recbole defaults")] if d]
        why = ("; ".join(f"{name}, {a['users']} users: {a['seconds']:.3f} s vs "
                         f"{b['seconds']:.3f} s ({r:.2f}x)" for name, a, b, r in cells)
               + "; RecBole's `Trainer.evaluate` on the same scores, same metrics (recall and "
               "NDCG at 20 and 100), as many users per batch as ours, medians after a warm-up; "
               "the worse dataset is the figure")
        if defaults:
            why += ("; against RecBole's default eval_batch_size: " + ", ".join(
                f"{name} {r:.2f}x" for name, r in defaults))
        if worst > 0.2:
            why += (". Not met: both engines spend most of their time on the same work, the "
                    "model's scores (a third of ours here) and picking the top K; ours picks in "
                    "linear time on CPU (2-4x faster than RecBole's torch.topk at K=100 on these "
                    "catalogues) and skips RecBole's per-batch bookkeeping, which is not 5x of "
                    "the total")
        out.append([text, f"{worst:.2f}x", "met" if worst <= 0.2 else "not met", why])
    else:
        out.append([text, f"{ours['seconds']:.3f} s (ours)" if ours else "-",
                    "not measured here", "RecBole is not installed, and PROTOCOLS.md cites no "
                    "CPU figure for its evaluator"])

    ar = results.get("autorec")
    if isinstance(ar, dict) and ar.get("rows") and "iautorec" in ar["rows"][0]:
        rmse = median([r["iautorec"]["rmse"] for r in ar["rows"]])
        mean = sum(r["iautorec"]["rmse"] for r in ar["rows"]) / len(ar["rows"])
        folds = ",".join(r["fold"] for r in ar["rows"])
        out.append([f"(issue 5) I-AutoRec mean RMSE over u1..u5 <= {AUTOREC_RMSE}",
                    f"{mean:.4f}", ("met" if mean <= AUTOREC_RMSE else "not met")
                    + ("" if len(ar["rows"]) == 5 else " (partial)"),
                    f"folds {folds}" + (f", median {rmse:.4f}" if len(ar["rows"]) > 1 else "")])
    cf = results.get("cfgan")
    rows = {r["model"]: r for r in (cf or {}).get("rows", [])}
    if "cfgan" in rows:
        c, ease = rows["cfgan"], rows.get("ease")
        met = all(c[k] >= v for k, v in CFGAN_TARGET.items())
        out.append([f"(issue 6) CFGAN precision@20 >= {CFGAN_TARGET['precision@20']} and "
                    f"NDCG@20 >= {CFGAN_TARGET['ndcg@20']} (ml-100k, every rating positive)",
                    f"{c['precision@20']:.4f} / {c['ndcg@20']:.4f}",
                    "met" if met else "not met",
                    "one fit of configs/cfgan.yaml, epochs chosen on validation"
                    + (f"; tuned EASE on the same split {ease['precision@20']:.4f} / "
                       f"{ease['ndcg@20']:.4f}" if ease else "")])
    return out


def prepare_growth(results: dict[str, Any]) -> str:
    """Seconds per million raw rows at the largest synthetic size, extrapolated to 20M."""
    pts = [(r["prepare"]["rows"], r["prepare"]["runs"]["ml-20m --path"]["seconds"])
           for r in synthetic_rows(results)
           if isinstance(r.get("prepare"), dict) and "runs" in r["prepare"]]
    if not pts:
        return ""
    rows, sec = max(pts)
    return (f"here {sec:.1f} s for {rows:,} rows, i.e. ~{sec * ML20M_RAW_ROWS / rows:.0f} s for "
            "20M rows by linear extrapolation (this machine, shared cores)")



"""Screenshots of the MLflow UI in a real (headless) browser: an Optuna study and a model comparison
as `recsys` logs them, so that what a user sees in the UI is checked rather than assumed.

    python benchmarks/ui_screenshots.py                  # writes benchmarks/ui/*.png
    python benchmarks/ui_screenshots.py --trials 6 --epochs 20 --out DIR --keep WORKDIR
    python benchmarks/ui_screenshots.py --keep WORKDIR --screenshots-only   # again, no training

It starts an `mlflow server` on loopback (sqlite + local artifacts in a temporary folder), prepares
ml-latest-small (embedded in the repository), runs `recsys train multdae --tune --trials N` into
experiment `recsys` and `recsys compare` (pop, EASE, Mult-DAE) into `recsys-compare`, then opens
the UI in Debian's headless chromium (`apt-get install chromium chromium-driver`) through
chromedriver's W3C WebDriver HTTP API (plain urllib: no selenium) and saves 1400x900 PNGs:

    study_runs.png        the study: parent run expanded, its trials nested under it (state,
                          the trials' validation NDCG@100, the sampled params)
    study_parent.png      the study's parent run: its best validation NDCG@100, best.* params
    compare_runs.png      the comparison: parent expanded, one child run per model (named
                          MODEL · DATASET/SPLIT), their dataset and logged model, test/ metrics
    compare_charts.png    the runs page's chart view: the models' test/ metrics as bars
    compare_view.png      MLflow's compare view of the model runs (run details, the metrics table)
    learning_curve.png    the Mult-DAE run's per-epoch charts (train/multdae/loss, .../nll,
                          valid/ndcg_at_100)
    compare_parent.png    the comparison parent run: comparison.png among its artifacts
    compare_models.png    the experiment's Models tab: one logged model per compared model, named
                          after it, with its test/ metrics on the test dataset

About 8 minutes on 2 shared CPU cores (the study and the comparison; the screenshots take ~1).
`tests/tracking/test_ui_browser.py` drives the same `Browser` and `show_nested_runs` to check the
study's DOM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 900)


class BrowserError(RuntimeError):
    """The browser or chromedriver refused a command, or the page never showed what was awaited."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    """Headless chromium behind chromedriver, spoken to in W3C WebDriver JSON over HTTP.

    Pages are read and clicked through `execute/sync` scripts: MLflow's React UI re-renders its
    nodes, so element references from `find element` go stale, while a script that looks the node
    up and acts on it in one call does not."""

    def __init__(self, size: tuple[int, int] = WINDOW, timeout: float = 30.0) -> None:
        self.size = size
        self.timeout = timeout
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        self.session = ""
        try:
            self._wait_driver()
            args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"]
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": str(CHROMIUM), "args": args}}}}
            self.session = self._call("POST", "/session", caps)["sessionId"]
            self._fit_viewport()
        except BaseException:
            self.close()
            raise

    def _wait_driver(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.driver.poll() is not None:
                raise BrowserError(f"chromedriver exited with {self.driver.returncode}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.base}/status", timeout=2) as r:
                    if json.loads(r.read())["value"].get("ready"):
                        return
            time.sleep(0.1)
        raise BrowserError("chromedriver did not answer within 20 s")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout + 30) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            value = json.loads(e.read() or b"{}").get("value", {})
            raise BrowserError(f"{method} {path}: {value.get('error')}: "
                               f"{str(value.get('message', '')).splitlines()[0:1]}") from None

    def _fit_viewport(self) -> None:
        # --window-size sizes the window, not the page: grow the window by the difference so that
        # the page (and so the screenshot) is exactly `size`.
        width, height = self.run("return [window.innerWidth, window.innerHeight]")
        rect = self._call("GET", f"/session/{self.session}/window/rect")
        self._call("POST", f"/session/{self.session}/window/rect",
                   {"width": rect["width"] + self.size[0] - width,
                    "height": rect["height"] + self.size[1] - height})

    def close(self) -> None:
        if self.session:
            with contextlib.suppress(Exception):
                self._call("DELETE", f"/session/{self.session}")
            self.session = ""
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.driver.kill()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``) in the page."""
        return self._call("POST", f"/session/{self.session}/execute/sync",
                          {"script": script, "args": list(args)})

    def wait(self, script: str, *args: Any, what: str, timeout: float | None = None) -> Any:
        """Poll ``script`` until it returns something truthy (and return that); ``what`` names
        the awaited thing in the error."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.run(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {what} on {self.url()}")
            time.sleep(0.25)

    def wait_text(self, *texts: str, timeout: float | None = None) -> None:
        self.wait("return arguments[0].every(t => document.body.innerText.includes(t))",
                  list(texts), what=f"text {list(texts)}", timeout=timeout)

    def type(self, css: str, text: str) -> None:
        """Type ``text`` into the field that ``css`` selects, as key presses (React only sees
        values that arrive through input events)."""
        found = self._call("POST", f"/session/{self.session}/element",
                           {"using": "css selector", "value": css})
        element = next(iter(found.values()))
        self._call("POST", f"/session/{self.session}/element/{element}/value", {"text": text})

    def url(self) -> str:
        return str(self._call("GET", f"/session/{self.session}/url"))

    def source(self) -> str:
        return str(self._call("GET", f"/session/{self.session}/source"))

    def screenshot(self, path: Path) -> None:
        self.run("document.activeElement && document.activeElement.blur()")  # no caret
        png = base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)


# MLflow 3.17's UI (checked against its DOM): a run name in the runs table is a link to the run's
# page, and a parent run's row carries the expander button in the same grid cell.
FIND_RUN_JS = """
const findRun = name => [...document.querySelectorAll('[role=gridcell] a[href*="/runs/"]')]
    .find(a => a.textContent.trim() === name) || null;
"""
RUN_LISTED_JS = FIND_RUN_JS + "return !!findRun(arguments[0]);"


def prepare_page(browser: Browser, base: str) -> None:
    """Dismiss what MLflow 3 lays over a fresh profile, once per browser: the assistant side
    panel, and the "GenAI" workflow (these are model-training runs; the "Model training" toggle
    gives the runs-first sidebar). The choice is kept in the profile; the toggle navigates away,
    so this comes before opening the pages to show."""
    browser.open(f"{base}/#/experiments")
    toggle = """
        return [...document.querySelectorAll('div, span, label, button')]
            .filter(e => e.children.length === 0 && e.textContent.trim() === 'Model training')
            .pop() || null;"""
    browser.wait(toggle, what="the workflow toggle")
    browser.run(toggle.replace("return ", "const t = ", 1) + " t.click();")
    with contextlib.suppress(BrowserError):  # the panel may not open at all
        browser.wait("return !!document.querySelector('button[aria-label=Close]')",
                     what="the assistant panel", timeout=5)
    browser.run("document.querySelectorAll('button[aria-label=Close]').forEach(b => b.click())")


def open_runs(browser: Browser, base: str, experiment_id: str, parent: str) -> None:
    """Open an experiment's runs table and wait until the run named ``parent`` is listed."""
    browser.open(f"{base}/#/experiments/{experiment_id}/runs")
    browser.wait(RUN_LISTED_JS, parent, what=f"run {parent!r} in the runs table")


def show_nested_runs(browser: Browser, parent: str, children: list[str]) -> None:
    """Click the expander of the parent run named ``parent`` (MLflow lists children collapsed)
    and wait until every run in ``children`` is listed beneath it."""
    browser.run(FIND_RUN_JS + """
        if (!findRun(arguments[1]))
            findRun(arguments[0]).closest('[role=gridcell]').querySelector('button').click();""",
                parent, children[0])
    for child in children:
        browser.wait(RUN_LISTED_JS, child, what=f"nested run {child!r} under {parent!r}")


def choose_columns(browser: Browser, columns: dict[str, list[str]]) -> None:
    """Tick columns in the table's Columns menu: ``{"Metrics": [...], "Parameters": [...],
    "Tags": [...], "Attributes": [...]}``; a name already ticked is unticked (the menu toggles).
    Names are looked up within their group: a metric and a param may share one (``lr``)."""
    browser.run("[...document.querySelectorAll('button')]"
                ".find(b => b.textContent.trim() === 'Columns').click()")
    browser.wait("return document.querySelectorAll('.du-bois-light-tree-treenode').length",
                 what="the Columns menu")
    missing = browser.run("""
        const wanted = arguments[0];
        const missing = [];
        let group = null;
        const nodes = [...document.querySelectorAll('.du-bois-light-tree-treenode')];
        const found = {};
        for (const node of nodes) {
            const label = node.querySelector('.du-bois-light-tree-title');
            if (!label) continue;
            const title = label.textContent.trim();
            const head = title.replace(/ \\(\\d+\\)$/, '');
            const leaf = node.querySelector('.du-bois-light-tree-switcher-noop') !== null;
            if (!leaf) { group = head in wanted ? head : null; continue; }
            if (group && wanted[group].includes(title)) {
                node.querySelector('.du-bois-light-tree-checkbox').click();
                found[group + '/' + title] = true;
            }
        }
        for (const [g, names] of Object.entries(wanted))
            for (const n of names) if (!found[g + '/' + n]) missing.push(g + '/' + n);
        return missing;""", columns)
    browser.run("[...document.querySelectorAll('button')]"
                ".find(b => b.textContent.trim() === 'Columns').click()")
    if missing:
        raise BrowserError(f"the Columns menu has no {missing}")


def _collapse(browser: Browser, *sections: str) -> None:
    """Fold sections of a page (the compare view's "Visualizations", "Parameters", ...)."""
    browser.run("""
        for (const name of arguments[0]) {
            const arrow = document.querySelector(`[aria-label="collapse ${name}"]`);
            const header = arrow && arrow.closest('[aria-expanded=true]');
            if (header) header.click();
        }""", list(sections))


def _settle(seconds: float = 2.0) -> None:
    # Charts animate in and tables lay out their columns after the data arrives.
    time.sleep(seconds)


def _recsys(args: list[str], cwd: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Two shared cores: one thread each for torch and BLAS (more threads only fight here).
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    print("+ recsys " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=cwd, env=env, check=True)


def log_study(uri: str, data: Path, work: Path, trials: int, epochs: int,
              experiment: str = "recsys", name: str = "multdae-study") -> None:
    """`recsys train multdae --tune --trials N` into ``experiment``; the parent run is named
    ``name`` (--run-name)."""
    _recsys(["train", "multdae", "--data", str(data), "--out", str(work / "runs" / name),
             "--run-name", name, "--tune", "--trials", str(trials), "--set", f"epochs={epochs}",
             "--set", "device=cpu", "--tracking-uri", uri, "--experiment", experiment,
             "--quiet"], work)


def log_comparison(uri: str, data: Path, work: Path, epochs: int) -> None:
    """`recsys compare` of popularity, tuned EASE and Mult-DAE into experiment recsys-compare."""
    spec = {"name": "ml-latest-small", "experiment": "recsys-compare", "data": str(data),
            "out": str(work / "runs" / "compare"),
            "metrics": ["recall@20", "ndcg@100", "coverage@20"], "primary": "ndcg@100",
            "bootstrap": 200,
            "models": [{"model": "pop"},
                       {"model": "ease", "tune": {"lambda_": [100.0, 200.0, 500.0, 1000.0]}},
                       {"model": "multdae", "params": {"epochs": epochs}}]}
    path = work / "compare.yaml"
    path.write_text(json.dumps(spec, indent=2))  # JSON is YAML
    _recsys(["compare", str(path), "--device", "cpu", "--tracking-uri", uri, "--quiet"], work)


def _runs(uri: str, experiment: str) -> tuple[str, Any, list[Any]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId")
                       == parent.info.run_id), key=lambda r: r.info.run_name)
    return experiment_id, parent, children


def _expanded(browser: Browser, uri: str, experiment: str, columns: dict[str, list[str]]
              ) -> tuple[str, Any, list[Any]]:
    """The experiment's runs table with its parent run expanded and ``columns`` shown; returns
    the experiment id, the parent run and its children."""
    experiment_id, parent, children = _runs(uri, experiment)
    name = parent.info.run_name
    open_runs(browser, uri, experiment_id, name)
    show_nested_runs(browser, name, [c.info.run_name for c in children])
    choose_columns(browser, columns)
    return experiment_id, parent, children


def _final_metrics(runs: list[Any], needle: str) -> list[str]:
    """The names of the single-valued metrics (the scores of a trial, a study, a test) among
    ``runs`` that contain ``needle``, in a stable order: read from the runs, so that the
    columns shown follow the names recsys logs (`recsys.tracking.records.metric_name`)."""
    names = {k for r in runs for k in r.data.metrics if needle in k}
    return sorted(names, key=lambda k: (k.startswith("test/"), k))


def screenshot_study(browser: Browser, uri: str, out: Path) -> None:
    experiment_id, parent, trials = _runs(uri, "recsys")
    # The scores: each trial's, the study's best, the test; not the curves' last points.
    scores = [k for k in _final_metrics([parent, *trials], "ndcg_at_100")
              if not k.startswith(("train/", "valid/", "refit/", "tune/"))]
    _expanded(browser, uri, "recsys", {
        "Attributes": ["Dataset", "Source", "Models"],  # shown by default: ticked, hidden
        "Metrics": scores,
        "Parameters": ["lr", "dropout", "hidden_dims", "l2", "weight_decay"],
        "Tags": ["optuna.state"]})
    _settle()
    browser.screenshot(out / "study_runs.png")

    best = [k for k in parent.data.metrics if "best" in k and "ndcg_at_100" in k]
    browser.open(f"{uri}/#/experiments/{experiment_id}/runs/{parent.info.run_id}")
    browser.wait_text(*best[:1], "About this run")
    # Filtered to the study's outcome: its best score and the best trial's params.
    browser.type("input[placeholder='Search metrics']", "best")
    browser.type("input[placeholder='Search parameters']", "best.")
    browser.run("document.querySelector('input[placeholder=\"Search metrics\"]')"
                ".scrollIntoView({block: 'center'})")
    _settle()
    browser.screenshot(out / "study_parent.png")


def screenshot_comparison(browser: Browser, uri: str, out: Path) -> None:
    # The Models column stays (shown by default: ticking hides): each run's logged model, named
    # after the model; the dataset names are in the Models tab (compare_models.png).
    experiment_id, parent, models = _expanded(browser, uri, "recsys-compare", {
        "Attributes": ["Source", "Dataset"],
        "Metrics": ["test/ndcg_at_100", "test/recall_at_20", "test/coverage_at_20",
                    "time/fit_seconds"]})
    _settle()
    browser.screenshot(out / "compare_runs.png")

    browser.run("document.querySelector('input[name=runs-view-mode][value=CHART]').click()")
    browser.wait("return !!document.querySelector(\"input[placeholder*='Search metric charts']\")",
                 what="the chart view")
    browser.type("input[placeholder*='Search metric charts']", "^test/")
    _settle(4)
    browser.screenshot(out / "compare_charts.png")

    ids = json.dumps([m.info.run_id for m in models])
    browser.open(f"{uri}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment_id])}")
    browser.wait_text("test/ndcg_at_100", "Run details")
    _collapse(browser, "Visualizations", "Parameters")
    _settle()
    browser.screenshot(out / "compare_view.png")

    [neural] = [m for m in models if m.data.tags.get("recsys.model") == "multdae"]
    browser.open(f"{uri}/#/experiments/{experiment_id}/runs/{neural.info.run_id}/model-metrics")
    browser.wait("return !!document.querySelector(\"input[placeholder='Search metric charts']\")",
                 what="the run's charts")
    _settle()
    browser.type("input[placeholder='Search metric charts']",
                 "^(valid/ndcg_at_100|train/multdae/loss|train/multdae/nll)$")
    browser.wait_text("valid/ndcg_at_100")
    _settle(4)
    browser.screenshot(out / "learning_curve.png")

    browser.open(f"{uri}/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
                 "/artifacts/comparison.png")
    browser.wait("return [...document.querySelectorAll('img')].some(i => i.complete && "
                 "i.naturalWidth > 0 && i.alt === 'comparison.png')",
                 what="comparison.png in the artifact viewer")
    _settle()
    browser.screenshot(out / "compare_parent.png")

    open_models(browser, uri, experiment_id, [m.data.tags["recsys.model"] for m in models])
    model_datasets(browser)  # their metrics, per dataset, are to the right of the window
    _settle()
    browser.screenshot(out / "compare_models.png")


# MLflow 3.17's Models tab of an experiment: each logged model's name links to its page.
MODEL_NAMES_JS = """
return [...document.querySelectorAll('a[href*="/models/m-"]')].map(a => a.textContent.trim())
    .filter(t => t);
"""


def open_models(browser: Browser, base: str, experiment_id: str, names: list[str]) -> list[str]:
    """Open an experiment's Models tab and wait until a logged model of each of ``names`` is
    listed; returns the model names the page shows."""
    browser.open(f"{base}/#/experiments/{experiment_id}/models")
    return browser.wait(MODEL_NAMES_JS.replace("return ", "const shown = ", 1)
                        + " return arguments[0].every(n => shown.includes(n)) ? shown : null;",
                        names, what=f"logged models {names} in the Models tab")


def model_datasets(browser: Browser) -> list[str]:
    """The dataset names the Models tab shows beside the logged models (each as ``NAME
    (#DIGEST)``: the dataset their metrics were computed on), once their metrics have loaded."""
    return browser.wait("""
        const names = [...document.querySelectorAll('a')].map(a => a.textContent.trim())
            .filter(t => / \\(#[0-9a-f]+\\)$/.test(t))
            .map(t => t.replace(/ \\(#[0-9a-f]+\\)$/, ''));
        return names.length ? [...new Set(names)] : null;""", what="the models' datasets")


def missing_browser() -> str | None:
    """Why no screenshot can be taken here, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    return (f"{' and '.join(absent)} not found (apt-get install chromium chromium-driver)"
            if absent else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "ui",
                        help="folder for the PNGs (default: benchmarks/ui)")
    parser.add_argument("--trials", type=int, default=6, help="trials of the study")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs of each trial (pruning starts at epoch 15)")
    parser.add_argument("--compare-epochs", type=int, default=40,
                        help="epochs of the compared Mult-DAE")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work folder to keep (server store, prepared data, run folders)")
    parser.add_argument("--screenshots-only", action="store_true",
                        help="with --keep: take the screenshots of the runs already logged there")
    args = parser.parse_args(argv)
    if args.screenshots_only and args.keep is None:
        parser.error("--screenshots-only needs --keep WORKDIR")
    if reason := missing_browser():
        print(f"error: {reason}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "tests"))
    from tracking.services import start_mlflow_server, stop

    work = args.keep or Path(tempfile.mkdtemp(prefix="recsys-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    uri, server = start_mlflow_server(work / "mlflow")
    try:
        data = work / "mls"
        if not (data / "metadata.json").exists():
            _recsys(["prepare", "ml-latest-small", "--split", "random", "--implicit-threshold",
                     "4", "--min-user-interactions", "5", "--seed", "0", "--out", str(data),
                     "--quiet"], work)
        if not args.screenshots_only:
            log_study(uri, data, work, args.trials, args.epochs)
            log_comparison(uri, data, work, args.compare_epochs)
        logged = time.monotonic()
        args.out.mkdir(parents=True, exist_ok=True)
        with Browser() as browser:
            prepare_page(browser, uri)
            screenshot_study(browser, uri, args.out)
            screenshot_comparison(browser, uri, args.out)
    finally:
        stop(server)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    for png in sorted(args.out.glob("*.png")):
        print(f"{png}  {png.stat().st_size // 1024} KB")
    print(f"server and runs ready in {logged - started:.0f} s, screenshots in "
          f"{time.monotonic() - logged:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The MLflow UI in a real browser (Debian's headless chromium through chromedriver): a study
logged by `recsys train --tune` is listed as one parent run whose trials appear only once it is
expanded, nested under it; a training run is listed under its name (MODEL · DATASET/SPLIT) with its
dataset, and its logged model under the model's name in the Models tab. Skips, saying why, where
chromium or chromedriver is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from recsys.cli import main
from recsys.commands.common import ui_page

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ui_screenshots.py"
_spec = importlib.util.spec_from_file_location("ui_screenshots", _SCRIPT)
ui = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ui)

_missing = ui.missing_browser()
if _missing:
    pytestmark.append(pytest.mark.skip(reason=f"no headless browser: {_missing}"))


def test_the_runs_table_nests_a_studys_trials_under_its_parent(mlflow_server, mls_data,
                                                              tmp_path):
    out = tmp_path / "study"
    assert main(["train", "multdae", "--data", str(mls_data), "--out", str(out), "--tune",
                 "--run-name", "ui-study",
                 "--trials", "2", "--set", "epochs=2", "--set", "device=cpu", "--quiet",
                 "--tracking-uri", mlflow_server, "--experiment", "it-ui-study"]) == 0
    from mlflow import MlflowClient

    experiment = MlflowClient(mlflow_server).get_experiment_by_name("it-ui-study")
    trials = ["trial-0", "trial-1"]
    with ui.Browser() as browser:
        ui.prepare_page(browser, mlflow_server)
        ui.open_runs(browser, mlflow_server, experiment.experiment_id, "ui-study")
        listed = ui.FIND_RUN_JS + "return arguments[0].filter(n => findRun(n));"
        # Collapsed, the table shows the study alone: its trials are children, not siblings.
        assert browser.run(listed, ["ui-study", *trials]) == ["ui-study"]
        ui.show_nested_runs(browser, "ui-study", trials)
        rows = browser.run(ui.FIND_RUN_JS + """
            return arguments[0].map(n => {
                const row = findRun(n).closest('[role=row]');
                return [row.getAttribute('row-index'),
                        findRun(n).getBoundingClientRect().left];
            });""", ["ui-study", *trials])
    (parent_row, parent_x), *trial_rows = [(int(r), x) for r, x in rows]
    # Expanded, the trials sit right below the parent, their names indented under its name.
    assert sorted(r for r, _ in trial_rows) == [parent_row + 1, parent_row + 2]
    assert all(x > parent_x for _, x in trial_rows)


def test_the_ui_shows_runs_datasets_and_models_by_name(mlflow_server, mls_data, tmp_path):
    """What a person reads in the UI to tell runs apart: the runs table lists the run as
    MODEL · DATASET/SPLIT, and the Models tab lists its logged model under the model's name
    beside the test dataset (named after the data, its split and its implicit preparation) and
    that source run."""
    assert main(["train", "pop", "--data", str(mls_data), "--out", str(tmp_path / "pop"),
                 "--quiet", "--tracking-uri", mlflow_server, "--experiment", "it-ui-names"]) == 0
    from mlflow import MlflowClient

    experiment = MlflowClient(mlflow_server).get_experiment_by_name("it-ui-names")
    run = "pop · ml-latest-small/random"
    with ui.Browser() as browser:
        ui.prepare_page(browser, mlflow_server)
        ui.open_runs(browser, mlflow_server, experiment.experiment_id, run)
        assert ui.open_models(browser, mlflow_server, experiment.experiment_id, ["pop"]) == ["pop"]
        assert ui.model_datasets(browser) == ["ml-latest-small/random/implicit>=4"]
        browser.wait_text(run)  # the model's source run, by name


def test_the_address_recsys_prints_opens_the_model_training_view(mlflow_server):
    """A fresh browser profile (no choice remembered) opens what `recsys ui` / `recsys train`
    print in MLflow 3's model-training view: its sidebar lists the Model registry, which the
    GenAI view that a bare address opens leaves out."""
    registry = """return [...document.querySelectorAll('a')]
        .some(a => a.textContent.trim() === 'Model registry');"""
    with ui.Browser() as browser:
        browser.open(f"{mlflow_server}/#/experiments")
        browser.wait_text("Experiments")
        ui._settle()
        bare = browser.run(registry)
        browser.open(ui_page(mlflow_server))
        browser.wait(registry, what="the Model registry link of the model-training view")
    assert not bare  # the check tells the two views apart


def test_the_printed_address_opens_the_runs_table_with_the_key_metrics(mlflow_server, mls_data,
                                                                       tmp_path, capsys):
    """The runs-table address `recsys train` prints shows, in a fresh browser with nothing
    ticked, the key metrics' columns (the view stored on the experiment), best test NDCG first;
    the same table without the key shows neither."""
    import re

    for model in ("pop", "itemknn"):
        assert main(["train", model, "--data", str(mls_data), "--out", str(tmp_path / model),
                     "--tracking-uri", mlflow_server, "--experiment", "it-ui-view"]) == 0
    printed = capsys.readouterr()
    table = re.findall(r"beside the others: (\S+)", printed.out + printed.err)
    assert table and "viewStateShareKey=recsys" in table[-1]
    from mlflow import MlflowClient

    runs = MlflowClient(mlflow_server).search_runs(
        [MlflowClient(mlflow_server).get_experiment_by_name("it-ui-view").experiment_id],
        order_by=["metrics.`test/ndcg_at_100` DESC"])
    best = runs[0].info.run_name
    # pop and itemknn have no validation curve: the UI leaves out the view's valid/ column for
    # runs without that metric, so the test columns are what these runs show.
    columns = ["test/ndcg_at_100", "test/recall_at_20"]
    shown = """const heads = [...document.querySelectorAll('[role=columnheader]')]
        .map(e => e.textContent.trim());
        return arguments[0].every(h => heads.includes(h));"""
    experiment_id = runs[0].info.experiment_id
    with ui.Browser() as browser:
        # The control: the same table without the view key shows no metric column.
        browser.open(ui_page(mlflow_server, f"experiments/{experiment_id}/runs"))
        browser.wait(ui.RUN_LISTED_JS, best, what=f"run {best!r} in the runs table")
        ui._settle()
        plain = browser.run(shown.replace("every", "some"), columns)
        browser.open(table[-1])
        browser.wait(ui.RUN_LISTED_JS, best, what=f"run {best!r} in the runs table")
        browser.wait(shown, columns, what="the key metric columns")
        first = browser.run(ui.FIND_RUN_JS + """
            const rows = arguments[0].map(n => [n, findRun(n)])
                .filter(([, a]) => a).map(([n, a]) => [n, a.getBoundingClientRect().top]);
            rows.sort((x, y) => x[1] - y[1]);
            return rows[0][0];""", [r.info.run_name for r in runs])
    assert first == best  # sorted by the test metric, best first
    assert not plain

"""Session fixtures for the tracking tests: a real `mlflow server` and a small prepared split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recsys.cli import main

from .services import start_mlflow_server, stop

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# ml-latest-small, 4+ stars as positives, items with >= 10 of them: ~600 users x ~1k items,
# small enough that a model trains in seconds on two CPU cores.
PREPARE = ["prepare", "ml-latest-small", "--implicit-threshold", "4", "--min-item-interactions",
           "10", "--seed", "0"]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """URI of a real MLflow tracking server on a free loopback port (sqlite + local artifacts),
    started once per session and torn down after."""
    uri, proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    stop(proc)


@pytest.fixture(scope="session")
def mls_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "mls"
    assert main([*PREPARE, "--out", str(out)]) == 0
    return out

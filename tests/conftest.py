"""Shared fixtures: small synthetic data and the real MovieLens files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# The tests use small tensors, for which one thread is faster than two fighting over 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "data" / "ml-latest-small"


def mirror_dir() -> Path | None:
    """The dataset mirror (RECSYS_MIRROR, or ../shared/datasets beside the repo) if it exists."""
    env = os.environ.get("RECSYS_MIRROR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "datasets")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def mirror() -> Path:
    m = mirror_dir()
    if m is None or not (m / "ml-100k.zip").exists():
        pytest.skip("no dataset mirror with ml-100k (set RECSYS_MIRROR)")
    return m


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: thread hand-offs cost more than the arithmetic on a shared 2-core box
    (whatever OMP_NUM_THREADS the caller's environment set)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

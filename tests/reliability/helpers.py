"""Shared helpers of the reliability suite: tiny rating files, running the CLI (in process or as
a real process), and snapshots that prove a failed command left nothing behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from recsys.cli import main

REPO = Path(__file__).resolve().parents[2]


def write_ratings(path: Path, n_users: int = 60, n_items: int = 40, per_user: int = 12,
                  seed: int = 0) -> Path:
    """A small explicit rating log (ratings 1..5, timestamps) where users of one block prefer
    one block of items, so models have something to learn."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    block = users % 3
    liked = rng.random(len(users)) < 0.7
    items = np.where(liked, block * (n_items // 3) + rng.integers(0, n_items // 3, len(users)),
                     rng.integers(0, n_items, len(users)))
    ratings = np.where(liked, rng.integers(4, 6, len(users)), rng.integers(1, 4, len(users)))
    stamps = 1_000_000 + np.arange(len(users)) * 60
    lines = [f"{u + 1},{i + 101},{r},{t}" for u, i, r, t in zip(users, items, ratings, stamps,
                                                                  strict=True)]
    path.write_text("user,item,rating,timestamp\n" + "\n".join(lines) + "\n")
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()



def write_user_features(path: Path, n_users: int = 60) -> Path:
    """User features for `write_ratings`'s users: a category (group a/b/c, the users' own
    taste blocks) and a number (age)."""
    path.write_text("user,group,age\n" + "".join(f"{u},{'abc'[(u - 1) % 3]},{20 + u % 9}\n"
                                                   for u in range(1, n_users + 1)))
    return path

def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """`recsys ARGV` in this process: exit code, stdout, stderr (argparse exits included)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse --help/--version; errors return 2 through _Parser
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Result(int(code), captured.out, captured.err)


def recsys_command() -> list[str]:
    """The installed console script, or the module behind it."""
    script = Path(sys.executable).parent / "recsys"
    return [str(script)] if script.exists() else [sys.executable, "-m", "recsys.cli"]


def subprocess_env(**extra: str) -> dict[str, str]:
    """A clean environment for a real `recsys` process: no debug tracebacks, one thread per
    library (deterministic reductions; the test box is shared), no MLflow."""
    env = {k: v for k, v in os.environ.items() if k not in ("RECSYS_DEBUG",)}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "PYTHONWARNINGS": "ignore::DeprecationWarning", "TQDM_DISABLE": "1"})
    env.update(extra)
    return env


def run_process(argv: list[str], timeout: float = 300, **env: str) -> Result:
    proc = subprocess.run([*recsys_command(), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(**env), cwd=REPO)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> SHA-256 of its bytes."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def names(folder: Path) -> set[str]:
    """Entries of ``folder`` (hidden temporaries included), recursively."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def assert_one_line_error(result: Result, expected: str | None = None) -> None:
    """Exit code 2, exactly one line on stderr, no traceback, ``expected`` in that line."""
    assert result.code == 2, f"exit {result.code}; stderr: {result.err!r}"
    assert len(result.err_lines) == 1, f"expected one line on stderr, got: {result.err!r}"
    assert "Traceback" not in result.err and "Traceback" not in result.out
    if expected is not None:
        assert expected in result.err, f"{expected!r} not in {result.err!r}"

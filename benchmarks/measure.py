"""Measuring a benchmark: the machine and the versions beside each figure, and child processes
measured from outside (wall and CPU seconds, their own peak memory), so that one measurement's
allocations never count in another's."""

from __future__ import annotations

import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


# -- small helpers -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def peak_rss_mb() -> float:
    """This process's high-water mark (VmHWM, not inherited across fork/exec like ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- the machine and the versions ----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU (if any), OS: what a reader needs to weigh the figures."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "ram_gib": round(ram_gib, 1), "os": f"{platform.system()} {platform.release()}",
        "gpu": None,
    }
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda}
    return info


def _version(dist: str, module: str | None = None) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    if module and importable(module):
        return getattr(__import__(module), "__version__", "installed")
    return None


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def versions() -> dict[str, str | None]:
    import recsys

    return {"python": platform.python_version(), "torch": _version("torch"),
            "numpy": _version("numpy"), "scipy": _version("scipy"), "pandas": _version("pandas"),
            "implicit": _version("implicit"), "mlflow": _version("mlflow"),
            "recsys": recsys.__version__, "git commit": git_commit(),
            "recbole": _version("recbole"), "scikit-surprise": _version("scikit-surprise")}


# -- children measured from outside -------------------------------------------------------------

# Runs a module or a script and reports its own high-water mark at exit (see peak_rss_mb):
# python -c CHILD module|script TARGET ARGS...
CHILD = """
import atexit, runpy, sys
def _report():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    sys.stderr.write("__VMHWM_KB__ " + line.split()[1] + "\\n")
    except OSError:
        pass
atexit.register(_report)
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target, *sys.argv[3:]]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, __import__("os").path.dirname(target))
    runpy.run_path(target, run_name="__main__")
"""


@dataclass
class Measured:
    """One child process: wall and CPU seconds (user + system, all threads), peak RSS."""

    returncode: int
    wall: float
    cpu: float
    peak_mb: float
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(t for t in text[-lines:] if not t.startswith("__VMHWM_KB__"))


def measure(target: str, args: list[str], log: Path, *, module: bool = True,
            env: dict[str, str] | None = None) -> Measured:
    """Run ``python -m TARGET ARGS`` (or the script TARGET) in a fresh process, its output
    appended to ``log``; a failure is returned, not raised, so one broken row does not stop the
    suite."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", CHILD, "module" if module else "script", target, *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ {' '.join([target, *args])}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = float("nan")
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("__VMHWM_KB__"):
            peak = int(line.split()[1]) / 1024
            break
    return Measured(done.returncode, wall, cpu, peak, log)



def training_summary(run: Path, metric: str = "ndcg@100") -> dict[str, Any]:
    """Best and last epoch of a neural fit and its best validation ``metric``, from the run's
    last checkpoint (empty for baselines, which write none)."""
    from recsys.training.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint

    path = latest_checkpoint(run / CHECKPOINT_DIR)
    if path is None:
        return {}
    payload = load_checkpoint(path)
    best = payload.get("best") or {}
    return {"epochs_run": int(payload["epoch"]), "best_epoch": best.get("epoch"),
            f"valid_{metric}": best.get("value")}



def machine_line(mach: dict[str, Any]) -> str:
    gpu = mach.get("gpu")
    return (f"{mach['cpu']}, {mach['usable_cores']} cores, "
            + (f"GPU {gpu['name']}" if gpu else "no GPU"))


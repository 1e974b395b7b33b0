"""A pipeline step: printed, timed, and recorded in the pipeline's MLflow run.

Each step prints ``[i/n] name`` when it starts and its duration when it ends, and logs to the
run it is given the metric ``step_seconds/<name>`` and the tag ``pipeline.step.<name>`` (``done``
or ``failed``), so the MLflow UI shows which step ran, for how long, and where a run stopped.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from recsys.errors import RecsysError
from recsys.tracking.base import Tracker
from recsys.tracking.records import metric_name


def scoring_parser(doc: str, model_help: str, out_metavar: str, out_help: str
                   ) -> argparse.ArgumentParser:
    """The arguments every scoring pipeline shares: the model URI, the output, the list length;
    the module docstring becomes the description (first line) and the epilog (the rest)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(doc.splitlines()[1:]))
    p.add_argument("--model", required=True, metavar="URI", help=model_help)
    p.add_argument("--out", required=True, metavar=out_metavar, help=out_help)
    p.add_argument("--k", type=int, default=100, help="list length (default 100)")
    return p


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)``, with a user error printed as one line and its exit code returned."""
    try:
        return run(args)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def score_metrics(*, users: int, rows: int, cold: int, seconds: float | None = None
                  ) -> dict[str, float]:
    """A scoring pipeline's figures under their tracked names (``score/users``, ``score/rows``,
    ``score/cold_users`` and, when timed, ``score/users_per_second``): one chart section of the
    run, apart from the steps' times under ``time/step/``."""
    figures = {"users": users, "rows": rows, "cold_users": cold}
    if seconds is not None:
        figures["users_per_second"] = users / max(seconds, 1e-9)
    return {metric_name("score", key): float(value) for key, value in figures.items()}


class Steps:
    def __init__(self, total: int, title: str) -> None:
        self.total = total
        self.done = 0
        print(f"== {title}", file=sys.stderr)

    @contextmanager
    def __call__(self, name: str, tracker: Tracker) -> Iterator[None]:
        self.done += 1
        key = re.sub(r"[^\w.\-/ ]", "_", name).replace(" ", "_")
        print(f"[{self.done}/{self.total}] {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            tracker.set_tags({f"pipeline.step.{key}": "failed"})
            raise
        seconds = time.perf_counter() - started
        tracker.log_metrics({metric_name("time", f"step/{key}"): seconds})
        tracker.set_tags({f"pipeline.step.{key}": "done"})
        print(f"      {name}: done in {seconds:.1f} s", file=sys.stderr, flush=True)

"""A pipeline step: printed, timed, and recorded in the pipeline's MLflow run.

Each step prints ``[i/n] name`` when it starts and its duration when it ends, and logs to the
run it is given the metric ``step_seconds/<name>`` and the tag ``pipeline.step.<name>`` (``done``
or ``failed``), so the MLflow UI shows which step ran, for how long, and where a run stopped.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from recsys.tracking.base import Tracker


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
        tracker.log_metrics({f"step_seconds/{key}": seconds})
        tracker.set_tags({f"pipeline.step.{key}": "done"})
        print(f"      {name}: done in {seconds:.1f} s", file=sys.stderr, flush=True)

"""The names the standalone scripts bench_tune.py and ui_screenshots.py import from here; their
homes are measure.py (the machine, versions, runs), peers.py (RecBole) and render.py (tables)."""

from measure import importable, machine_info, now_utc, training_summary, versions
from peers import recbole_fit
from render import rows_markdown

__all__ = ["importable", "machine_info", "now_utc", "recbole_fit", "rows_markdown",
           "training_summary", "versions"]

"""The names the standalone scripts bench_tune.py and ui_screenshots.py import from here; their
homes are measure.py, peers.py and render.py."""

from measure import importable, machine_info
from peers import recbole_fit
from render import rows_markdown

__all__ = ["importable", "machine_info", "recbole_fit", "rows_markdown"]

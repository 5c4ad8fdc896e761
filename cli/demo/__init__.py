"""`convsync demo`: options and traffic, comparison, view, and the run that ties them."""

from cli.demo.compare import Comparison, compare
from cli.demo.options import DemoOptions, TruthRow
from cli.demo.run import crawl_done, run_demo, wait_ready
from cli.demo.traffic import GraphThread

__all__ = [
    "Comparison",
    "DemoOptions",
    "GraphThread",
    "TruthRow",
    "compare",
    "crawl_done",
    "run_demo",
    "wait_ready",
]

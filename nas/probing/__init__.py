"""Probe tasks run on designs: one design trained and scored on one task (``probe.py``), and
suites that compare designs on tasks over a grid of sizes (``suite_config.py``: the suite file;
``suite.py``: running it, and its variant × task table).
"""
from __future__ import annotations

from nas.probing.probe import ProbeBudget, adapt_spec, run_probe
from nas.probing.suite import LM_COLUMN, run_suite, summarise, to_markdown, write_outputs
from nas.probing.suite_config import (
    GRID_AXES, SuiteConfig, SuiteGrid, SuiteLM, SuiteModel, TaskEntry, TaskTable, load_suite, parse_suite, preset_names,
)

__all__ = [
    "GRID_AXES", "LM_COLUMN", "ProbeBudget", "SuiteConfig", "SuiteGrid", "SuiteLM", "SuiteModel", "TaskEntry",
    "TaskTable", "adapt_spec", "load_suite", "parse_suite", "preset_names", "run_probe", "run_suite", "summarise",
    "to_markdown", "write_outputs",
]

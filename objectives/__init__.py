"""Objectives: what a study optimises, each a small object with a name and a direction.

``get_objective(name)`` returns an ``Objective``; its ``value(record)`` reads the objective from
a trial record (plain data). ``probe:<task>`` names the accuracy on a probe task (maximised).
This package and ``search_spaces`` are leaves: they import nothing from ``nas``.
"""
from objectives.base import Objective
from objectives.registry import OBJECTIVES, PROBE_PREFIX, get_objective, probe_task
from objectives.stability import stability_report

__all__ = ["OBJECTIVES", "PROBE_PREFIX", "Objective", "get_objective", "probe_task", "stability_report"]

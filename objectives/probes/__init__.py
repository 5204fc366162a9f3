"""Probe tasks: small seeded problems that show what a design can and cannot route.

Pure numpy. ``get_probe(name, **params)`` builds one; ``probe.split(seed=, n_train=, n_test=)``
gives disjoint train and test sets with a mask of queried positions; ``probe.score(test,
predict)`` scores a model's predictions on the queried positions only. Training a model on a
probe is ``nas.probing.run_probe``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from objectives.probes.base import Predict, Probe, ProbeSplit, SampledProbe, masked_accuracy
from objectives.probes.reachability import PathSplit, Reachability
from objectives.probes.recall import MQAR, Induction, KHop
from objectives.probes.synthetic import SYNTHETIC_TASKS, DigitTask

_CLASSES: tuple[type[Probe], ...] = (MQAR, Induction, KHop, Reachability, *SYNTHETIC_TASKS)
PROBES: dict[str, type[Probe]] = {cls.name: cls for cls in _CLASSES}
PROBE_TASKS: tuple[str, ...] = tuple(PROBES)
CAUSAL_TASKS: tuple[str, ...] = tuple(name for name, cls in PROBES.items() if cls.causal)
SYNTHETIC_TASK_NAMES: tuple[str, ...] = tuple(cls.name for cls in SYNTHETIC_TASKS)


def get_probe(name: str, **params: Any) -> Probe:
    """The probe called ``name`` with size parameters ``params`` (the rest default)."""
    if name not in PROBES:
        raise ValueError(f"probe task {name!r} is not known; use one of {list(PROBE_TASKS)}")
    cls = PROBES[name]
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"probe {name!r}: unknown parameter(s) {unknown}; it takes {sorted(known)}")
    return cls(**params)


__all__ = [
    "CAUSAL_TASKS", "PROBES", "PROBE_TASKS", "SYNTHETIC_TASK_NAMES", "DigitTask", "Induction", "KHop", "MQAR",
    "PathSplit", "Predict", "Probe", "ProbeSplit", "Reachability", "SampledProbe", "get_probe", "masked_accuracy",
]

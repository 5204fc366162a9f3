"""qkvnas: architecture search over attention designs, measured on the target hardware.

The steps of one trial, each its own module: ``search_spaces`` (spec) -> ``nas.model`` ->
``nas.costs`` -> ``nas.measure`` -> ``nas.train`` / ``nas.probing`` -> ``nas.trial``; a study
(``nas.study``), a ladder (``nas.ladder``) and a probe suite (``nas.probing``) are jobs of the
one engine (``nas.engine``) -> ``nas.export``. Imports are lazy so that ``import nas`` stays
cheap (no Ray, no Optuna) for code that only builds models.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "nas.model",
    "costs": "nas.costs",
    "kv_cache_bytes": "nas.costs",
    "load_corpus": "nas.data",
    "TrainBudget": "nas.train",
    "train": "nas.train",
    "MeasureSettings": "nas.measure",
    "measure": "nas.measure",
    "run_probe": "nas.probing",
    "load_config": "nas.config",
    "StudyConfig": "nas.config",
    "run_study": "nas.api",
    "resume_study": "nas.api",
    "study_status": "nas.api",
    "export_study": "nas.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nas' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

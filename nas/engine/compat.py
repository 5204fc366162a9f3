"""Every use of an Optuna private attribute, behind one small adapter.

Optuna's public API has no "fail this trial by id", no "read one trial by id" cheaper than
listing the study, and no public name for the parameters of an enqueued trial. Checked against
Optuna 4.5 and 5.0; ``tests/test_compat.py`` fails if any of these attributes disappears.
(Ray needs none: the engine's searcher implements Ray Tune's public ``Searcher`` contract.)
"""
from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

FIXED_PARAMS_KEY = "fixed_params"  # where Study.enqueue_trial keeps the parameters it fixes


def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as stored now (one query, not a listing of the whole study)."""
    return storage_of(study).get_trial(trial_id_of(trial))


def fixed_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters an enqueued (WAITING) trial will take; {} for a sampled one."""
    return dict(trial.system_attrs.get(FIXED_PARAMS_KEY) or {})


def fail_trial(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> bool:
    """Set ``attrs`` and mark a trial that another process (or a dead one) owns as FAIL.
    False when it finished meanwhile: its own worker told it first."""
    storage, trial_id = storage_of(study), trial_id_of(trial)
    try:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def hypervolume(points: Any, reference: Any) -> float:
    """Optuna's own hypervolume (``optuna._hypervolume.compute_hypervolume``, the code its
    samplers and ``plot_hypervolume_history`` use) of minimisation ``points`` (n, m) against
    ``reference`` (m,). Points that do not dominate the reference add nothing."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    pts = np.asarray(points, dtype=float).reshape(-1, len(reference))
    ref = np.asarray(reference, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)]
    return float(compute_hypervolume(pts, ref)) if len(pts) else 0.0


def set_metric_names(study: optuna.Study, names: list[str]) -> None:
    """Name the objectives (what optuna-dashboard and ``optuna best-trials`` show): marked
    experimental since Optuna 3.2, stable in practice, so its warning is silenced here once."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)

"""Every use of an Optuna private attribute, behind one small adapter.

Optuna's public API has no "fail this trial by id", no "read one trial by id" cheaper than
listing the study, no count of a study's trials in a state cheaper than listing them, no public
name for the parameters of an enqueued trial, no way to store a trial's data where ``optuna
trials`` and optuna-dashboard do not print it (a trial system attribute), no constraint writer
that optuna-dashboard reads, and no hypervolume history of a chosen list of trials. Checked
against Optuna 4.5 and 5.0; ``tests/test_compat.py`` fails if any of these attributes disappears.
(Ray needs none: the engine's searcher implements Ray Tune's public ``Searcher`` contract.)
"""
from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

FIXED_PARAMS_KEY = "fixed_params"  # where Study.enqueue_trial keeps the parameters it fixes
# Optuna's system attribute of a trial's constraints as one list (optuna.study._constrained_optimization
# ._CONSTRAINTS_KEY): what a sampler's constraints_func writes, what FrozenTrial.constraints reads as
# keys "0", "1", ..., and the only form optuna-dashboard 0.21 reads (its _serializer.CONSTRAINTS_KEY).
CONSTRAINTS_KEY = "constraints"


def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as stored now (one query, not a listing of the whole study)."""
    return storage_of(study).get_trial(trial_id_of(trial))


def count_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    """How many of the study's trials are in ``states``, counted by the database where there is
    one. Optuna's cached RDB storage reads every unfinished trial in full on each listing: with a
    probe suite's 1,440 queued trials that was 0.24 s per count, several counts per trial, and
    the Ray driver took 40% of a core away from 2 trial workers."""
    storage = storage_of(study)
    backend = getattr(storage, "_backend", storage)  # _CachedStorage wraps the RDBStorage
    if isinstance(backend, optuna.storages.RDBStorage):
        from optuna.storages._rdb import models

        session = backend.scoped_session()
        try:
            return int(session.query(models.TrialModel)
                       .filter(models.TrialModel.study_id == study._study_id, models.TrialModel.state.in_(states))
                       .count())
        finally:
            session.close()
    return len(storage.get_all_trials(study._study_id, deepcopy=False, states=states))


def heartbeat_stale_ids(study: optuna.Study) -> set[int]:
    """Ids of RUNNING trials whose heartbeat is older than the storage's grace period (Optuna's
    ``_get_stale_trial_ids``, what ``fail_stale_trials`` reads); empty without a heartbeat."""
    storage = storage_of(study)
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        return set()
    return set(storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]


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


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """A trial system attribute: stored with the trial in every storage (SQLite, journal,
    PostgreSQL), copied by ``optuna.copy_study``, and printed by neither ``optuna trials`` nor
    optuna-dashboard. (``Trial.set_system_attr`` is deprecated; the storage method is not.)"""
    storage_of(study).set_trial_system_attr(trial_id_of(trial), key, value)


def set_constraints(study: optuna.Study, trial: optuna.Trial | FrozenTrial, values: list[float]) -> None:
    """A trial's constraint values as Optuna's list attribute, in a fixed order. Optuna reads it
    (``FrozenTrial.constraints`` = {"0": v0, "1": v1, ...}: every sampler and ``best_trials``)
    and so does optuna-dashboard, which reads no other form: with ``Trial.set_constraint``'s
    ``constraints:<name>`` attributes alone it shows an infeasible trial as feasible, and with
    both every sampler would see each constraint twice. The names are the trial's own
    ``constraint_values`` attribute (nas/engine/attrs.py)."""
    set_trial_system_attr(study, trial, CONSTRAINTS_KEY, [float(v) for v in values])


def constraint_system_attrs(values: list[float]) -> dict[str, Any]:
    """The same list as ``system_attrs`` of ``optuna.trial.create_trial`` (a trial added whole)."""
    return {CONSTRAINTS_KEY: [float(v) for v in values]}


def hypervolume_history(trials: list[FrozenTrial], directions: list[optuna.study.StudyDirection],
                        reference: list[float]) -> tuple[list[int], list[float]]:
    """(trial numbers, hypervolume after each) of the COMPLETE ``trials`` in number order, against
    ``reference`` (in the objectives' own directions): Optuna's own history
    (``optuna.visualization._hypervolume_history._get_hypervolume_history_info``, what
    ``plot_hypervolume_history`` draws; infeasible trials and those beyond the reference add
    nothing). It reads a study's ``get_trials`` and ``directions`` only, so it is given these
    trials (a study's trials without the superseded ones) through a stand-in."""
    import numpy as np
    from optuna.visualization._hypervolume_history import _get_hypervolume_history_info

    info = _get_hypervolume_history_info(_Trials(trials, directions), np.asarray(reference, dtype=float))  # type: ignore[arg-type]
    return [int(n) for n in info.trial_numbers], [float(v) for v in info.values]


class _Trials:
    """The two things ``_get_hypervolume_history_info`` reads of a study."""

    def __init__(self, trials: list[FrozenTrial], directions: list[optuna.study.StudyDirection]) -> None:
        self.directions = directions
        self._trials = sorted(trials, key=lambda t: t.number)

    def get_trials(self, deepcopy: bool = True, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]


def set_metric_names(study: optuna.Study, names: list[str]) -> None:
    """Name the objectives (what optuna-dashboard and ``optuna best-trials`` show): marked
    experimental since Optuna 3.2, stable in practice, so its warning is silenced here once."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)

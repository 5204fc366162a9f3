"""The record of a finished trial in Optuna storage, and what the study's trials add up to.

The study in its storage is the single source of truth: every finished trial is told with its
values, its constraint values and the attributes that let a reader understand it without this
code (spec JSON and hash, hardware, learning curve, timings, reason of a failure). A record is
plain JSON-able data (``nas.trial.TrialRecord.to_dict()`` for a study's trial; ladders and
probe suites send the same shape). Its short, readable part is the trial's user attributes and
its bulk one system attribute (``nas.engine.attrs``, whose ``read`` every reader uses); the
constraint values are Optuna's list attribute, the form optuna-dashboard reads too
(``nas.engine.compat.set_constraints``).

Objectives a trial never reached. A design that breaks a constraint is stopped before the
steps it fails (an analytic constraint: before it is measured or trained) and is told COMPLETE
with its constraint values > 0, so that every sampler learns where the infeasible region is;
Optuna needs a value for every objective of a COMPLETE multi-objective trial. The record keeps
the truth (``objective_values``: "inf" / "-inf" for one never measured, as before), and Optuna
is told a finite stand-in: the study's hypervolume reference point for that objective
(``nas.study.reference``: a fixed value no better than a design that learned or ran nothing,
such as ln(vocabulary) for val_loss and 0 tokens/s); for a job without one (or an objective
whose reference no trial has fixed yet), the worst finite value the study's trials were told for
it, which is what Optuna's GP sampler puts in the place of ±inf; and only before any trial has
one, the worst finite float of its direction (a GP sampler then sees an outlier in that
objective). Not ±inf, which optuna-dashboard, ``optuna trials`` and a plot's axes show as such. Infeasible trials stay off
every front (``best_trials`` and ``pareto_front`` leave them out), the export writes their true
values (±inf), and a reference-point stand-in adds no hypervolume.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.common import jsonable
from nas.engine import attrs, compat

ATTR_CONFIG = "config"
ATTR_WORKER = "worker"
ATTR_STALE = "stale"
ATTR_STATUS = "status"  # complete | infeasible | failed (trial-level); see nas.trial
ATTR_REASON = "reason"
ATTR_ERROR = "error"  # a traceback: the run broke (a bug, out of memory), not the design
ATTR_RETRY_OF = "retry_of"
ATTR_SPEC_HASH = "spec_hash"
ATTR_SPEC_JSON = "spec_json"
ATTR_DUPLICATE_OF = "duplicate_of"  # a repeated design: its result copied from this trial
ATTR_RESAMPLED = "resampled"  # proposals of designs the study had, skipped before this trial's (nas/engine/sampler.py)
ATTR_PROPOSAL = "proposal"  # why this trial's design is not the sampler's own proposal, or is a repeat
ATTR_SURPLUS = "surplus"  # not run: other workers' trials filled the target (also stale: it does not count)
ATTR_REMEASURE_OF = "remeasure_of"  # a new measurement of that trial, which it supersedes (nas/study/remeasure.py)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tell_record(study: optuna.Study, trial: optuna.Trial, record: dict[str, Any], *,
                stand_in: Mapping[str, float] | None = None) -> TrialState:
    """Store a trial's record as attributes and constraints, then tell Optuna. Infeasible
    designs COMPLETE with their constraint values > 0 (so every sampler learns where the
    infeasible region is, and ``best_trials`` leaves them out); an objective they never reached
    is told as ``stand_in[name]``, else the worst finite value of its direction (the module's
    docstring says why). Failed trials are FAIL with their reason."""
    attrs.write(study, trial, trial_attrs(record))
    if record["constraints"]:
        compat.set_constraints(study, trial, list(record["constraints"].values()))
    if record[ATTR_STATUS] == "failed":
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    names = study.metric_names or list(record["values"])
    values = [float(record["values"][name]) for name in names]
    if not all(math.isfinite(v) for v in values):
        values = told_values(study, names, values, stand_in or {})
    study.tell(trial, values)
    return TrialState.COMPLETE


def told_values(study: optuna.Study, names: list[str], values: list[float], stand_in: Mapping[str, float]) -> list[float]:
    """What Optuna is told for objectives never reached (±inf): ``stand_in[name]``; else the
    worst finite value the study's COMPLETE trials were told for it (what Optuna's GP sampler
    puts in the place of ±inf); else, before any trial has one, the worst finite float of its
    direction."""
    told = [t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    out = []
    for i, (name, value, direction) in enumerate(zip(names, values, study.directions)):
        minimize = direction == optuna.study.StudyDirection.MINIMIZE
        seen = [v[i] for v in told if math.isfinite(v[i])]
        if math.isfinite(value):
            out.append(value)
        elif name in stand_in and math.isfinite(stand_in[name]):
            out.append(float(stand_in[name]))
        elif seen:
            out.append(max(seen) if minimize else min(seen))
        else:
            out.append(sys.float_info.max if minimize else -sys.float_info.max)
    return out


def trial_attrs(record: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of a finished trial, JSON-able (±inf written as strings)."""
    return {key: jsonable(value) for key, value in record.items() if key not in ("values", "constraints")} | {
        "objective_values": jsonable(record["values"]),
        "constraint_values": jsonable(record["constraints"]),
    }


# ---- what the trials add up to ------------------------------------------------------------
def is_stale(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ATTR_STALE))


def is_surplus(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ATTR_SURPLUS))


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0.0 for v in trial.constraints.values())


def superseded(trials: Iterable[FrozenTrial]) -> dict[int, int]:
    """Trial number → the number of the later trial that measured it again. Optuna never changes a
    finished trial, so a remeasurement is told as a new one (nas/study/remeasure.py); the old one
    stays as it was, but no count, front or duplicate reads it."""
    return {int(t.user_attrs[ATTR_REMEASURE_OF]): t.number for t in trials if ATTR_REMEASURE_OF in t.user_attrs}


def current(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` without those a later trial supersedes."""
    gone = superseded(trials)
    return [t for t in trials if t.number not in gone] if gone else trials


def count_done(study: optuna.Study) -> int:
    """Trials that count towards the target: COMPLETE ones, PRUNED ones (stopped early at a
    rung: evaluated, at a lower fidelity), and FAIL ones that failed on their own (raised,
    diverged, out of memory). Trials failed because their worker died do not, nor trials
    measured again (``superseded``): their remeasurement counts in their place."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(1 for t in current(trials) if not is_stale(t))


def count_state(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


@dataclass(frozen=True, kw_only=True)
class Counts:
    complete: int
    infeasible: int
    failed: int
    stale: int
    running: int
    waiting: int
    pruned: int = 0  # stopped early at a rung
    surplus: int = 0  # asked when other workers had filled the target: not run

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


def counts(study: optuna.Study) -> Counts:
    trials = current(study.get_trials(deepcopy=False))
    fail = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return Counts(
        complete=len(complete),
        infeasible=sum(1 for t in complete if not is_feasible(t)),
        failed=sum(1 for t in fail if not is_stale(t)),
        stale=sum(1 for t in fail if is_stale(t) and not is_surplus(t)),
        running=sum(1 for t in trials if t.state == TrialState.RUNNING),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
        pruned=sum(1 for t in trials if t.state == TrialState.PRUNED),
        surplus=sum(1 for t in fail if is_surplus(t)),
    )


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's own front (``study.best_trials``): COMPLETE, feasible, non-dominated; once a trial
    was measured again, the same front of the trials that are not ``superseded``."""
    trials = study.get_trials(deepcopy=False)
    if not superseded(trials):
        return sorted(study.best_trials, key=lambda t: t.number)
    kept = [t for t in current(trials) if t.state == TrialState.COMPLETE and is_feasible(t)]
    if not kept:
        return []
    signs = np.array([1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    loss = np.array([t.values for t in kept], dtype=float) * signs  # every objective minimised
    dominated = [bool(np.any(np.all(loss <= row, axis=1) & np.any(loss < row, axis=1))) for row in loss]
    return [t for t, out in zip(kept, dominated) if not out]

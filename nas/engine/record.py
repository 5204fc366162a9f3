"""The record of a finished trial in Optuna storage, and what the study's trials add up to.

The study in its storage is the single source of truth: every finished trial is told with its
values, its constraint values and the attributes that let a reader understand it without this
code (spec JSON and hash, hardware, learning curve, timings, reason of a failure). A record is
plain JSON-able data (``nas.trial.TrialRecord.to_dict()`` for a study's trial; ladders and
probe suites send the same shape).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.common import jsonable

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

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tell_record(study: optuna.Study, trial: optuna.Trial, record: dict[str, Any]) -> TrialState:
    """Store a trial's record as attributes and constraints, then tell Optuna. Infeasible
    designs COMPLETE with their constraint values > 0 (so every sampler learns where the
    infeasible region is, and ``best_trials`` leaves them out); objectives they never measured
    carry the worst value (±inf). Failed trials are FAIL with their reason."""
    for key, value in trial_attrs(record).items():
        trial.set_user_attr(key, value)
    for key, value in record["constraints"].items():
        trial.set_constraint(key, float(value))
    if record[ATTR_STATUS] == "failed":
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    values = [float(record["values"][name]) for name in study.metric_names or record["values"]]
    study.tell(trial, values)
    return TrialState.COMPLETE


def trial_attrs(record: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of a finished trial, JSON-able (±inf written as strings)."""
    return {key: jsonable(value) for key, value in record.items() if key not in ("values", "constraints")} | {
        "objective_values": jsonable(record["values"]),
        "constraint_values": jsonable(record["constraints"]),
    }


# ---- what the trials add up to ------------------------------------------------------------
def is_stale(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ATTR_STALE))


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0.0 for v in trial.constraints.values())


def count_done(study: optuna.Study) -> int:
    """Trials that count towards the target: COMPLETE ones, PRUNED ones (stopped early at a
    rung: evaluated, at a lower fidelity), and FAIL ones that failed on their own (raised,
    diverged, out of memory). Trials failed because their worker died do not."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(1 for t in trials if not is_stale(t))


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

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    fail = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return Counts(
        complete=len(complete),
        infeasible=sum(1 for t in complete if not is_feasible(t)),
        failed=sum(1 for t in fail if not is_stale(t)),
        stale=sum(1 for t in fail if is_stale(t)),
        running=sum(1 for t in trials if t.state == TrialState.RUNNING),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
        pruned=sum(1 for t in trials if t.state == TrialState.PRUNED),
    )


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's own front (``study.best_trials``): COMPLETE, feasible, non-dominated."""
    return sorted(study.best_trials, key=lambda t: t.number)

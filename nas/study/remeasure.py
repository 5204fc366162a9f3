"""``qkvnas remeasure NAME [--all]``: measure a study's noisy trials again on this machine, and
put the new figures into the study.

A trial is noisy when its measurement stayed past a contention limit after the protocol's own
remeasures (nas/measure/noise.py): its neighbours, not its design, set its throughput. This
command measures such trials again (``--all``: every measured trial), each under the node's
measurement lock, with the study's own ``[measure]`` settings, and refuses a trial measured on
another kind of device than this machine's.

How the study is updated. Optuna never changes a finished trial: every storage write to one
(values, state, user or system attributes; ``RDBStorage.set_trial_user_attr``,
``set_trial_state_values`` and the journal's alike) passes ``BaseStorage.check_trial_is_updatable``,
which raises ``UpdateFinishedTrialError``, and no storage method re-opens a trial. The supported
way to put a finished result into a study is ``study.add_trial(optuna.trial.create_trial(...))``,
which the storage writes whole (params, distributions, values, constraints, attributes) in one
transaction: one RDB session, one journal record. So a remeasured trial becomes a new COMPLETE
trial: the old one's params, distributions, intermediate values and attributes, with the new
measurement (``measure``, ``hardware``), the objective and constraint values that come from it
recomputed (the others kept: nothing is trained again), and ``remeasure_of`` = the old number.
An interrupted remeasure leaves each trial either as it was or remeasured, never half done.

The old trial stays as it was (the record of what was measured first) and is *superseded*
(``nas.engine.record.superseded``): the counts and the target, the Pareto front, the designs a
repeat copies its result from, the rung scheduler, ``qkvnas status`` and the export's front
read the new trial in its place; trials.parquet lists both, the old with ``superseded_by``.
Optuna's own views (``optuna best-trials``, a sampler's history) see both trials.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.common import jsonable
from nas.config import StudyConfig, constraint_objective
from nas.engine import attrs, compat
from nas.engine.record import ATTR_REASON, ATTR_REMEASURE_OF, ATTR_SPEC_JSON, ATTR_STATUS, current, is_feasible, superseded
from nas.engine.storage import SQLiteLock
from nas.study.display import fmt_value, noise_text, noisy_figures
from nas.study.open import load_existing, resolve_study, study_config
from objectives import get_objective

CONSTRAINTS_KEY = "constraints"  # Optuna's system attributes of a trial's constraints: the list, or "constraints:<key>"


@dataclass(frozen=True, kw_only=True)
class Remeasured:
    """One trial measured again: ``new`` is the trial that supersedes it (None: left as it was,
    ``note`` says why); ``before`` and ``after`` the objective values that come from the measurement."""

    old: int
    new: int | None = None
    before: dict[str, float]
    after: dict[str, float]
    noisy: dict[str, str]
    note: str | None = None

    def line(self) -> str:
        if self.new is None:
            return f"trial {self.old}: not measured again: {self.note}"
        change = ", ".join(f"{name} {fmt_value(self.before[name])} -> {fmt_value(self.after[name])}" for name in self.after)
        quiet = "quiet" if not self.noisy else f"still {noise_text(self.noisy)}"
        return f"trial {self.old} -> trial {self.new}: {change or 'no measured objective'}; {quiet}"


def remeasure_study(name: str, *, study_name: str | None = None, every: bool = False) -> list[Remeasured]:
    """Measure the study's noisy trials (``every``: all its measured trials) again and tell each
    result as a trial that supersedes the old one (see the module's docstring)."""
    url, _ = resolve_study(name, study_name=study_name)
    study = load_existing(name, study_name=study_name)
    config = study_config(study)
    if "measure" not in config.needs:
        raise ValueError(f"study {study.study_name!r} measures nothing (no objective or constraint needs a "
                         "measurement): there is nothing to measure again")
    measured = [t for t in current(study.get_trials(deepcopy=False)) if isinstance(attrs.read(t).get("measure"), dict)]
    chosen = [t for t in measured if t.state == TrialState.COMPLETE and (every or noisy_figures(t))]
    # A trial stopped early or failed has no values to correct: its noise is reported, not measured.
    left = [Remeasured(old=t.number, before={}, after={}, noisy=noisy_figures(t),
                       note=f"{t.state.name.lower()}: only completed trials are measured again")
            for t in measured if t.state != TrialState.COMPLETE and noisy_figures(t)]
    _check_machine(chosen, config)
    with SQLiteLock(url, study.study_name):  # a SQLite study has one writer: refused while a run writes
        return [remeasure_trial(study, config, trial) for trial in chosen] + left


def remeasure_trial(study: optuna.Study, config: StudyConfig, trial: FrozenTrial) -> Remeasured:
    """Measure one COMPLETE trial's design again and add the trial that supersedes it."""
    from nas.measure import measure
    from search_spaces.spec import ArchSpec

    spec = ArchSpec.from_json(trial.user_attrs[ATTR_SPEC_JSON])
    result = measure(spec, config.measure).to_dict()
    parts = _parts(trial, spec.to_dict(), result)
    names = list(study.metric_names or config.objectives)
    old_values = dict(zip(names, trial.values))  # as told: a stand-in for one never reached (nas/engine/record.py)
    measured = [n for n in names if _from_measurement(n, parts)]
    try:
        now = {n: get_objective(n).value(parts) for n in measured}
        values = old_values | now
        constraints = _constraints(trial, config, parts)
    except ValueError as err:  # a figure this measurement could not give
        return Remeasured(old=trial.number, before={}, after={}, noisy=result["noisy"], note=str(err))
    violated = sorted(key for key, v in constraints.items() if v > 0)
    if not violated and not is_feasible(trial) and any(not _reached(n, parts) for n in names):
        return Remeasured(old=trial.number, before={}, after={}, noisy=result["noisy"],
                          note="a measured constraint stopped it before training and it is now within it: "
                               "it needs a full run, not a new measurement")
    record = {k: v for k, v in attrs.read(trial).items() if k not in (attrs.ATTR_FIGURES, attrs.ATTR_LINK)} | {
        "measure": jsonable(result), "hardware": result["fingerprint"],
        "objective_values": jsonable(attrs.objective_values(trial, names) | now),  # ±inf: never reached, as before
        "constraint_values": jsonable(constraints), ATTR_STATUS: "infeasible" if violated else "complete",
        ATTR_REASON: f"violates {', '.join(violated)}" if violated else None, ATTR_REMEASURE_OF: trial.number,
    }
    user, bulk = attrs.system_attrs(record)  # laid out as tell_record lays out a trial (nas/engine/attrs.py)
    system = {k: v for k, v in trial.system_attrs.items()
              if k not in (CONSTRAINTS_KEY, attrs.BULK_KEY) and not k.startswith(f"{CONSTRAINTS_KEY}:")}
    system |= bulk | (compat.constraint_system_attrs(list(constraints.values())) if constraints else {})
    study.add_trial(optuna.trial.create_trial(
        values=[values[n] for n in names], params=trial.params, distributions=trial.distributions, user_attrs=user,
        system_attrs=system, intermediate_values=trial.intermediate_values))
    new = superseded(study.get_trials(deepcopy=False))[trial.number]  # other workers may add trials meanwhile
    return Remeasured(old=trial.number, new=new, before={n: old_values[n] for n in measured},
                      after={n: values[n] for n in measured}, noisy=result["noisy"])


def _parts(trial: FrozenTrial, spec: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The trial's record as objectives read it (``nas.trial``), with the new measurement."""
    stored = attrs.read(trial)
    parts = {"spec": spec, "costs": stored.get("costs") or {}, "measure": measured, "probes": stored.get("probes") or {}}
    if stored.get("train") is not None:
        parts["train"] = stored["train"]
    return parts


def _have(parts: dict[str, Any]) -> set[str]:
    return {"costs", "measure"} | {"train"} & set(parts) | ({"probe"} if parts["probes"] else set())


def _reached(name: str, parts: dict[str, Any]) -> bool:
    return get_objective(name).needs <= _have(parts)


def _from_measurement(name: str, parts: dict[str, Any]) -> bool:
    """An objective whose value the new measurement changes: it needs one, and the trial has the
    rest of what it needs (an infeasible trial keeps the worst value of one it never reached)."""
    return "measure" in get_objective(name).needs and _reached(name, parts)


def _constraints(trial: FrozenTrial, config: StudyConfig, parts: dict[str, Any]) -> dict[str, float]:
    """The trial's constraint values, those on measured figures recomputed as nas.trial computes
    them: (value - limit) / |limit| for max_*, (limit - value) / |limit| for min_*."""
    out = attrs.constraint_values(trial)
    for key, limit in config.constraints.items():
        bound, name = constraint_objective(key)
        if _from_measurement(name, parts):
            value = get_objective(name).value(parts)
            excess = value - limit if bound == "max" else limit - value
            out[key] = excess / abs(limit) if limit else excess
    return out


def _check_machine(trials: list[FrozenTrial], config: StudyConfig) -> None:
    """Refuse, before measuring anything, a trial measured on another kind of device than the one
    this machine measures on: its new figures would be another machine's."""
    from nas.device import resolve_device
    from nas.measure.fingerprint import fingerprint

    here = fingerprint(resolve_device(config.measure.device), {})["device_name"]
    for trial in trials:
        there = (attrs.read(trial)["measure"].get("fingerprint") or {}).get("device_name")
        if there is not None and there != here:
            raise ValueError(f"trial {trial.number} was measured on {there!r} and this machine measures on {here!r}: "
                             "run qkvnas remeasure on a machine like the one the study measured on")


def summary(results: list[Remeasured], name: str) -> list[str]:
    """The lines ``qkvnas remeasure`` prints: one per trial, then what changed overall."""
    if not results:
        return [f"no noisy trials in {name}: nothing to measure again (--all measures every measured trial)"]
    updated = [r for r in results if r.new is not None]
    still = sum(1 for r in updated if r.noisy)
    tail = (f"{len(updated)} of {len(results)} trial(s) measured again, {still} still noisy"
            + (f"; export again with: qkvnas export {name} --out DIR" if updated else ""))
    return [r.line() for r in results] + [tail]


__all__ = ["Remeasured", "remeasure_study", "remeasure_trial", "summary"]

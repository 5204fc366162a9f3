"""A search study as a job of the engine: the sampler proposes a design from the search space,
a worker runs it through ``nas.trial.run_trial``, and its record is told to the study.

A design the study has already evaluated (samplers propose repeats in small spaces) is not
trained again: its result is copied from the first trial that evaluated it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas.config import StudyConfig
from nas.engine.job import BaseJob, Payload, Record, Report, Resources
from nas.engine.record import (
    ATTR_CONFIG, ATTR_DUPLICATE_OF, ATTR_ERROR, ATTR_REASON, ATTR_RETRY_OF, ATTR_SPEC_HASH, ATTR_STATUS, ATTR_WORKER, count_done,
    count_state, counts, is_stale, pareto_front, tell_record,
)
from nas.engine.rungs import RungPlan
from nas.engine.stopping import stopping_summary
from nas.study.display import stopping_text, design_label, fmt_value, front_table, one_per_design, summary_line
from nas.study.open import create_or_load_study, save_config_file, storage_url
from objectives import get_objective
from search_spaces import get_space
from search_spaces.base import SearchSpace


@dataclass(frozen=True)
class StudyJob(BaseJob):
    config: StudyConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def storage_url(self) -> str:
        return storage_url(self.config)

    @property
    def resources(self) -> Resources:
        return Resources.of(self.config.resources, self.config.ray)

    @functools.cached_property
    def space(self) -> SearchSpace:
        return get_space(self.config.space.name, **self.config.space.options)

    # ---- driver -------------------------------------------------------------------------
    def open_study(self, storage: BaseStorage) -> optuna.Study:
        return create_or_load_study(self.config, storage)

    def prepare(self, study: optuna.Study) -> None:
        study.set_user_attr(ATTR_CONFIG, self.config.to_dict())  # the latest target and resources
        save_config_file(self.config)

    def remaining(self, study: optuna.Study) -> int:
        return self.config.trials - count_done(study) - count_state(study, TrialState.RUNNING)

    def progress(self, study: optuna.Study) -> tuple[int, int]:
        return count_done(study), self.config.trials

    def rung_plan(self) -> RungPlan | None:
        """``[fidelity] scheduler = "mo_asha"``: rank each trial at the rungs on its validation
        loss and the objectives known before training (costs, measurements)."""
        fidelity = self.config.fidelity
        if fidelity.scheduler == "none":
            return None
        fixed = tuple((name, 1 if get_objective(name).direction == "minimize" else -1) for name in self.config.objectives
                      if get_objective(name).needs <= {"costs", "measure"})
        return RungPlan(rungs=fidelity.rung_tokens(self.config.budget.tokens), eta=fidelity.eta,
                        tie_break=fidelity.tie_break, fixed=fixed)

    def suggest(self, trial: optuna.Trial) -> Payload:
        spec = self.space.sample(trial)
        trial.set_user_attr(ATTR_SPEC_HASH, spec.hash)
        return {"spec_json": spec.to_json(), ATTR_DUPLICATE_OF: evaluated_designs(trial.study).get(spec.hash)}

    def tell(self, study: optuna.Study, trial: optuna.Trial, record: Record) -> None:
        if record.get(ATTR_DUPLICATE_OF) is not None:
            copy_trial(study, trial, record[ATTR_DUPLICATE_OF])
        else:
            tell_record(study, trial, record)

    # ---- worker -------------------------------------------------------------------------
    def execute(self, payload: Payload, report: Report) -> Record:
        if payload.get(ATTR_DUPLICATE_OF) is not None:
            return {ATTR_DUPLICATE_OF: payload[ATTR_DUPLICATE_OF]}
        from nas.trial import run_trial
        from search_spaces.spec import ArchSpec

        record = run_trial(ArchSpec.from_json(payload["spec_json"]), self.config, seed=self.config.budget.seed,
                           report=report)
        return record.to_dict()

    # ---- display ------------------------------------------------------------------------
    def outcome(self, study: optuna.Study, trial: FrozenTrial) -> str:
        c = counts(study)
        front = len(one_per_design(pareto_front(study)))
        return f"trial {trial.number} {_outcome(study, trial)}  | failed {c.failed} | front {front} designs"

    def summary(self, study: optuna.Study, *, final: bool) -> str | None:
        return ("Pareto front:\n" if final else "current front:\n") + front_table(study)

    def finish_line(self, study: optuna.Study) -> str:
        line = summary_line(counts(study), self.config.trials)
        if self.config.fidelity.scheduler == "none":
            return line
        return f"{line}; {stopping_text(stopping_summary(study, self.config.budget.tokens))}"


def _outcome(study: optuna.Study, trial: FrozenTrial) -> str:
    status = trial.user_attrs.get(ATTR_STATUS, trial.state.name.lower())
    label = design_label(trial)
    if trial.state == TrialState.FAIL:
        return f"failed ({trial.user_attrs.get(ATTR_REASON, 'no reason recorded')}) {label}"
    if trial.state == TrialState.PRUNED:
        return f"{trial.user_attrs.get(ATTR_REASON, 'stopped early')} {label}"
    names = study.metric_names or []
    values = " ".join(f"{n}={fmt_value(v)}" for n, v in zip(names, trial.values or []))
    source = trial.user_attrs.get(ATTR_DUPLICATE_OF)
    dup = f" (same design as trial {source})" if source is not None else ""
    return f"{status}{dup} {label}: {values}"


def evaluated_designs(study: optuna.Study) -> dict[str, int]:
    """spec hash → number of the first trial that evaluated it (COMPLETE, or failed on its own)."""
    known: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if is_stale(t) or t.user_attrs.get(ATTR_ERROR) or ATTR_SPEC_HASH not in t.user_attrs:
            continue
        known.setdefault(t.user_attrs[ATTR_SPEC_HASH], t.number)
    return known


def copy_trial(study: optuna.Study, trial: optuna.Trial, source_number: int) -> None:
    """A design the study already evaluated, with the same budget and seed: its result is
    copied instead of training it again."""
    source = study.trials[source_number]
    for key, value in source.user_attrs.items():
        if key not in (ATTR_WORKER, ATTR_RETRY_OF):
            trial.set_user_attr(key, value)
    trial.set_user_attr(ATTR_DUPLICATE_OF, source_number)
    for key, value in source.constraints.items():
        trial.set_constraint(key, value)
    if source.state == TrialState.COMPLETE:
        study.tell(trial, source.values)
    else:  # a design stopped early or failed is not trained again either
        study.tell(trial, state=source.state)

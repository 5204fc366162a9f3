"""A search study as a job of the engine: the sampler proposes a design from the search space,
a worker runs it through ``nas.trial.run_trial``, and its record is told to the study.

The sampler does not propose a design the study already has (evaluated, running in any worker,
or queued) while the space has others (``nas.engine.sampler.DistinctDesigns``); when it must (a
space exhausted), the repeat is not trained again: its result is copied from the first trial
that evaluated it. Several workers may share one study (a journal or PostgreSQL storage): each
trial checks, once asked, that the trials before it do not fill the target already, so the
workers together stop at the target exactly.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas.config import StudyConfig
from nas.engine import attrs, compat, heartbeat
from nas.engine.job import BaseJob, Payload, Record, Report, Resources
from nas.engine.record import (
    ATTR_CONFIG, ATTR_DUPLICATE_OF, ATTR_ERROR, ATTR_PROPOSAL, ATTR_REASON, ATTR_REMEASURE_OF, ATTR_RESAMPLED, ATTR_RETRY_OF,
    ATTR_SPEC_HASH, ATTR_STALE, ATTR_STATUS, ATTR_SURPLUS, ATTR_WORKER, count_done, count_state, counts, current, is_stale,
    pareto_front, tell_record,
)
from nas.engine.recovery import recover_stale_trials
from nas.engine.rungs import RungPlan
from nas.engine.sampler import DistinctDesigns, make_sampler, worker_seed
from nas.engine.stopping import stopping_summary
from nas.engine.storage import single_writer
from nas.study.display import (
    ATTR_DESCRIPTION, design_label, fmt_value, front_count, front_table, noise_note, spec_label, stopping_text, study_note,
    summary_line,
)
from nas.study.open import config_record, create_or_load_study, save_config_file, storage_url
from nas.study.reference import stand_ins
from objectives import get_objective
from search_spaces import get_space
from search_spaces.base import FixedChoices, SearchSpace

SURPLUS_REASON = "not run: the trials before it, in other workers, fill the target"


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

    @property
    def live_folder(self) -> Path:
        """Where workers keep their running trial's phase and tokens (nas/engine/live.py)."""
        return self.config.study_dir

    @functools.cached_property
    def space(self) -> SearchSpace:
        return get_space(self.config.space.name, **self.config.space.options)

    def __getstate__(self) -> dict[str, object]:
        # A worker resolves the space again from the config's name (an import path for a user's
        # space), so that a worker that cannot import it fails with that reason, not in unpickling.
        return {k: v for k, v in self.__dict__.items() if k != "space"}

    # ---- driver -------------------------------------------------------------------------
    def open_study(self, storage: BaseStorage) -> optuna.Study:
        """The study, with a sampler that continues its sequence on a resumed run (seeded from
        the study's seed and the trials already there) and proposes no design the study has."""
        study = create_or_load_study(self.config, storage)
        sampler = self.config.sampler
        seed = worker_seed(sampler.seed, single_worker=single_writer(self.storage_url),
                           trials=len(study.get_trials(deepcopy=False)))
        study.sampler = DistinctDesigns(make_sampler(sampler.name, seed, sampler.options), self.space,
                                        taken=self.taken_designs, seed=seed)
        return study

    def prepare(self, study: optuna.Study) -> None:
        study.set_user_attr(ATTR_CONFIG, config_record(self.config))  # the latest target and resources
        study.set_user_attr(ATTR_DESCRIPTION, study_note(self.config))  # what optuna-dashboard shows of the study
        save_config_file(self.config)

    def remaining(self, study: optuna.Study) -> int:
        """Trials still to start. On a storage that workers share, trials a dead worker left
        RUNNING are requeued first (its own host's, or silent past the heartbeat's grace): they
        are not running, and would otherwise hold the target's last places for ever."""
        if not single_writer(self.storage_url):
            recover_stale_trials(study, all_running=False)
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
        heartbeat.track(trial.study, trial)
        if fills_target(trial.study, trial.number, self.config.trials):
            return {ATTR_SURPLUS: True}
        spec = self.space.sample(trial)
        trial.set_user_attr(ATTR_SPEC_HASH, spec.hash)
        return {"spec_json": spec.to_json(), ATTR_DUPLICATE_OF: evaluated_designs(trial.study).get(spec.hash),
                "trial": trial.number}

    def taken_designs(self, study: optuna.Study, trial: FrozenTrial) -> set[str]:
        """Designs a new trial must not repeat: those evaluated (``evaluated_designs``), running
        in any worker, or queued (a retry of an interrupted trial)."""
        taken = set(evaluated_designs(study))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if t.number == trial.number:
                continue
            if t.state == TrialState.RUNNING and ATTR_SPEC_HASH in t.user_attrs:
                taken.add(t.user_attrs[ATTR_SPEC_HASH])
            elif t.state == TrialState.WAITING and compat.fixed_params(t):
                taken.add(self.space.sample(FixedChoices(compat.fixed_params(t))).hash)
        return taken

    def tell(self, study: optuna.Study, trial: optuna.Trial, record: Record) -> None:
        if record.get(ATTR_SURPLUS):
            compat.fail_trial(study, compat.frozen(study, trial), {ATTR_STALE: True, ATTR_SURPLUS: True,
                                                                   ATTR_REASON: SURPLUS_REASON})
        elif record.get(ATTR_DUPLICATE_OF) is not None:
            copy_trial(study, trial, record[ATTR_DUPLICATE_OF])
        else:  # an objective an infeasible design never reached: the study's reference point (nas/study/reference.py)
            tell_record(study, trial, record, stand_in=stand_ins(study, self.config, record))

    # ---- worker -------------------------------------------------------------------------
    def execute(self, payload: Payload, report: Report) -> Record:
        if payload.get(ATTR_SURPLUS):
            return {ATTR_SURPLUS: True}
        if payload.get(ATTR_DUPLICATE_OF) is not None:
            return {ATTR_DUPLICATE_OF: payload[ATTR_DUPLICATE_OF]}
        from nas.engine import live
        from nas.trial import run_trial
        from search_spaces.spec import ArchSpec

        spec = ArchSpec.from_json(payload["spec_json"])

        def report_live(step: int, metrics: dict[str, float]) -> None:
            if "tokens" in metrics:
                live.tokens(int(metrics["tokens"]))
            report(step, metrics)

        # The driver's live line reads the phase and tokens from here (nas/engine/live.py).
        with live.tracking(self.live_folder, int(payload.get("trial", -1)), spec_hash=spec.hash,
                           design=spec_label(payload["spec_json"])):
            record = run_trial(spec, self.config, seed=self.config.budget.seed, report=report_live)
        return record.to_dict()

    # ---- display ------------------------------------------------------------------------
    def outcome(self, study: optuna.Study, trial: FrozenTrial) -> str:
        c = counts(study)
        return f"trial {trial.number} {_outcome(study, trial)}  | failed {c.failed} | front {front_count(pareto_front(study))}"

    def summary(self, study: optuna.Study, *, final: bool) -> str | None:
        head = "Pareto front" if final else "current front"
        return f"{head}: {front_count(pareto_front(study))}\n" + front_table(study)

    def finish_line(self, study: optuna.Study) -> str:
        line = summary_line(counts(study), self.config.trials)
        if self.config.fidelity.scheduler == "none":
            return line
        return f"{line}; {stopping_text(stopping_summary(study, self.config.budget.tokens))}"


def _outcome(study: optuna.Study, trial: FrozenTrial) -> str:
    status = trial.user_attrs.get(ATTR_STATUS, trial.state.name.lower())
    label = design_label(trial)
    if trial.user_attrs.get(ATTR_SURPLUS):
        return str(trial.user_attrs[ATTR_REASON])
    if trial.state == TrialState.FAIL:
        return f"failed ({trial.user_attrs.get(ATTR_REASON, 'no reason recorded')}) {label}"
    if trial.state == TrialState.PRUNED:
        return f"{trial.user_attrs.get(ATTR_REASON, 'stopped early')} {label}"
    names = study.metric_names or []
    values = " ".join(f"{n}={fmt_value(v)}" for n, v in attrs.objective_values(trial, names).items())  # ±inf: never reached
    source = trial.user_attrs.get(ATTR_DUPLICATE_OF)
    dup = f" (same design as trial {source})" if source is not None else ""
    proposal = trial.user_attrs.get(ATTR_PROPOSAL) or (
        f"{trial.user_attrs[ATTR_RESAMPLED]} proposal(s) of designs the study has skipped"
        if trial.user_attrs.get(ATTR_RESAMPLED) else None)
    noise = noise_note(trial)
    return f"{status}{dup} {label}: {values}" + (f" [{proposal}]" if proposal else "") + (f" [{noise}]" if noise else "")


def fills_target(study: optuna.Study, number: int, target: int) -> bool:
    """Whether the trials numbered before ``number`` fill the target already: finished ones that
    count, running ones and queued ones (each runs before any new trial). Trial numbers are
    given in the order the storage creates trials, so every trial before this one is visible
    now: of two workers that ask for the last place at once, the later trial sees the earlier
    and steps back, and the target is never overshot."""
    ahead = 0
    for t in current(study.get_trials(deepcopy=False)):  # a trial measured again counts once
        if t.number < number and (t.state in (TrialState.RUNNING, TrialState.WAITING) or
                                  (t.state.is_finished() and not is_stale(t))):
            ahead += 1
    return ahead >= target


def evaluated_designs(study: optuna.Study) -> dict[str, int]:
    """spec hash → number of the first trial that evaluated it (COMPLETE, or failed on its own)."""
    known: dict[str, int] = {}
    for t in current(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))):
        if is_stale(t) or t.user_attrs.get(ATTR_ERROR) or ATTR_SPEC_HASH not in t.user_attrs:
            continue
        known.setdefault(t.user_attrs[ATTR_SPEC_HASH], t.number)
    return known


def copy_trial(study: optuna.Study, trial: optuna.Trial, source_number: int) -> None:
    """A design the study already evaluated, with the same budget and seed: its result is
    copied instead of training it again."""
    source = study.trials[source_number]
    attrs.copy(study, source, trial, skip=(ATTR_WORKER, ATTR_RETRY_OF, ATTR_PROPOSAL, ATTR_RESAMPLED,
                                           ATTR_REMEASURE_OF))  # the copy's own
    trial.set_user_attr(ATTR_DUPLICATE_OF, source_number)
    constraints = attrs.constraint_values(source)
    if constraints:
        compat.set_constraints(study, trial, list(constraints.values()))
    if source.state == TrialState.COMPLETE:
        study.tell(trial, source.values)
    else:  # a design stopped early or failed is not trained again either
        study.tell(trial, state=source.state)

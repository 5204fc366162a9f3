"""The in-process executor: trials one after another in this process, through the same
suggest → execute → tell path as Ray Tune's. For small jobs (a probe suite of second-long
runs, where starting Ray costs more than the work), tests, and replaying samplers."""
from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from nas.common import torch_threads
from nas.engine import compat
from nas.engine.job import TrialStopped
from nas.engine.recovery import worker_identity
from nas.engine.stopping import TrialRungs, prune, restored_scheduler
from nas.engine.trials import finish_trial, start_trial

if TYPE_CHECKING:
    from nas.engine.job import Job, Payload
    from nas.engine.progress import Progress


def run_round(job: Job, study: optuna.Study, n_trials: int, progress: Progress) -> None:
    """Run up to ``n_trials`` trials; Ctrl-C propagates (the engine requeues the trial). A
    trial's reports go to the job's rungs, if it has any, which may stop it there."""
    worker = worker_identity()
    plan = job.rung_plan()
    scheduler = restored_scheduler(plan, study) if plan else None
    with torch_threads(max(1, int(job.resources.cpus_per_trial))):
        for _ in range(n_trials):
            if job.remaining(study) <= 0:
                return
            trial, payload = start_trial(job, study, worker)
            progress.trial_started(trial.number, payload)
            rungs = TrialRungs(plan, scheduler, trial) if plan and scheduler else None
            try:
                told = _run_one(job, study, trial, payload, rungs)
            finally:
                progress.trial_ended(trial.number)
            if told is not None:
                progress.trial_finished(told)


def _run_one(job: Job, study: optuna.Study, trial: optuna.Trial, payload: Payload,
             rungs: TrialRungs | None) -> FrozenTrial | None:
    def report(step: int, metrics: dict[str, float]) -> None:
        decision = rungs.on_report(metrics) if rungs else None
        if decision is not None and not decision.keep:
            raise TrialStopped(decision)

    try:
        record, error = job.execute(payload, report), None
    except TrialStopped as stop:
        assert rungs is not None
        prune(study, rungs, stop.args[0])
        return compat.frozen(study, trial)
    except Exception as err:  # outside the job's own failure handling: a bug
        record, error = None, (f"{type(err).__name__}: {err}"[:500], traceback.format_exc(limit=-8))
    return finish_trial(job, study, trial, record, error=error)

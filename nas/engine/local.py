"""The in-process executor: trials one after another in this process, through the same
suggest → execute → tell path as Ray Tune's. For small jobs (a probe suite of second-long
runs, where starting Ray costs more than the work), tests, and replaying samplers."""
from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

import optuna

from nas.common import torch_threads
from nas.engine.recovery import worker_identity
from nas.engine.trials import finish_trial, start_trial

if TYPE_CHECKING:
    from nas.engine.job import Job
    from nas.engine.progress import Progress


def run_round(job: Job, study: optuna.Study, n_trials: int, progress: Progress) -> None:
    """Run up to ``n_trials`` trials; Ctrl-C propagates (the engine requeues the trial)."""
    worker = worker_identity()
    with torch_threads(max(1, int(job.resources.cpus_per_trial))):
        for _ in range(n_trials):
            if job.remaining(study) <= 0:
                return
            trial, payload = start_trial(job, study, worker)
            try:
                record, error = job.execute(payload, _report), None
            except Exception as err:  # outside the job's own failure handling: a bug
                record, error = None, (f"{type(err).__name__}: {err}"[:500], traceback.format_exc(limit=-8))
            told = finish_trial(job, study, trial, record, error=error)
            if told is not None:
                progress.trial_finished(told)


def _report(step: int, metrics: dict[str, float]) -> None:
    """Intermediate results: nothing acts on them in a serial run yet."""

"""The driver's half of one trial, the same for every executor: ask Optuna for the trial and
the job for its payload; when the worker is done, store its record and tell Optuna."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.engine import compat
from nas.engine.record import ATTR_ERROR, ATTR_REASON, ATTR_WORKER
from nas.engine.recovery import fail_and_requeue, worker_identity

if TYPE_CHECKING:
    from nas.engine.job import Job, Payload, Record

RAY_ERROR = ("the Ray trial errored before reporting a result", "Ray trial error (see the Ray logs)")


def start_trial(job: Job, study: optuna.Study, worker: dict[str, Any] | None = None) -> tuple[optuna.Trial, Payload]:
    """A new (or enqueued) trial, tagged with its worker first, so that a trial interrupted
    while its design is sampled is still known to be this process's; then its payload."""
    trial = study.ask()
    trial.set_user_attr(ATTR_WORKER, worker or worker_identity())
    return trial, job.suggest(trial)


def finish_trial(job: Job, study: optuna.Study, trial: optuna.Trial, record: Record | None, *,
                 error: tuple[str, str] | None = None) -> FrozenTrial | None:
    """Tell the trial. No record: an ``error`` (reason, detail: the worker died or raised
    outside the job) is a FAIL with them; no error either means the trial was stopped before it
    finished, so it is requeued and None is returned."""
    if record is not None:
        job.tell(study, trial, record)
    elif error is not None:
        trial.set_user_attr(ATTR_REASON, error[0])
        trial.set_user_attr(ATTR_ERROR, error[1])
        study.tell(trial, state=TrialState.FAIL)
    else:
        fail_and_requeue(study, [compat.frozen(study, trial)], "stopped before it finished")
        return None
    return compat.frozen(study, trial)

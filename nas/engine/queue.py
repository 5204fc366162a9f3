"""Jobs with a fixed set of trials (a ladder's grid, a probe suite's runs): each is enqueued
with fixed parameters, and a rerun enqueues only what has no settled trial yet."""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.engine.compat import count_trials, fail_trial
from nas.engine.job import BaseJob
from nas.engine.record import ATTR_ERROR, ATTR_REASON, is_stale

K = TypeVar("K", bound=Hashable)


def is_settled(trial: FrozenTrial) -> bool:
    """A fixed trial that needs no new run: complete, queued or running, or failed on its own
    (a divergence is a result). One that was interrupted, or that raised an unexpected error (a
    bug, out of memory), is run again by the next run."""
    if trial.state == TrialState.FAIL:
        return not is_stale(trial) and not trial.user_attrs.get(ATTR_ERROR)
    return trial.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)


def queue_missing(study: optuna.Study, wanted: Mapping[K, dict[str, Any]], key_of: Callable[[FrozenTrial], K | None], *,
                  what: str, user_attrs: Callable[[K], dict[str, Any]] | None = None) -> None:
    """Enqueue the parameters of every wanted key without a settled trial; fail queued trials
    whose key is no longer wanted (the grid shrank)."""
    settled = {key_of(t) for t in study.get_trials(deepcopy=False) if is_settled(t)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if key_of(t) not in wanted:
            fail_trial(study, t, {ATTR_REASON: f"not in the {what} any more"})
    for key, params in wanted.items():
        if key not in settled:
            study.enqueue_trial(params, user_attrs=user_attrs(key) if user_attrs else None)


def waiting_keys(study: optuna.Study, key_of: Callable[[FrozenTrial], K | None]) -> set[K | None]:
    return {key_of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}


def finished_keys(study: optuna.Study, key_of: Callable[[FrozenTrial], K | None]) -> set[K | None]:
    """Keys with a settled, finished trial."""
    states = (TrialState.COMPLETE, TrialState.FAIL)
    return {key_of(t) for t in study.get_trials(deepcopy=False, states=states) if is_settled(t)}


class FixedTrialsJob(BaseJob):
    """A job whose trials are known in advance (a ladder's grid, a suite's runs, a table's
    designs × seeds): each is enqueued with fixed parameters under a key, and the engine's
    rounds pop the queue. Subclasses say what is wanted and how to read a trial's key."""

    what: ClassVar[str] = "grid"  # for the reason given to a queued trial no longer wanted

    def wanted(self) -> Mapping[Hashable, dict[str, Any]]:
        """key → the Optuna parameters of its trial."""
        raise NotImplementedError

    def key_of(self, trial: FrozenTrial) -> Hashable | None:
        raise NotImplementedError

    def queue_attrs(self, key: Hashable) -> dict[str, Any]:
        """User attributes of a queued trial (readable before it runs)."""
        return {}

    def prepare(self, study: optuna.Study) -> None:
        queue_missing(study, self.wanted(), self.key_of, what=self.what, user_attrs=self.queue_attrs)

    def remaining(self, study: optuna.Study) -> int:
        """The queued trials: after ``prepare`` (which fails every queued trial that is no longer
        wanted) each is a wanted key, so a count in the database answers without reading them."""
        return count_trials(study, (TrialState.WAITING,))

    def progress(self, study: optuna.Study) -> tuple[int, int]:
        wanted = self.wanted()
        return len(finished_keys(study, self.key_of) & set(wanted)), len(wanted)


def results_by_key(study: optuna.Study, key_of: Callable[[FrozenTrial], K | None]) -> dict[K, FrozenTrial]:
    """The trial that is each key's result: its first COMPLETE trial, else its last failed one
    (an error retried later gives way to the retry); interruptions are never results."""
    chosen: dict[K, FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        key = key_of(t)
        if key is None or t.state not in (TrialState.COMPLETE, TrialState.FAIL) or is_stale(t):
            continue
        if key not in chosen or chosen[key].state != TrialState.COMPLETE:
            chosen[key] = t
    return chosen

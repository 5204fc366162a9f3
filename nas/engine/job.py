"""What the engine runs: a job. A study, a ladder and a probe suite are jobs.

The engine owns the lifecycle (storage and its lock, stale trials, rounds of Ray Tune or of
the in-process executor, Ctrl-C, telling Optuna, progress); a job says what one trial is:

    driver:  open_study → prepare → [remaining > 0: suggest(trial) → payload ... tell(record)]
    worker:  execute(payload, report) → record     (a Ray actor, or this process)

The payload and the record are JSON-able dicts, because they cross a process boundary. A job
object itself travels to the workers (pickled), so it holds plain configuration only.
``report(step, metrics)`` sends an intermediate result (a learning-curve point) to the engine.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from nas.engine.record import tell_record
from nas.engine.rungs import RungPlan

Report = Callable[[int, dict[str, float]], None]
OBJECTIVE_PREFIX = "objective:"  # a report's metric carrying an objective's value (known before training ends)


class TrialStopped(Exception):
    """Raised out of a trial's ``report`` when the engine's scheduler stops it at a rung; the
    job lets it through (it is no failure of the design) and the engine records the trial as
    PRUNED."""
Payload = dict[str, Any]
Record = dict[str, Any]


def no_report(step: int, metrics: dict[str, float]) -> None:
    """For callers that run a job's trial outside the engine."""


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What each trial asks for, and where it may run (see ``nas.engine.tune``)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 1
    target: str = "local"
    ray_address: str | None = None
    dashboard: bool = False

    @classmethod
    def of(cls, resources: Any, ray: Any) -> Resources:
        """From a config's ``[resources]`` and ``[ray]`` sections."""
        return cls(cpus_per_trial=resources.cpus_per_trial, gpus_per_trial=resources.gpus_per_trial,
                   max_concurrent=resources.max_concurrent, target=resources.target, ray_address=ray.address,
                   dashboard=ray.dashboard)


class Job(Protocol):
    # Read-only: jobs give these as properties derived from their config.
    @property
    def name(self) -> str: ...

    @property
    def storage_url(self) -> str: ...

    @property
    def resources(self) -> Resources: ...

    def open_study(self, storage: BaseStorage) -> optuna.Study:
        """The job's study, created or loaded (and checked against the job's config)."""

    def prepare(self, study: optuna.Study) -> None:
        """Before any trial: e.g. enqueue a fixed grid of trials."""

    def remaining(self, study: optuna.Study) -> int:
        """Trials still to start, counting the ones other workers run."""

    def progress(self, study: optuna.Study) -> tuple[int, int]:
        """(done, target) for the progress display."""

    def suggest(self, trial: optuna.Trial) -> Payload:
        """The trial's payload; sampled (or read from its enqueued parameters) in the driver."""

    def execute(self, payload: Payload, report: Report) -> Record:
        """Run one trial in a worker; a trial's own failure is a failed record, never a raise."""

    def tell(self, study: optuna.Study, trial: optuna.Trial, record: Record) -> None:
        """Store the record in the trial and tell Optuna."""

    def rung_plan(self) -> RungPlan | None:
        """Rungs at which the engine may stop a trial early; None: every trial runs to the end."""

    def outcome(self, study: optuna.Study, trial: FrozenTrial) -> str:
        """One progress line about a finished trial."""

    def summary(self, study: optuna.Study, *, final: bool) -> str | None:
        """A few lines shown every few trials and at the end (a study's front), or None."""

    def finish_line(self, study: optuna.Study) -> str:
        """What the job's trials add up to, printed when the run ends."""


class ConfiguredJob:
    """A job built from one config with ``name``, ``storage_url``, ``resources`` and ``ray``
    (a ladder's, a table's): its name, storage and resources are the config's."""

    config: Any

    @property
    def name(self) -> str:
        return str(self.config.name)

    @property
    def storage_url(self) -> str:
        return str(self.config.storage_url)

    @property
    def resources(self) -> Resources:
        return Resources.of(self.config.resources, self.config.ray)


class BaseJob:
    """Defaults for the optional parts of a job."""

    def prepare(self, study: optuna.Study) -> None:
        return None

    def rung_plan(self) -> RungPlan | None:
        """Rungs at which the engine may stop a trial early (nas/engine/rungs.py); None: never."""
        return None

    def tell(self, study: optuna.Study, trial: optuna.Trial, record: Record) -> None:
        tell_record(study, trial, record)

    def summary(self, study: optuna.Study, *, final: bool) -> str | None:
        return None

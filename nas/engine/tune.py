"""Ray Tune executes the trials of a job. This is the only module that imports ``ray``.

The searcher runs in this (driver) process and implements Ray Tune's public two-method
``Searcher`` contract over the job: ``suggest`` asks the job's Optuna study for a trial and the
job for its payload; ``on_trial_complete`` stores the worker's record and tells Optuna. A
trial runs the job's ``execute`` in a Ray actor (reused between trials) with the job's
resources.

Without an address a local Ray starts and stops with the run, with its files in a fresh
folder of the system temp dir that is removed afterwards, and no dashboard unless asked; a
watchdog ends its processes if the driver is killed (nas/engine/scratch.py, watchdog.py).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from nas.engine import compat
from nas.engine.job import no_report
from nas.engine.recovery import release_own_trials, requeue_lost, worker_identity
from nas.engine.rungs import Decision, RungScheduler
from nas.engine.scratch import scratch_folder
from nas.engine.stopping import TrialRungs, prune, restored_scheduler
from nas.engine.trials import RAY_ERROR, finish_trial, start_trial

if TYPE_CHECKING:
    from nas.engine.job import Job, Resources
    from nas.engine.progress import Progress

# Quiet Ray: our own progress lines are the display. Set before ray is imported.
_RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the legacy reporter honours verbose=0
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C reaches us; we requeue and say how to resume
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # results carry the record, not a metric
    # A trial stays in the working directory it started in (a local Ray's: the driver's), so that
    # a relative data path or tokenizer.json means in a worker what it means in the study file.
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    # No CSV, JSON or TensorBoard result loggers: storage holds the results, and tensorboardX warns
    # "NaN or Inf found in input tensor" for every never-measured objective.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
for _key, _value in _RAY_ENV.items():
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.job_config import JobConfig  # noqa: E402
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

PAYLOAD_KEY = "qkvnas_payload"
RECORD_KEY = "qkvnas_record"
STEP_KEY = "qkvnas_step"


# ---- Ray lifecycle ----------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(resources: Resources, address: str | None = None, *, name: str | None = None) -> Iterator[str]:
    """Attach to ``address`` (or the job's) or start a local Ray for the duration of the run.
    Yields a scratch folder in the system temp dir for Tune's own files; it is removed at the
    end, and so are the local Ray's processes, also when this process is killed (scratch.py).
    ``name``: the job's, for Ray's namespace and job metadata (``ray list jobs``, the dashboard)."""
    address = address or resources.ray_address
    named: dict[str, Any] = {} if name is None else {
        "namespace": f"qkvnas-{name}", "job_config": JobConfig(metadata={"qkvnas_job": name})}
    with scratch_folder(local_ray=not address) as scratch:
        try:
            if address:
                check_reachable(address)
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, **named)
            else:
                # A local single-user run: no auth token under $HOME (Ray 2.60 writes one otherwise).
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                ray.init(include_dashboard=resources.dashboard, _temp_dir=scratch, logging_level=logging.ERROR,
                         log_to_driver=False, **named)
            check_target(resources.target, ray.cluster_resources())
            yield os.path.join(scratch, "tune")
        finally:
            ray.shutdown()


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a wrong --ray-address: ray.init would retry a dead address forever."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", ray:// client addresses: left to Ray
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2.0).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise ValueError(f"--ray-address {address}: no Ray cluster answers there ({err}); start one with "
                                 "`ray start --head`, or leave out --ray-address to run a local Ray") from None
            time.sleep(0.5)


# ---- the target hardware ------------------------------------------------------------------
_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


def target_resource(target: str) -> str | None:
    """The Ray resource that marks a study's target nodes; None for "local" (anywhere)."""
    kind, _, name = target.partition(":")
    return {"local": None, "accelerator": f"accelerator_type:{name}", "resource": name}[kind]


def trial_resources(resources: Any) -> dict[str, float]:
    """What each trial asks Ray for: its CPUs and GPUs, and a sliver of the target's resource,
    which places it on a matching node without limiting how many trials run there."""
    out = {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial}
    key = target_resource(resources.target)
    if key is not None:
        out[key] = 0.001
    return out


def check_target(target: str, cluster: dict[str, float]) -> None:
    """A target that no node of the cluster has is an error before any trial starts: the study's
    figures are for that hardware, and trials must not quietly run (and measure) elsewhere."""
    key = target_resource(target)
    if key is None or cluster.get(key, 0) > 0:
        return
    have = sorted(k for k in cluster if k not in _BUILTIN and not k.startswith("node:"))
    hint = ("start a node that has one" if key.startswith("accelerator_type:")
            else f"start a node with `ray start --resources='{{\"{key}\": 1}}'`")
    raise ValueError(f"resources.target = {target!r}: no node of this Ray cluster has the resource {key!r} "
                     f"(it has {', '.join(have) or 'only CPU, GPU and memory'}); {hint} and pass its address "
                     "with --ray-address, or set resources.target = \"local\"")


# ---- the searcher -----------------------------------------------------------------------
@dataclass
class _Driver:
    """The searcher's state in this process. Tune pickles its searcher into the experiment
    folder, and an open storage or a terminal cannot be pickled: the searcher holds a key."""

    job: Job
    study: optuna.Study
    progress: Progress
    worker: dict[str, Any] = field(default_factory=worker_identity)
    trials: dict[str, optuna.Trial] = field(default_factory=dict)
    told: set[str] = field(default_factory=set)
    scheduler: RungScheduler | None = None  # the job's rungs, if it has any
    rungs: dict[str, TrialRungs] = field(default_factory=dict)
    stopped: dict[str, Decision] = field(default_factory=dict)  # trials the rungs stopped
    lost: dict[str, str] = field(default_factory=dict)  # trials whose worker was lost, and how

    def __post_init__(self) -> None:
        plan = self.job.rung_plan()
        self.scheduler = restored_scheduler(plan, self.study) if plan else None


_DRIVERS: dict[str, _Driver] = {}


class EngineSearch(Searcher):
    """Ray Tune's searcher contract over a job and its Optuna study."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the job defines the space and the objectives; Tune's are not used

    # Ray annotates Optional[Dict] but documents (and handles) Searcher.FINISHED as a return.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        d = _DRIVERS[self.key]
        # Other workers (journal or PostgreSQL storage) fill the same target: stop asking
        # once the finished and running trials of all of them reach it.
        if d.job.remaining(d.study) <= 0:
            return Searcher.FINISHED
        trial, payload = start_trial(d.job, d.study, d.worker)
        d.trials[trial_id] = trial
        d.progress.trial_started(trial.number, payload)
        plan = d.job.rung_plan()
        if plan and d.scheduler:
            d.rungs[trial_id] = TrialRungs(plan, d.scheduler, trial)
        return {PAYLOAD_KEY: json.dumps(payload)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return  # intermediate reports go to EngineScheduler, which may stop the trial

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        d = _DRIVERS[self.key]
        if trial_id in d.told or trial_id not in d.trials:
            return
        d.told.add(trial_id)
        d.progress.trial_ended(d.trials[trial_id].number)
        if trial_id in d.lost:
            _requeue_lost(d, trial_id)
            return
        if trial_id in d.stopped:
            prune(d.study, d.rungs[trial_id], d.stopped[trial_id])
            d.progress.trial_finished(compat.frozen(d.study, d.trials[trial_id]))
            return
        record = json.loads(result[RECORD_KEY]) if result and RECORD_KEY in result else None
        told = finish_trial(d.job, d.study, d.trials[trial_id], record, error=RAY_ERROR if error else None)
        if told is not None:
            d.progress.trial_finished(told)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the job's storage is the checkpoint (a rerun reads it)."""

    def restore(self, checkpoint_path: str) -> None:
        raise RuntimeError("a qkvnas run resumes from its storage: run it again, not Tuner.restore")


class EngineScheduler(FIFOScheduler):
    """Ray Tune's scheduler contract over the job's rungs: each intermediate report is ranked
    at the rung it reaches (nas/engine/stopping.py), and a trial outside the top 1/η stops.
    Asynchronous: a decision never waits for other trials."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """Called before the searcher hears of the error: note a trial whose worker was lost."""
        lost = lost_worker(trial)
        if lost is not None:
            _DRIVERS[self.key].lost[trial.trial_id] = lost
        super().on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        d = _DRIVERS[self.key]
        rungs = d.rungs.get(trial.trial_id)
        if STEP_KEY not in result or rungs is None:
            return TrialScheduler.CONTINUE
        decision = rungs.on_report(result)
        if decision is not None and not decision.keep:
            d.stopped[trial.trial_id] = decision
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


# ---- a lost worker ------------------------------------------------------------------------
# The job's execute records its own failures, so a trial that errors in Ray either lost the
# process it ran in (its node died, the process was killed: these) or hit a bug in the engine.
_LOST = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
         ray.exceptions.LocalRayletDiedError)


def lost_worker(trial: Any) -> str | None:
    """How a failed Tune trial lost its worker ("ActorUnavailableError: ..."), or None when it
    did not (its error was raised by code, or cannot be read)."""
    try:  # Tune pickles the error beside the trial (local_path) before it tells the scheduler
        path = trial.pickled_error_file
        if not path or not os.path.isfile(path):
            return None
        with open(path, "rb") as fh:
            error = ray.cloudpickle.load(fh)
    except Exception:  # an unreadable error file: treated as an error of the trial
        return None
    cause = getattr(error, "cause", None)  # a task error that wraps an actor's death
    lost = error if isinstance(error, _LOST) else cause if isinstance(cause, _LOST) else None
    return None if lost is None else f"{type(lost).__name__}: {str(lost).splitlines()[0][:200]}"


def _requeue_lost(d: _Driver, trial_id: str) -> None:
    trial = compat.frozen(d.study, d.trials[trial_id])
    if requeue_lost(d.study, trial, d.lost[trial_id]):
        d.progress.note(f"trial {trial.number} lost its Ray worker ({d.lost[trial_id].split(':')[0]}): queued again")
    else:
        d.progress.trial_finished(compat.frozen(d.study, d.trials[trial_id]))


# ---- the trainable (runs in a Ray actor) ------------------------------------------------
def _trainable(params: dict[str, Any], job: Job) -> None:
    import torch

    # As many torch threads as the trial holds CPUs: more oversubscribes the node and slows
    # every concurrent trial many times over; fewer leaves reserved cores idle.
    torch.set_num_threads(max(1, math.floor(job.resources.cpus_per_trial)))

    def report(step: int, metrics: dict[str, float]) -> None:
        tune.report({STEP_KEY: step, **metrics})

    # Each tune.report is a round trip to the driver that the training loop waits on: the
    # learning-curve points are sent only when the job has rungs to act on them.
    record = job.execute(json.loads(params[PAYLOAD_KEY]), report if job.rung_plan() else no_report)
    tune.report({RECORD_KEY: json.dumps(record)})


def named_trainable(job_name: str) -> Any:
    """``_trainable`` under the job's name: Ray names a trial's actor and tasks after it
    (``qkvnas_quick.train`` in ``ray list tasks`` and the dashboard, not ``_trainable.train``)."""

    def trainable(params: dict[str, Any], job: Job) -> None:
        _trainable(params, job)

    trainable.__name__ = trainable.__qualname__ = "qkvnas_" + "".join(c if c.isalnum() else "_" for c in job_name)
    return trainable


def trial_name(job_name: str, trial: Any) -> str:
    """Tune's name for a trial: the job and the Optuna trial number ("quick-trial3")."""
    try:
        number = json.loads(trial.config[PAYLOAD_KEY]).get("trial")
    except (KeyError, TypeError, ValueError):
        number = None
    return f"{job_name}-trial{number}" if number is not None else f"{job_name}-{trial.trial_id}"


# ---- one round ------------------------------------------------------------------------------
def run_round(job: Job, study: optuna.Study, n_trials: int, progress: Progress, scratch: str) -> None:
    """Up to ``n_trials`` trials as one Ray Tune run; this process's unfinished trials (Ctrl-C,
    an actor lost) are requeued, never left RUNNING."""
    key = f"{job.name}-{time.time_ns()}"
    _DRIVERS[key] = _Driver(job=job, study=study, progress=progress)
    trainable = tune.with_resources(tune.with_parameters(named_trainable(job.name), job=job), trial_resources(job.resources))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=EngineSearch(key), scheduler=EngineScheduler(key), num_samples=n_trials,
                                    reuse_actors=True, max_concurrent_trials=job.resources.max_concurrent,
                                    trial_name_creator=functools.partial(trial_name, job.name),
                                    trial_dirname_creator=functools.partial(trial_name, job.name)),
        run_config=tune.RunConfig(name=f"{job.name}-{int(time.time())}", storage_path=scratch, verbose=0),
    )
    try:
        with _tune_failures_unlogged():
            tuner.fit()
    finally:
        del _DRIVERS[key]
        release_own_trials(study)


# Tune logs every failed trial's traceback, and a summary of them, at ERROR. The engine records
# and prints each failure as one line with its reason (the traceback is kept in the trial), so
# these two messages are dropped; every other Ray message still gets through.
_TUNE_FAILURE_LOGS = {"ray.tune.execution.tune_controller": "Trial task failed", "ray.tune.tune": "Trials did not complete"}


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def _tune_failures_unlogged() -> Iterator[None]:
    filters = [(logging.getLogger(name), _DropPrefix(prefix)) for name, prefix in _TUNE_FAILURE_LOGS.items()]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)

"""Ray Tune executes the trials; Optuna, through Ray's ``OptunaSearch``, chooses them and keeps
the record in the study's storage. This is the only module that imports ``ray``.

The searcher runs in this (driver) process: it asks the study for a trial, samples the design
with the search space (define-by-run), and when the trial ends it writes the trial's record
into the same storage and tells Optuna. A trial runs ``nas.trial.run_trial`` in a Ray actor
(reused between trials) with the resources of the study file.

Without ``ray.address`` a local Ray starts and stops with the run, with its files in a fresh
folder of the system temp dir that is removed afterwards, and no dashboard unless asked.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState

from nas.config import StudyConfig
from nas.progress import Progress
from nas.study import (
    ATTR_DUPLICATE_OF, ATTR_REASON, ATTR_RETRY_OF, ATTR_SPEC_HASH, ATTR_STALE, ATTR_WORKER, count_done,
    fail_and_requeue, release_own_trials, tell_record, worker_identity,
)
from search_spaces import get_space

# Quiet Ray: our own progress lines are the display. Set before ray is imported.
_RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the legacy reporter honours verbose=0
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C reaches us; we requeue and say how to resume
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # failed trials report no objective values
}
RECORD_KEY = "qkvnas_record"


# ---- Ray lifecycle ----------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(config: StudyConfig, address: str | None) -> Iterator[str]:
    """Attach to ``address`` or start a local Ray for the duration of the run. Yields a scratch
    folder in the system temp dir for Tune's own files; it is removed at the end."""
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    address = address or config.ray.address
    scratch = tempfile.mkdtemp(prefix="qkvnas-ray-")  # short: Ray's socket paths must fit 107 bytes
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            # A local single-user run: no auth token under $HOME (Ray 2.60 writes one otherwise).
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(include_dashboard=config.ray.dashboard, _temp_dir=scratch, logging_level=logging.ERROR,
                     log_to_driver=False)
        check_target(config.resources.target, ray.cluster_resources())
        yield os.path.join(scratch, "tune")
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


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
def _make_searcher(config: StudyConfig, study: optuna.Study, progress: Progress) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch that stores each trial's whole record, constraints and reason before
        telling Optuna, and that skips designs the study has already evaluated."""

        def __init__(self) -> None:
            space = get_space(config.space.name, **config.space.options)
            self._known = _evaluated_designs(study)
            super().__init__(
                space=self._define_by_run(space), metric=[f"objective_{i}" for i in range(len(config.objectives))],
                mode=["min" if d == "minimize" else "max" for d in _directions(study)],
                sampler=study.sampler, storage=study._storage, study_name=study.study_name,
            )

        def _define_by_run(self, space: Any) -> Any:
            worker = worker_identity()

            def sample(trial: Any) -> dict[str, Any]:
                trial.set_user_attr(ATTR_WORKER, worker)  # first: an interrupted sample is still ours
                spec = space.sample(trial)
                trial.set_user_attr(ATTR_SPEC_HASH, spec.hash)
                return {"spec_json": spec.to_json(), ATTR_DUPLICATE_OF: self._known.get(spec.hash)}

            return sample

        def suggest(self, trial_id: str) -> dict | str | None:
            # Other workers (journal or PostgreSQL storage) fill the same target: stop asking
            # once the finished and running trials of all of them reach it.
            if count_done(study) + _running(study) >= config.trials:
                return self.FINISHED
            return super().suggest(trial_id)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the study's storage is the checkpoint (resume reads it)."""

        def restore(self, checkpoint_path: str) -> None:
            raise RuntimeError("a qkvnas study resumes from its storage: use `qkvnas resume NAME`, not Tuner.restore")

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            ot_trial = self._ot_trials[trial_id]
            record = json.loads(result[RECORD_KEY]) if result and RECORD_KEY in result else None
            duplicate_of = (result or {}).get(ATTR_DUPLICATE_OF)
            if duplicate_of is not None:
                _copy_trial(study, ot_trial, duplicate_of)
            elif record is not None:
                tell_record(study, ot_trial, record)
                if record["status"] != "failed" or not record.get("error"):
                    self._known.setdefault(record["spec_hash"], ot_trial.number)
            elif error:  # the actor died or the trainable raised outside run_trial
                ot_trial.set_user_attr(ATTR_REASON, "the Ray trial errored before reporting a result")
                study.tell(ot_trial, state=TrialState.FAIL)
            else:  # stopped without a result: not finished, so it is requeued
                fail_and_requeue(study, [study._storage.get_trial(ot_trial._trial_id)], "stopped by Ray before it finished")
                return
            progress.trial_finished(study._storage.get_trial(ot_trial._trial_id))

    return StudySearch()


def _directions(study: optuna.Study) -> list[str]:
    return ["minimize" if d == optuna.study.StudyDirection.MINIMIZE else "maximize" for d in study.directions]


def _evaluated_designs(study: optuna.Study) -> dict[str, int]:
    """spec hash → number of the first trial that evaluated it (COMPLETE, or failed on its own)."""
    known: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.user_attrs.get(ATTR_STALE) or t.user_attrs.get("error") or ATTR_SPEC_HASH not in t.user_attrs:
            continue
        known.setdefault(t.user_attrs[ATTR_SPEC_HASH], t.number)
    return known


def _copy_trial(study: optuna.Study, ot_trial: optuna.Trial, source_number: int) -> None:
    """A design the study already evaluated, with the same budget and seed: its result is
    copied instead of training it again (samplers propose repeats in small spaces)."""
    source = study.trials[source_number]
    for key, value in source.user_attrs.items():
        if key not in (ATTR_WORKER, ATTR_RETRY_OF):
            ot_trial.set_user_attr(key, value)
    ot_trial.set_user_attr(ATTR_DUPLICATE_OF, source_number)
    for key, value in source.constraints.items():
        ot_trial.set_constraint(key, value)
    if source.state == TrialState.COMPLETE:
        study.tell(ot_trial, source.values)
    else:
        study.tell(ot_trial, state=TrialState.FAIL)


# ---- the trainable (runs in a Ray actor) ------------------------------------------------
def _use_cpus(cpus_per_trial: float) -> None:
    """Give torch as many threads as the trial holds CPUs: more oversubscribes the node and
    slows every concurrent trial many times over; fewer leaves reserved cores idle."""
    import torch

    torch.set_num_threads(max(1, math.floor(cpus_per_trial)))


def _trainable(params: dict[str, Any], study_json: str) -> None:
    from ray import tune

    from nas.trial import run_trial
    from search_spaces.spec import ArchSpec

    if params.get(ATTR_DUPLICATE_OF) is not None:
        tune.report({ATTR_DUPLICATE_OF: params[ATTR_DUPLICATE_OF]})
        return
    config = StudyConfig.from_json(study_json)
    _use_cpus(config.resources.cpus_per_trial)
    record = run_trial(ArchSpec.from_json(params["spec_json"]), config, seed=config.budget.seed)
    metrics = {f"objective_{i}": record.values.get(name, math.nan) for i, name in enumerate(config.objectives)}
    tune.report({**metrics, RECORD_KEY: json.dumps(record.to_dict())})


# ---- a run ------------------------------------------------------------------------------
def execute(config: StudyConfig, study: optuna.Study, *, address: str | None, progress: Progress) -> None:
    """Run trials until the study has ``config.trials`` finished ones, counting the trials that
    other workers are running. Ctrl-C raises KeyboardInterrupt after this process's unfinished
    trials are requeued."""
    with ray_session(config, address) as scratch:
        progress.start()
        stalled_rounds = 0
        while True:
            done, running = count_done(study), _running(study)
            if done >= config.trials:
                return
            if done + running >= config.trials:
                progress.note(f"the last {running} trial(s) are running in other workers; "
                              f"`qkvnas status {config.name}` shows when they finish")
                return
            _one_tuner_run(config, study, config.trials - done - running, progress, scratch)
            stalled_rounds = stalled_rounds + 1 if count_done(study) == done else 0
            if stalled_rounds >= 2:
                raise RuntimeError("Ray Tune ended two rounds in a row without finishing a trial; "
                                   "is the Ray cluster short of the resources a trial asks for?")


def _running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _one_tuner_run(config: StudyConfig, study: optuna.Study, n_trials: int, progress: Progress, scratch: str) -> None:
    from ray import tune

    searcher = _make_searcher(config, study, progress)
    trainable = tune.with_resources(tune.with_parameters(_trainable, study_json=config.to_json()),
                                    trial_resources(config.resources))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n_trials, reuse_actors=True,
                                    max_concurrent_trials=config.resources.max_concurrent),
        run_config=tune.RunConfig(name=f"{config.name}-{int(time.time())}", storage_path=scratch, verbose=0),
    )
    try:
        tuner.fit()
    finally:
        # Trials that did not finish (Ctrl-C, an actor lost) are requeued, not left RUNNING.
        release_own_trials(study)


# ---- ladders: fixed points, enqueued in advance, run through the same Ray session --------
def run_ladder_round(config: Any, study: optuna.Study, by_key: dict[tuple, Any], n: int, progress: Any,
                     scratch: str) -> None:
    """Run `n` of a ladder's enqueued points (nas/ladder.py) as Ray Tune trials; each record is
    told to the ladder's study as it arrives."""
    from ray import tune

    searcher = _make_ladder_searcher(study, by_key, progress)
    trainable = tune.with_resources(tune.with_parameters(_ladder_trainable, ladder_json=config.to_json()),
                                    trial_resources(config.resources))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n, reuse_actors=True,
                                    max_concurrent_trials=config.resources.max_concurrent),
        run_config=tune.RunConfig(name=f"{config.name}-{int(time.time())}", storage_path=scratch, verbose=0),
    )
    try:
        tuner.fit()
    finally:  # Ctrl-C or a lost actor: this process's unfinished trials are requeued, never left RUNNING
        release_own_trials(study)


def _ladder_trainable(params: dict[str, Any], ladder_json: str) -> None:
    from ray import tune

    from nas.ladder import OBJECTIVE, LadderConfig, Point, run_point

    config = LadderConfig.from_json(ladder_json)
    _use_cpus(config.resources.cpus_per_trial)
    point = Point(**json.loads(params["point_json"]))
    record = run_point(point, config)
    value = record["values"].get(OBJECTIVE, math.nan) if record["status"] == "complete" else math.nan
    tune.report({OBJECTIVE: value, RECORD_KEY: json.dumps(record)})


def _make_ladder_searcher(study: optuna.Study, by_key: dict[tuple, Any], progress: Any) -> Any:
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from nas.ladder import ATTR_ERROR, OBJECTIVE, point_attrs, suggest_point, waiting_points

    worker = worker_identity()
    points = list(by_key.values())

    class LadderSearch(OptunaSearch):
        """Pops the ladder's enqueued trials; stores each record before telling Optuna."""

        def __init__(self) -> None:
            super().__init__(space=self._sample, metric=OBJECTIVE, mode="min", sampler=study.sampler,
                             storage=study._storage, study_name=study.study_name)

        @staticmethod
        def _sample(trial: Any) -> dict[str, Any]:
            trial.set_user_attr(ATTR_WORKER, worker)  # first: an interrupted sample is still ours
            point = suggest_point(trial, by_key)
            for key, value in point_attrs(point).items():
                trial.set_user_attr(key, value)
            return {"point_json": json.dumps(point.to_dict())}

        def suggest(self, trial_id: str) -> dict | None:
            if trial_id not in self._ot_trials and not waiting_points(study, points):
                return Searcher.FINISHED  # the queue is empty (another worker took the rest)
            return super().suggest(trial_id)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            return  # one final report per trial: nothing to prune on

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the ladder's storage is the checkpoint (a rerun reads it)."""

        def restore(self, checkpoint_path: str) -> None:
            raise RuntimeError("a ladder resumes from its storage: run `qkvnas ladder` again, not Tuner.restore")

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            ot_trial = self._ot_trials[trial_id]
            if result and RECORD_KEY in result:
                tell_record(study, ot_trial, json.loads(result[RECORD_KEY]))
            elif error:  # e.g. the actor died: recorded, and tried again by the next run_ladder
                ot_trial.set_user_attr(ATTR_REASON, "the Ray trial errored before reporting a result")
                ot_trial.set_user_attr(ATTR_ERROR, "Ray trial error (see the Ray logs)")
                study.tell(ot_trial, state=TrialState.FAIL)
            else:  # stopped without a result: not finished, so it is queued again
                fail_and_requeue(study, [study._storage.get_trial(ot_trial._trial_id)], "stopped before it finished")
                return
            progress.finished(study._storage.get_trial(ot_trial._trial_id))

    return LadderSearch()

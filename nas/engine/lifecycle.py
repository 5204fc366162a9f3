"""``run(job)``: the one lifecycle of a study, a ladder, a probe suite.

    lock the storage (SQLite: one worker) → open the job's study → requeue stale trials
      → job.prepare → rounds of trials (Ray Tune, or in this process) until none remain
      → Ctrl-C, SIGTERM or SIGHUP (signals.py): this process's unfinished trials are requeued,
        the result says interrupted and by which signal

A killed run loses no told trial: each is written to storage when it finishes, and the next
run requeues whatever its dead worker left RUNNING.
"""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.trial import TrialState

from nas.engine import outcome
from nas.engine.job import Job
from nas.engine.progress import Progress, TextOut
from nas.engine.record import count_state
from nas.engine.recovery import recover_stale_trials, release_own_trials
from nas.engine.signals import Stop, stop_on_signals
from nas.engine.storage import SQLiteLock, open_storage, single_writer

Executor = Literal["ray", "local"]
RoundFn = Callable[[int], None]  # run up to n trials
MAX_STALLED_ROUNDS = 2


@dataclass(frozen=True, kw_only=True)
class EngineRun:
    """What one ``run`` did. ``study`` stays usable (its storage is still open) after the lock
    is released."""

    study: optuna.Study
    interrupted: bool
    stale: tuple[int, ...]  # trials a stopped worker left running, requeued
    done_before: int  # the job's done count when this run started
    finished: int  # trials this run finished (told)
    signal: int | None = None  # the signal that stopped an interrupted run (None: Ctrl-C or none)


def run(job: Job, *, executor: Executor = "ray", address: str | None = None, progress: bool = True,
        out: TextOut | None = None, locked: bool = False) -> EngineRun:
    """Run the job's remaining trials. ``locked``: the caller already holds the storage lock
    (to do more under it, e.g. export). SIGTERM and SIGHUP stop it as Ctrl-C does."""
    stop = Stop()
    try:
        with stop_on_signals(stop):
            if locked:
                done = _run_locked(job, stop, executor=executor, address=address, progress=progress,
                                   out=out or sys.stdout)
            else:
                with SQLiteLock(job.storage_url, job.name):
                    done = _run_locked(job, stop, executor=executor, address=address, progress=progress,
                                       out=out or sys.stdout)
    finally:
        outcome.record_signal(stop.signum)  # also when a signal came before the rounds (the exit code)
    return outcome.record(done)


def _run_locked(job: Job, stop: Stop, *, executor: Executor, address: str | None, progress: bool,
                out: TextOut) -> EngineRun:
    study = job.open_study(open_storage(job.storage_url))
    stale = recover_stale_trials(study, all_running=single_writer(job.storage_url))
    if stale:
        print(f"trials {stale} were left running by a stopped worker: marked failed and queued again", file=out)
    job.prepare(study)
    done_before = job.progress(study)[0]
    shown = Progress(job, study, out=out, enabled=progress)
    try:
        if job.remaining(study) > 0:
            _rounds(job, study, shown, stop, executor=executor, address=address)
    except Exception:
        shown.close()
        raise
    except KeyboardInterrupt:
        shown.close()
        release_own_trials(study)
        if single_writer(job.storage_url):
            # One writer holds a SQLite study: a trial that Ctrl-C caught between its creation
            # and its worker tag is ours too, and must not stay RUNNING.
            recover_stale_trials(study, all_running=True)
        return EngineRun(study=study, interrupted=True, stale=tuple(stale), done_before=done_before,
                         finished=shown.finished_here, signal=stop.signum)
    shown.finish(job.finish_line(study))
    return EngineRun(study=study, interrupted=False, stale=tuple(stale), done_before=done_before,
                     finished=shown.finished_here)


def _rounds(job: Job, study: optuna.Study, shown: Progress, stop: Stop, *, executor: Executor,
            address: str | None) -> None:
    """Rounds until no trial remains: a round ends early when trials were interrupted (they
    come back queued) or Ray stopped; two rounds in a row that finish nothing are an error."""
    if executor == "local":
        _loop(job, study, shown, lambda n: _local_round(job, study, n, shown))
        return
    from nas.engine import tune  # imports Ray only when trials are to run

    try:
        with tune.ray_session(job.resources, address, name=job.name) as scratch:
            stop.install()  # ray.init put Ray's SIGTERM handlers in front of ours; run() restores the old ones
            _loop(job, study, shown, lambda n: tune.run_round(job, study, n, shown, scratch))
    except SystemExit as end:
        if end.code != signal.SIGTERM:
            raise
        # SIGTERM while ray.init ran reached Ray's handler, which exits with the signal's number.
        stop.signum = stop.signum or signal.SIGTERM
        raise KeyboardInterrupt("SIGTERM") from None


def _local_round(job: Job, study: optuna.Study, n: int, shown: Progress) -> None:
    from nas.engine import local

    local.run_round(job, study, n, shown)


def _loop(job: Job, study: optuna.Study, shown: Progress, round_of: RoundFn) -> None:
    shown.start(f"{job.name}: {job.finish_line(study)}; running {job.remaining(study)} more, "
                f"{job.resources.max_concurrent} at a time")
    stalled = 0
    while (left := job.remaining(study)) > 0:
        before = job.progress(study)[0]
        round_of(left)
        stalled = stalled + 1 if job.progress(study)[0] == before else 0
        if stalled >= MAX_STALLED_ROUNDS:
            raise RuntimeError("two rounds in a row ended without finishing a trial; is the Ray cluster short of "
                               "the resources a trial asks for? (see the Ray logs)")
    running = count_state(study, TrialState.RUNNING)
    if running:
        shown.note(f"the last {running} trial(s) are running in other workers; they finish there")


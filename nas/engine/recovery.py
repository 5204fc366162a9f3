"""Who runs a trial, and what happens to trials whose worker is gone.

A worker killed with SIGKILL leaves its trials RUNNING. ``recover_stale_trials`` marks those
whose worker is gone as FAIL (``stale=True``) and enqueues their parameters again, so the study
still reaches its target; stale trials do not count towards it (``record.count_done``).
A trial whose Ray worker was lost while the driver lives on (its node died, its process was
killed) is requeued the same way by ``requeue_lost``, a limited number of times.
"""
from __future__ import annotations

import os
import platform
import socket
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.engine import compat
from nas.engine.heartbeat import stale_ids
from nas.engine.record import ATTR_ERROR, ATTR_REASON, ATTR_RETRY_OF, ATTR_STALE, ATTR_WORKER

ATTR_LOST = "lost_workers"  # how many times this design's earlier trials lost their worker
MAX_LOST = 2  # then the design fails: one that kills its worker every time (memory) must not loop


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: enough to tell later, on this host, whether that process still lives."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
            "platform": platform.system()}


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_alive(worker: dict[str, Any] | None) -> bool | None:
    """True/False for a worker on this host; None when it ran elsewhere (cannot tell)."""
    if not worker or worker.get("host") != socket.gethostname():
        return None
    pid = int(worker["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = worker.get("started")
    return started is None or _process_start(pid) == started


def recover_stale_trials(study: optuna.Study, *, all_running: bool) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and queue their parameters again.

    ``all_running``: the caller knows no other worker can be running (it holds the SQLite
    lock), so every RUNNING trial is stale. Otherwise only trials whose worker ran on this host
    and is dead are, and on a storage with a heartbeat (a database) those of a remote worker
    whose heartbeat stopped; trials of live workers are left alone. Returns the trial numbers.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    silent = stale_ids(study) if running and not all_running else set()
    alive = {t.number: worker_alive(t.user_attrs.get(ATTR_WORKER)) for t in running}
    stale = [t for t in running if all_running or alive[t.number] is False
             or (alive[t.number] is None and compat.trial_id_of(t) in silent)]
    return fail_and_requeue(study, stale, "interrupted: its worker stopped before the trial finished")


def release_own_trials(study: optuna.Study) -> list[int]:
    """This process's RUNNING trials (after Ctrl-C or a Ray error): fail them and requeue."""
    me = worker_identity()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    mine = [t for t in running if t.user_attrs.get(ATTR_WORKER) == me]
    return fail_and_requeue(study, mine, "interrupted before it finished")


def fail_and_requeue(study: optuna.Study, trials: list[FrozenTrial], reason: str,
                     carry: dict[str, Any] | None = None) -> list[int]:
    """Mark ``trials`` FAIL as stale (they do not count towards the target) and enqueue their
    parameters, so the sampler's choice is evaluated after all; ``carry``: more attributes for
    the queued trial. Returns the trial numbers."""
    numbers = []
    for trial in trials:
        if not compat.fail_trial(study, trial, {ATTR_STALE: True, ATTR_REASON: reason}):
            continue  # finished meanwhile (another process told it): nothing to recover
        numbers.append(trial.number)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={ATTR_RETRY_OF: trial.number, **(carry or {})})
    return numbers


def requeue_lost(study: optuna.Study, trial: FrozenTrial, what: str) -> bool:
    """A trial whose worker was lost (``what``: how): requeued as an interrupted one, or, if
    its design lost its worker ``MAX_LOST`` times already, FAIL with the reason (counted, so
    the study goes on). True when requeued."""
    lost = int(trial.user_attrs.get(ATTR_LOST, 0))
    if lost < MAX_LOST:
        return bool(fail_and_requeue(study, [trial], f"interrupted: its Ray worker was lost ({what})",
                                     carry={ATTR_LOST: lost + 1}))
    compat.fail_trial(study, trial, {ATTR_REASON: f"its Ray worker was lost {lost + 1} times ({what})",
                                     ATTR_ERROR: what})
    return False

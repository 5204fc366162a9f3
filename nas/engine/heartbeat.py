"""Heartbeats of the trials this process runs, on a database several machines share.

A worker on another machine cannot be asked whether it still lives (``recovery.worker_alive``
answers only for this host). On a storage with Optuna's heartbeat (a PostgreSQL or MySQL URL,
``nas.engine.storage``) this process stamps each trial it runs every ``HEARTBEAT_S`` seconds,
from one daemon thread; a RUNNING trial whose stamp is older than the grace period (database
time) belongs to a worker that is gone, and ``recover_stale_trials`` requeues it. SQLite and
journal storages have no heartbeat: there, only a worker on this host is known to be dead.
"""
from __future__ import annotations

import threading
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from nas.engine import compat

_lock = threading.Lock()
_tracked: dict[int, BaseStorage] = {}  # trial id → the storage to stamp it in
_thread: threading.Thread | None = None


def enabled(storage: Any) -> bool:
    return getattr(storage, "get_heartbeat_interval", lambda: None)() is not None


def track(study: optuna.Study, trial: optuna.Trial) -> None:
    """Stamp ``trial`` now and every interval while it is RUNNING (nothing without a heartbeat)."""
    global _thread
    storage = compat.storage_of(study)
    if not enabled(storage):
        return
    trial_id = compat.trial_id_of(trial)
    storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
    with _lock:
        _tracked[trial_id] = storage
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_beat, args=(storage.get_heartbeat_interval(),),  # type: ignore[attr-defined]
                                       name="qkvnas-heartbeat", daemon=True)
            _thread.start()


def _beat(interval: float) -> None:
    """Stamp every tracked trial, forget those no longer RUNNING; a database hiccup is retried
    at the next beat (a missed stamp or two is well inside the grace period)."""
    stop = threading.Event()
    while not stop.wait(interval):
        with _lock:
            tracked = list(_tracked.items())
        for trial_id, storage in tracked:
            try:
                if storage.get_trial(trial_id).state != TrialState.RUNNING:
                    with _lock:
                        _tracked.pop(trial_id, None)
                else:
                    storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - keep beating the others; retried next time
                continue


def stale_ids(study: optuna.Study) -> set[int]:
    """Ids of the RUNNING trials whose heartbeat stopped longer ago than the grace period."""
    return compat.heartbeat_stale_ids(study)

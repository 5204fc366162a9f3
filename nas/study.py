"""The Optuna study: storage, sampler, directions, metric names, constraints, stale trials.

The study in its storage is the single source of truth: every finished trial is told with its
values, its constraint values and the attributes that let a reader understand it without this
code (spec JSON and hash, hardware, learning curve, timings, reason of a failure).

Storage is a SQLite file in the study directory by default; any SQLAlchemy URL works, and
``journal:PATH`` selects Optuna's journal file. SQLite serves one worker at a time: a second
``qkvnas run`` on the same file is refused (``SQLiteLock``).

A worker killed with SIGKILL leaves its trials RUNNING. ``recover_stale_trials`` marks those
whose worker is gone as FAIL (``stale=True``) and enqueues their parameters again, so the study
still reaches its target; stale trials do not count towards it (``count_done``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from nas.config import StudyConfig
from objectives import get_objective

try:  # POSIX advisory locks; elsewhere the single-worker check is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

CONFIG_FILE = "config.json"
DB_FILE = "study.db"
ATTR_CONFIG = "config"
ATTR_WORKER = "worker"
ATTR_STALE = "stale"
ATTR_STATUS = "status"  # complete | infeasible | failed (trial-level); see nas.trial
ATTR_REASON = "reason"
ATTR_RETRY_OF = "retry_of"
ATTR_SPEC_HASH = "spec_hash"
ATTR_SPEC_JSON = "spec_json"
ATTR_DUPLICATE_OF = "duplicate_of"  # a repeated design: its result copied from this trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---- storage ----------------------------------------------------------------------------
def storage_url(config: StudyConfig) -> str:
    """The storage as written in the study file, with the default filled in."""
    if config.storage:
        return config.storage
    return f"sqlite:///{(config.study_dir / DB_FILE).resolve()}"


def open_storage(url: str, *, existing: bool = False) -> BaseStorage:
    """A storage object for a URL: ``journal:PATH``, ``sqlite:///PATH`` or any SQLAlchemy URL.
    ``existing``: only open a storage that is already there (a reader must never create the
    tables while a starting run is creating them)."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.parent.is_dir() or (existing and not path.is_file()):
            raise ValueError(f"storage {url!r}: {path} does not exist; check the path")
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if existing and not path.is_file():
            raise ValueError(f"storage {url!r}: {path} does not exist; check the study name or path")
        path.parent.mkdir(parents=True, exist_ok=True)
        # A generous busy timeout: the status command may read while the run writes.
        storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, skip_table_creation=existing)
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # reconnect, so every pooled connection gets the pragmas
        return storage
    try:
        return RDBStorage(url, skip_table_creation=existing)
    except (ImportError, ModuleNotFoundError) as err:
        raise ValueError(f"storage {url!r} needs a database driver that is not installed ({err}); install it") from None
    except Exception as err:  # sqlalchemy raises many kinds for a bad URL
        raise ValueError(f"storage {url!r} cannot be opened: {err}; give sqlite:///PATH, journal:PATH or a database URL") from None


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Write-ahead log with synchronous=NORMAL: a commit no longer waits for an fsync (one per
    user attribute made telling a trial cost ~0.2 s), readers do not block the writer, and a
    committed trial still survives the process being killed (only a power cut could lose the
    last commits)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


class SQLiteLock:
    """Held by the one worker of a SQLite study, for the whole run. SQLite cannot serve several
    writers reliably, so a second worker is refused with what to use instead."""

    def __init__(self, url: str, study_name: str) -> None:
        self._path = sqlite_path(url)
        self._study_name = study_name
        self._fd: int | None = None

    def __enter__(self) -> "SQLiteLock":
        if self._path is None or fcntl is None:
            return self
        lock = self._path.with_name(self._path.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise ValueError(
                f"study {self._study_name!r} is already being run by {holder} on the SQLite file {self._path}; "
                "SQLite serves one worker at a time: to run several workers, set storage = \"journal:PATH\" "
                "(one machine or a shared file system) or a PostgreSQL URL in the study file"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


# ---- sampler ----------------------------------------------------------------------------
def make_sampler(name: str, seed: int | None, options: dict[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """A multi-objective sampler by name. Constraints reach every sampler through the
    constraint values each trial sets (``Trial.set_constraint``, Optuna 5)."""
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }
    if name not in classes:
        raise ValueError(f"sampler.name={name!r} is not known; use one of {list(classes)}")
    options = dict(options or {})
    if name == "tpe":
        # Concurrent trials: treat running ones as bad results so TPE spreads its proposals.
        options.setdefault("constant_liar", True)
    try:
        with warnings.catch_warnings():  # NSGA-III, GP and constant_liar are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return classes[name](seed=seed, **options)
    except TypeError as err:
        raise ValueError(f"sampler.options for {name!r}: {err}; see the Optuna documentation of {classes[name].__name__}") from None


def worker_seed(seed: int | None, *, single_worker: bool) -> int | None:
    """The sampler seed of this worker. On SQLite (one worker) the study's seed, so a run is
    reproducible; on a storage that several workers share, each worker offsets it by its own
    identity, or they would all propose the same designs in the same order."""
    if seed is None or single_worker:
        return seed
    digest = hashlib.sha256(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# ---- the study --------------------------------------------------------------------------
def directions(config: StudyConfig) -> list[str]:
    return [get_objective(name).direction for name in config.objectives]


def create_or_load_study(config: StudyConfig, storage: BaseStorage | None = None) -> optuna.Study:
    """The study named in ``config``: created on the first run, loaded (and checked) afterwards."""
    url = storage_url(config)
    storage = storage or open_storage(url)
    sampler = make_sampler(config.sampler.name, worker_seed(config.sampler.seed, single_worker=sqlite_path(url) is not None),
                           config.sampler.options)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if config.name in existing:
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler)
        check_compatible(study, config)
    else:
        study = optuna.create_study(study_name=config.name, storage=storage, sampler=sampler, directions=directions(config))
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(config.objectives))
        study.set_user_attr(ATTR_CONFIG, config.to_dict())
    return study


def check_compatible(study: optuna.Study, config: StudyConfig) -> None:
    """Continuing a study with other objectives, space or budget would mix incomparable trials."""
    stored = stored_config(study)
    if stored is None:
        return
    mine = config.to_dict()
    for key in ("objectives", "space", "data", "budget", "constraints", "measure", "probe"):
        if stored.get(key) != mine.get(key):
            raise ValueError(
                f"study {config.name!r} already exists in its storage with a different {key} "
                f"({json.dumps(stored.get(key))}); keep {key} as it was to continue it, or give the study a new name"
            )


def stored_config(study: optuna.Study) -> dict[str, Any] | None:
    return study.user_attrs.get(ATTR_CONFIG)


def study_config(study: optuna.Study) -> StudyConfig:
    stored = stored_config(study)
    if stored is None:
        raise ValueError(f"study {study.study_name!r} was not made by qkvnas (no stored config); open it with optuna")
    return StudyConfig.from_json(json.dumps(stored), source=f"study {study.study_name!r}")


# ---- progress counts --------------------------------------------------------------------
def is_stale(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ATTR_STALE))


def count_done(study: optuna.Study) -> int:
    """Trials that count towards the target: COMPLETE ones, and FAIL ones that failed on their
    own (raised, diverged, out of memory). Trials failed because their worker died do not."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return sum(1 for t in trials if not is_stale(t))


@dataclass(frozen=True, kw_only=True)
class Counts:
    complete: int
    infeasible: int
    failed: int
    stale: int
    running: int
    waiting: int

    @property
    def done(self) -> int:
        return self.complete + self.failed


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    fail = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return Counts(
        complete=len(complete),
        infeasible=sum(1 for t in complete if not is_feasible(t)),
        failed=sum(1 for t in fail if not is_stale(t)),
        stale=sum(1 for t in fail if is_stale(t)),
        running=sum(1 for t in trials if t.state == TrialState.RUNNING),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
    )


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0.0 for v in trial.constraints.values())


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's own front (``study.best_trials``): COMPLETE, feasible, non-dominated."""
    return sorted(study.best_trials, key=lambda t: t.number)


# ---- workers and stale trials -----------------------------------------------------------
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
    and is dead are; trials of live or remote workers are left alone. Returns the trial numbers.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if all_running or worker_alive(t.user_attrs.get(ATTR_WORKER)) is False]
    return fail_and_requeue(study, stale, "interrupted: its worker stopped before the trial finished")


def release_own_trials(study: optuna.Study) -> list[int]:
    """This process's RUNNING trials (after Ctrl-C or a Ray error): fail them and requeue."""
    me = worker_identity()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    mine = [t for t in running if t.user_attrs.get(ATTR_WORKER) == me]
    return fail_and_requeue(study, mine, "interrupted before it finished")


def fail_and_requeue(study: optuna.Study, trials: list[FrozenTrial], reason: str) -> list[int]:
    """Mark ``trials`` FAIL as stale (they do not count towards the target) and enqueue their
    parameters, so the sampler's choice is evaluated after all. Returns the trial numbers."""
    storage = study._storage  # the public API has no "fail this trial" outside tell()
    numbers = []
    for trial in trials:
        storage.set_trial_user_attr(trial._trial_id, ATTR_STALE, True)
        storage.set_trial_user_attr(trial._trial_id, ATTR_REASON, reason)
        try:
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile (another process told it): nothing to recover
        numbers.append(trial.number)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={ATTR_RETRY_OF: trial.number})
    return numbers


# ---- telling a finished trial -----------------------------------------------------------
def tell_record(study: optuna.Study, trial: optuna.Trial, record: dict[str, Any]) -> TrialState:
    """Store a trial's record (``TrialRecord.to_dict()``) as attributes and constraints, then
    tell Optuna. Infeasible designs COMPLETE with their constraint values > 0 (so every sampler
    learns where the infeasible region is, and ``best_trials`` leaves them out); objectives they
    never measured carry the worst value (±inf). Failed trials are FAIL with their reason."""
    for key, value in trial_attrs(record).items():
        trial.set_user_attr(key, value)
    for key, value in record["constraints"].items():
        trial.set_constraint(key, float(value))
    if record[ATTR_STATUS] == "failed":
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    values = [float(record["values"][name]) for name in study.metric_names or record["values"]]
    study.tell(trial, values)
    return TrialState.COMPLETE


def trial_attrs(record: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of a finished trial, JSON-able (±inf written as strings)."""
    return {key: _jsonable(value) for key, value in record.items() if key not in ("values", "constraints")} | {
        "objective_values": _jsonable(record["values"]),
        "constraint_values": _jsonable(record["constraints"]),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---- finding a study by name ------------------------------------------------------------
def resolve_study(name_or_path: str, *, study_name: str | None = None) -> tuple[str, str]:
    """(storage URL, study name) for a study name, a study directory, or a storage URL. Reads
    the saved config as plain JSON: no validation, so a status check stays cheap."""
    if "://" in name_or_path or name_or_path.startswith("journal:"):
        return name_or_path, study_name or _only_study(name_or_path)
    for folder in (Path(name_or_path), Path("studies") / name_or_path):
        saved = folder / CONFIG_FILE
        if saved.is_file():
            raw = json.loads(saved.read_text(encoding="utf-8"))
            # The default SQLite file lives beside config.json, wherever the run was started.
            url = raw.get("storage") or f"sqlite:///{(folder / DB_FILE).resolve()}"
            return url, study_name or raw["name"]
    raise ValueError(
        f"no study {name_or_path!r}: give a study name (looked in studies/{name_or_path}/{CONFIG_FILE}), "
        "a study directory, or a storage URL (sqlite:///PATH, journal:PATH, postgresql://...)"
    )


def _only_study(url: str) -> str:
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url, existing=True), include_best_trial=False)]
    if len(names) != 1:
        raise ValueError(f"storage {url!r} holds {len(names)} studies {names}; name one with --study NAME")
    return names[0]


def load_existing(name_or_path: str, *, study_name: str | None = None) -> optuna.Study:
    url, name = resolve_study(name_or_path, study_name=study_name)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url, existing=True))
    except KeyError:
        raise ValueError(f"storage {url!r} has no study {name!r}") from None


def save_config_file(config: StudyConfig) -> Path:
    """The validated config beside the study, so ``qkvnas resume NAME`` can find its storage."""
    config.study_dir.mkdir(parents=True, exist_ok=True)
    path = config.study_dir / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    # The directory written out absolute, so `qkvnas resume DIR` works from any working directory.
    saved = config.to_dict() | {"directory": str(config.study_dir.resolve())}
    tmp.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path

"""Search studies: the study file's design space sampled by an Optuna sampler, each design a
trial of the engine (``nas.engine``), the record in Optuna storage.

    open.py     where a study lives, create or load it, check a continued study, find by name
    job.py      the study as an engine job: sample → run_trial → tell (repeated designs copied)
    display.py  the front table, design labels, counts line, status JSON, the study's note
    reference.py    the hypervolume reference point, fixed once per study; never-reached stand-ins
    hypervolume.py  the hypervolume history in status and the export

The names of the storage, the record and stale-trial recovery are re-exported from the engine,
where they live, for code that reads a study.
"""
from nas.engine.record import (
    ATTR_CONFIG, ATTR_DUPLICATE_OF, ATTR_ERROR, ATTR_REASON, ATTR_RETRY_OF, ATTR_SPEC_HASH, ATTR_SPEC_JSON, ATTR_STALE,
    ATTR_STATUS, ATTR_WORKER, Counts, count_done, counts, is_feasible, is_stale, pareto_front, tell_record, trial_attrs,
)
from nas.engine.recovery import fail_and_requeue, recover_stale_trials, release_own_trials, worker_alive, worker_identity
from nas.engine.sampler import make_sampler, worker_seed
from nas.engine.storage import SQLiteLock, open_storage, sqlite_path
from nas.study.open import (
    CONFIG_FILE, DB_FILE, check_compatible, config_of, create_or_load_study, directions, load_existing, resolve_study,
    save_config_file, storage_url, stored_config, study_config,
)

__all__ = [
    "ATTR_CONFIG", "ATTR_DUPLICATE_OF", "ATTR_ERROR", "ATTR_REASON", "ATTR_RETRY_OF", "ATTR_SPEC_HASH",
    "ATTR_SPEC_JSON", "ATTR_STALE", "ATTR_STATUS", "ATTR_WORKER", "CONFIG_FILE", "Counts", "DB_FILE", "SQLiteLock",
    "check_compatible", "config_of", "count_done", "counts", "create_or_load_study", "directions",
    "fail_and_requeue", "is_feasible", "is_stale", "load_existing", "make_sampler", "open_storage",
    "pareto_front", "recover_stale_trials", "release_own_trials", "resolve_study", "save_config_file",
    "sqlite_path", "storage_url", "stored_config", "study_config", "tell_record", "trial_attrs",
    "worker_alive", "worker_identity", "worker_seed",
]

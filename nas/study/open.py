"""A search study in Optuna storage: where it lives, creating or loading it, checking that a
continued study is the same study, and finding one by name.

Storage is a SQLite file in the study directory by default; any SQLAlchemy URL works, and
``journal:PATH`` selects Optuna's journal file (``nas.engine.storage``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from nas.common import atomic_write_text
from nas.config import StudyConfig
from nas.config.base import storage_or_sqlite
from nas.engine.compat import set_metric_names
from nas.engine.record import ATTR_CONFIG
from nas.engine.sampler import make_sampler, worker_seed
from nas.engine.storage import mask_url, open_storage, single_writer
from objectives import get_objective
from objectives.base import Direction

CONFIG_FILE = "config.json"
DB_FILE = "study.db"
# What a continued study must keep: changing any of these would mix incomparable trials.
SAME_ON_RESUME = ("objectives", "space", "data", "budget", "constraints", "measure", "probe", "lr_sweep")


def storage_url(config: StudyConfig) -> str:
    """The storage as written in the study file, with the default filled in."""
    return storage_or_sqlite(config.storage, config.study_dir, DB_FILE)


def directions(config: StudyConfig) -> list[Direction]:
    return [get_objective(name).direction for name in config.objectives]


def create_or_load_study(config: StudyConfig, storage: BaseStorage | None = None) -> optuna.Study:
    """The study named in ``config``: created on the first run, loaded (and checked) afterwards."""
    url = storage_url(config)
    storage = storage or open_storage(url)
    seed = worker_seed(config.sampler.seed, single_worker=single_writer(url))
    sampler = make_sampler(config.sampler.name, seed, config.sampler.options)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if config.name in existing:
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler)
        check_compatible(study, config)
        return study
    study = optuna.create_study(study_name=config.name, storage=storage, sampler=sampler, directions=directions(config))
    set_metric_names(study, list(config.objectives))
    study.set_user_attr(ATTR_CONFIG, config_record(config))
    return study


def config_record(config: StudyConfig) -> dict[str, Any]:
    """The config as stored (in the study and config.json): its storage URL without a password."""
    record = config.to_dict()
    if record.get("storage"):
        record["storage"] = mask_url(record["storage"])
    return record


def check_compatible(study: optuna.Study, config: StudyConfig) -> None:
    """Continuing a study with other objectives, space or budget would mix incomparable trials."""
    stored = stored_config(study)
    if stored is None:
        return
    mine = config.to_dict()
    for key in SAME_ON_RESUME:
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


def save_config_file(config: StudyConfig) -> Path:
    """The validated config beside the study, so ``qkvnas resume NAME`` can find its storage."""
    # The directory written out absolute, so `qkvnas resume DIR` works from any working directory.
    saved = config_record(config) | {"directory": str(config.study_dir.resolve())}
    return atomic_write_text(config.study_dir / CONFIG_FILE, json.dumps(saved, indent=2) + "\n")


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
        raise ValueError(f"storage {mask_url(url)!r} holds {len(names)} studies {names}; name one with --study NAME")
    return names[0]


def load_existing(name_or_path: str, *, study_name: str | None = None) -> optuna.Study:
    url, name = resolve_study(name_or_path, study_name=study_name)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url, existing=True))
    except KeyError:
        raise ValueError(f"storage {mask_url(url)!r} has no study {name!r}") from None


def config_of(name: str) -> StudyConfig:
    """A study's config by name or folder: its ``config.json``, else the copy in its storage.
    A study folder that was moved keeps working: its config names the folder it is in now."""
    for folder in (Path(name), Path("studies") / name):
        saved = folder / CONFIG_FILE
        if saved.is_file():
            raw = json.loads(saved.read_text(encoding="utf-8"))
            if not raw.get("storage"):
                raw["directory"] = str(folder.resolve())
            return StudyConfig.from_json(json.dumps(raw), source=str(saved))
    return study_config(load_existing(name))

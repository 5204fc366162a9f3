"""A ladder's Optuna record: one study, one trial per grid point (enqueued with fixed
parameters), checked on resume so that runs that cannot be compared are never mixed."""
from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from nas.engine.compat import fixed_params, set_metric_names
from nas.engine.queue import queue_missing, waiting_keys
from nas.engine.storage import open_storage
from nas.ladder.config import TPP_RANGE, LadderConfig
from nas.ladder.grid import Point

ATTR_LADDER = "ladder_config"
ATTR_POINT = "point"
OBJECTIVE = "val_loss"
# Optuna parameters of a point: numeric with fixed wide ranges, so that a ladder can grow
# (more sizes, budgets, seeds, designs) without changing a stored distribution.
DESIGN_ID_MAX = 16**12 - 1  # the design's spec hash (12 hex digits) as an integer
PARAM_RANGES = {"design_id": (0, DESIGN_ID_MAX), "d_model": (1, 1 << 20), "repeats": (1, 4096),
                "seed": (0, 2**31 - 1)}
LR_RANGE = (1e-8, 10.0)  # a sweep's learning rates: fixed, so a sweep can grow


def open_ladder(config: LadderConfig, storage: BaseStorage | None = None) -> optuna.Study:
    """The ladder's Optuna study: created on the first run, loaded and checked afterwards."""
    storage = storage or open_storage(config.storage_url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if config.name in names:
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=optuna.samplers.RandomSampler())
        _check_compatible(study, config)
        study.set_user_attr(ATTR_LADDER, json.loads(config.to_json()))  # the grid may have grown
        return study
    study = optuna.create_study(study_name=config.name, storage=storage, direction="minimize",
                                sampler=optuna.samplers.RandomSampler())
    set_metric_names(study, [OBJECTIVE])
    study.set_user_attr(ATTR_LADDER, json.loads(config.to_json()))
    return study


def _check_compatible(study: optuna.Study, config: LadderConfig) -> None:
    """A ladder may grow (sizes, budgets, seeds, designs); changing how each run trains would
    mix runs that cannot be compared."""
    stored = study.user_attrs.get(ATTR_LADDER)
    if stored is None:
        raise ValueError(f"storage already holds a study {config.name!r} that is not a ladder; give the ladder another name")
    mine = json.loads(config.to_json())
    for key in ("data", "budget", "base", "baseline"):
        if key == "budget":  # the device may change (a GPU machine takes over); the training may not
            same = {**stored.get(key, {}), "device": None} == {**mine[key], "device": None}
        else:
            same = stored.get(key) == mine.get(key)
        if not same:
            raise ValueError(f"ladder {config.name!r} already exists with a different {key} ({json.dumps(stored.get(key))}); "
                             f"keep {key} as it was to continue it, or give the ladder a new name")


def trial_key(trial: FrozenTrial) -> tuple | None:
    """The grid point a trial is for, from its (fixed) parameters; None if it has none."""
    p = trial.params or fixed_params(trial)
    try:
        key = (int(p["design_id"]), int(p["d_model"]), int(p["repeats"]), float(p["tokens_per_param"]), int(p["seed"]))
    except KeyError:
        return None
    return key if "lr" not in p else (*key, float(p["lr"]))


def queue_pending(study: optuna.Study, points: list[Point]) -> list[Point]:
    """Enqueue every point without a settled trial; drop queued trials that are no longer in
    the grid. Returns the points that are queued now (newly or from before)."""
    by_key = {p.key: p for p in points}
    queue_missing(study, {k: p.params_dict for k, p in by_key.items()}, trial_key, what="ladder's grid",
                  user_attrs=lambda k: {ATTR_POINT: by_key[k].label})
    return waiting_points(study, points)


def waiting_points(study: optuna.Study, points: list[Point]) -> list[Point]:
    waiting = waiting_keys(study, trial_key)
    return [p for p in points if p.key in waiting]


def suggest_point(trial: Any, by_key: Mapping[Hashable, Point]) -> Point:
    """Read a trial's point through Optuna's suggest API (an enqueued trial returns its fixed
    values), so the parameters are stored with their distributions."""
    lo, hi = PARAM_RANGES["design_id"]
    key: tuple = (
        trial.suggest_int("design_id", lo, hi),
        trial.suggest_int("d_model", *PARAM_RANGES["d_model"]),
        trial.suggest_int("repeats", *PARAM_RANGES["repeats"]),
        trial.suggest_float("tokens_per_param", *TPP_RANGE, log=True),
        trial.suggest_int("seed", *PARAM_RANGES["seed"]),
    )
    if any(len(k) > len(key) for k in by_key if isinstance(k, tuple)):  # a sweep: the lr is a parameter too
        key = (*key, trial.suggest_float("lr", *LR_RANGE, log=True))
    if key not in by_key:
        raise ValueError(f"trial {trial.number} is for no point of this ladder (params {key}); its queue was changed")
    return by_key[key]


def point_attrs(point: Point) -> dict[str, Any]:
    """What a trial stores about its point, readable without this code."""
    fields = point.to_dict()
    fields.pop("spec_json")
    return {ATTR_POINT: point.label, **fields}


def load_ladder_study(config: LadderConfig) -> optuna.Study:
    try:
        return optuna.load_study(study_name=config.name, storage=open_storage(config.storage_url))
    except KeyError:
        raise ValueError(f"storage {config.storage_url!r} has no ladder {config.name!r}; run `qkvnas ladder` first") from None

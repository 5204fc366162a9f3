"""Running a ladder: every grid point without a result is a trial of the engine (``nas.engine``);
each point trains through the study's trial pipeline (costs → train → record)."""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Hashable
from typing import Any, ClassVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas import engine
from nas.config import StudyConfig
from nas.config.data import as_stored
from nas.engine import attrs
from nas.engine.job import ConfiguredJob, Payload, Record, Report, no_report
from nas.engine.queue import FixedTrialsJob
from nas.engine.record import ATTR_REASON, is_stale
from nas.engine.storage import SQLiteLock
from nas.ladder.config import LadderConfig, save_config_file
from nas.ladder.grid import Point, grid
from nas.ladder.record import ATTR_POINT, open_ladder, point_attrs, suggest_point, trial_key
from nas.ladder.results import result_rows, write_results
from nas.train import TrainBudget
from search_spaces.spec import ArchSpec

STEP_OBJECTIVES = ("val_loss", "kv_cache_bytes_per_token")  # what each point's trial records


# ---- one run (in a worker) --------------------------------------------------------------
def point_study_config(config: LadderConfig, point: Point) -> StudyConfig:
    """The study engine's trial config for one point: its token budget and seed."""
    return StudyConfig.model_validate({
        "name": config.name, "directory": str(config.ladder_dir), "data": as_stored(config.data), "trials": 1,
        "budget": dataclasses.asdict(point_budget(config, point)), "objectives": STEP_OBJECTIVES,
    })


def point_budget(config: LadderConfig, point: Point) -> TrainBudget:
    budget = config.budget.train_budget(tokens=point.tokens, seed=point.seed)
    return budget if point.lr is None else dataclasses.replace(budget, lr=point.lr)


def run_point(point: Point, config: LadderConfig, report: Report = no_report) -> dict[str, Any]:
    """Train one point through the study engine's trial (costs → train → record); never raises
    for the run's own failure (a divergence or an error is a failed record with its reason)."""
    from nas.trial import run_trial

    study_config = point_study_config(config, point)
    record = run_trial(ArchSpec.from_json(point.spec_json), study_config, seed=point.seed, report=report)
    return record.to_dict()


# ---- the ladder as a job of the engine ------------------------------------------------------
@dataclass(frozen=True)
class LadderJob(ConfiguredJob, FixedTrialsJob):
    """A fixed grid: every point without a settled trial is enqueued before the run, and the
    engine's rounds pop the queue (a kill loses no finished point)."""

    config: LadderConfig
    points: tuple[Point, ...]

    what: ClassVar[str] = "ladder's grid"

    @functools.cached_property
    def by_key(self) -> dict[Hashable, Point]:
        return {p.key: p for p in self.points}

    @functools.cached_property
    def _wanted(self) -> dict[Hashable, dict[str, Any]]:
        return {key: p.params_dict for key, p in self.by_key.items()}

    def wanted(self) -> dict[Hashable, dict[str, Any]]:
        return self._wanted

    def key_of(self, trial: FrozenTrial) -> Hashable | None:
        return trial_key(trial)

    def queue_attrs(self, key: Hashable) -> dict[str, Any]:
        return {ATTR_POINT: self.by_key[key].label}

    def open_study(self, storage: BaseStorage) -> optuna.Study:
        return open_ladder(self.config, storage)

    def suggest(self, trial: optuna.Trial) -> Payload:
        point = suggest_point(trial, self.by_key)
        for key, value in point_attrs(point).items():
            trial.set_user_attr(key, value)
        return {"point_json": json.dumps(point.to_dict())}

    def execute(self, payload: Payload, report: Report) -> Record:
        return run_point(Point(**json.loads(payload["point_json"])), self.config, report)

    def outcome(self, study: optuna.Study, trial: FrozenTrial) -> str:
        if trial.state == TrialState.COMPLETE:
            result = f"val_loss {trial.values[0]:.4f}"
        else:
            result = f"FAILED ({trial.user_attrs.get(ATTR_REASON, 'no reason recorded')})"
        seconds = (attrs.read(trial).get("timings") or {}).get("total_s")
        took = f" in {seconds:.1f}s" if seconds else ""
        return f"{trial.user_attrs.get(ATTR_POINT, trial.number)}: {result}{took}"

    def finish_line(self, study: optuna.Study) -> str:
        done, target = self.progress(study)
        failed = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if not is_stale(t))
        return f"{done}/{target} points done, {failed} failed runs (results: {self.config.ladder_dir})"


# ---- running the ladder -----------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LadderRun:
    """What one ``run_ladder`` call did."""

    points: int
    ran: int
    already_done: int
    failed: int
    wall_s: float
    results: Path


def run_ladder(config: LadderConfig, *, ray_address: str | None = None, progress: bool = True) -> LadderRun:
    """Run every point that has no result yet; a second call after a kill continues."""
    t0 = time.perf_counter()
    save_config_file(config)
    job = LadderJob(config, tuple(grid(config)))
    with SQLiteLock(config.storage_url, config.name):  # held through the results table
        done = engine.run(job, address=ray_address, progress=progress, locked=True)
        results = write_results(done.study, config)
    failed = sum(1 for row in result_rows(done.study) if row["state"] != "complete")
    return LadderRun(points=len(job.points), ran=done.finished, already_done=done.done_before, failed=failed,
                     wall_s=time.perf_counter() - t0, results=results)

"""Tabulating a finite space: every design × seed trained for the full budget through the
engine (a job like a study's; resumable after a kill), then ``table.parquet`` beside the storage.

    TableConfig ──► TableJob (nas/engine: Ray Tune or this process) ──► Optuna storage
        ──► write_table: one row per design × seed (nas/bench/schema.py) ──► replay
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas import engine
from nas.bench.config import CONFIG_FILE, TableConfig
from nas.bench.schema import COST_OBJECTIVES, META_KEY, SCHEMA_VERSION, TABLE_FILE
from nas.common import atomic_write, atomic_write_json
from nas.engine import attrs
from nas.engine.compat import fixed_params, set_metric_names
from nas.engine.job import ConfiguredJob, Payload, Record, Report
from nas.engine.lifecycle import EngineRun, Executor
from nas.engine.queue import FixedTrialsJob, results_by_key
from nas.engine.record import ATTR_CONFIG, ATTR_REASON, ATTR_STATUS
from nas.engine.storage import SQLiteLock
from objectives import get_objective

PARAM_MAX = 2**31 - 1


@dataclass(frozen=True)
class TableJob(ConfiguredJob, FixedTrialsJob):
    """One trial per (design, seed), enqueued with fixed parameters ``design`` and ``seed``."""

    config: TableConfig
    what: ClassVar[str] = "table"

    @functools.cached_property
    def designs(self) -> list[tuple[dict[str, Any], Any]]:
        return self.config.designs()

    @functools.cached_property
    def _wanted(self) -> dict[Hashable, dict[str, Any]]:
        return {(d, s): {"design": d, "seed": s} for d in range(len(self.designs)) for s in self.config.seeds}

    def wanted(self) -> dict[Hashable, dict[str, Any]]:
        return self._wanted

    def key_of(self, trial: FrozenTrial) -> tuple[int, int] | None:
        p = trial.params or fixed_params(trial)
        return (int(p["design"]), int(p["seed"])) if "design" in p and "seed" in p else None

    def open_study(self, storage: BaseStorage) -> optuna.Study:
        directions = [get_objective(n).direction for n in self.config.study_objectives]
        study = optuna.create_study(study_name=self.name, storage=storage, directions=directions,
                                    sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
        stored = study.user_attrs.get(ATTR_CONFIG)
        mine = self.config.model_dump(mode="json")
        for key in ("space", "data", "budget", "objectives", "measure"):
            if stored is not None and stored.get(key) != mine.get(key):
                raise ValueError(f"table {self.name!r} already exists with a different {key} ({json.dumps(stored.get(key))}); "
                                 f"keep {key} as it was to continue it (seeds may grow), or give the table a new name")
        set_metric_names(study, list(self.config.study_objectives))
        study.set_user_attr(ATTR_CONFIG, mine)
        return study

    def suggest(self, trial: optuna.Trial) -> Payload:
        design = trial.suggest_int("design", 0, PARAM_MAX)
        seed = trial.suggest_int("seed", 0, PARAM_MAX)
        if design >= len(self.designs):
            raise ValueError(f"trial {trial.number} is for design {design}; the space has {len(self.designs)}")
        params, spec = self.designs[design]
        trial.set_user_attr("params_json", json.dumps(params, sort_keys=True))
        return {"design": design, "seed": seed, "spec_json": spec.to_json()}

    def execute(self, payload: Payload, report: Report) -> Record:
        from nas.trial import run_trial
        from search_spaces.spec import ArchSpec

        seed = int(payload["seed"])
        record = run_trial(ArchSpec.from_json(payload["spec_json"]), self.config.trial_config(seed), seed=seed,
                           report=report)
        return record.to_dict()

    def outcome(self, study: optuna.Study, trial: FrozenTrial) -> str:
        key = self.key_of(trial)
        what = f"design {key[0]} seed {key[1]}" if isinstance(key, tuple) else f"trial {trial.number}"
        if trial.state == TrialState.FAIL:
            return f"{what}: failed ({trial.user_attrs.get(ATTR_REASON, 'no reason recorded')})"
        values = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.config.study_objectives, trial.values or []))
        return f"{what}: {trial.user_attrs.get(ATTR_STATUS)} {values}"

    def finish_line(self, study: optuna.Study) -> str:
        done, target = self.progress(study)
        return f"{done}/{target} runs done ({len(self.designs)} designs × {len(self.config.seeds)} seeds)"


# ---- the table ------------------------------------------------------------------------------
def table_rows(study: optuna.Study, job: TableJob) -> list[dict[str, Any]]:
    """One row per (design, seed) that has a result, in design then seed order."""
    chosen = results_by_key(study, job.key_of)
    return [_row(job, key, chosen[key]) for key in sorted(chosen)]


def _row(job: TableJob, key: tuple[int, int], trial: FrozenTrial) -> dict[str, Any]:
    a = attrs.read(trial)  # user attributes and the bulk (nas/engine/attrs.py)
    params, spec = job.designs[key[0]]
    points = (a.get("curve") or {}).get("points") or []
    values = {k: _float(v) for k, v in (a.get("objective_values") or {}).items()}
    costs = a.get("costs") or {}
    row: dict[str, Any] = {
        "design": key[0], "spec_hash": spec.hash, "spec_json": spec.to_json(), "params_json": json.dumps(params, sort_keys=True),
        "seed": key[1], "status": a.get(ATTR_STATUS, "failed"), "reason": a.get(ATTR_REASON),
        "tokens": int((a.get("train") or {}).get("tokens", job.config.budget.tokens)),
        "curve_tokens": [int(p["tokens"]) for p in points],
        "curve_val_loss": [_float(p.get("val_loss")) for p in points],
        "train_wall_s": _float((a.get("train") or {}).get("wall_s")), "total_s": _float((a.get("timings") or {}).get("total_s")),
    }
    for name in COST_OBJECTIVES:
        row[name] = _float(costs.get(name))
    for name in job.config.objectives:
        row[name] = values.get(name, row.get(name, math.nan))
    return row


def _float(value: Any) -> float:
    """JSON-stored numbers: None and the strings 'inf'/'nan' become floats."""
    return math.nan if value is None else float(value)


def table_meta(job: TableJob, rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(dict.fromkeys([*job.config.objectives, *COST_OBJECTIVES]))
    complete = [r for r in rows if r["status"] == "complete" and r["curve_tokens"]]
    return {
        "schema_version": SCHEMA_VERSION, "name": job.name, "space": job.config.space.model_dump(mode="json"),
        "objectives": names, "directions": {n: get_objective(n).direction for n in names},
        "units": {n: get_objective(n).unit for n in names}, "seeds": list(job.config.seeds),
        "budget_tokens": job.config.budget.tokens, "designs": len(job.designs),
        "eval_tokens": complete[0]["curve_tokens"] if complete else [],
    }


def write_table(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    fields = [("design", i64), ("spec_hash", s), ("spec_json", s), ("params_json", s), ("seed", i64), ("status", s),
              ("reason", s), ("tokens", i64), ("curve_tokens", pa.list_(i64)), ("curve_val_loss", pa.list_(f64)),
              ("train_wall_s", f64), ("total_s", f64)] + [(n, f64) for n in meta["objectives"]]
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta).encode()})
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


# ---- running ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TableRun:
    table: Path
    runs: int
    complete: int
    failed: int
    engine: EngineRun


def run_table(config: TableConfig, *, executor: Executor = "ray", address: str | None = None,
              progress: bool = True) -> TableRun:
    """Train every design × seed that has no result yet, then write ``table.parquet``."""
    job = TableJob(config)
    atomic_write_json(config.table_dir / CONFIG_FILE, config.model_dump(mode="json"))
    with SQLiteLock(config.storage_url, config.name):  # held through the table
        done = engine.run(job, executor=executor, address=address, progress=progress, locked=True)
        rows = table_rows(done.study, job)
        path = write_table(rows, table_meta(job, rows), config.table_dir / TABLE_FILE)
    failed = sum(r["status"] == "failed" for r in rows)
    return TableRun(table=path, runs=len(rows), complete=sum(r["status"] == "complete" for r in rows), failed=failed,
                    engine=done)

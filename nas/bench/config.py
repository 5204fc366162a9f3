"""A table file: a finite search space whose every design is trained at every seed listed.

It reads like a study file (``kind = "table"``; space, data, budget, measure, resources,
storage as there) with ``seeds`` in place of a sampler and a number of trials; ``objectives``
are the figures each run records beside its learning curve and its exact costs (which every
table has). Validated before anything runs: the space must be finite (its designs are listed
here), every run must have at least ``MIN_EVAL_POINTS`` validation points, at the same token
counts for every design.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nas.config.base import Section, run_folder, storage_or_sqlite, validate
from nas.config.data import DataField, as_stored
from nas.config.loader import load_raw
from nas.config.study import RayConfig, ResourcesConfig, SpaceConfig, StudyConfig
from nas.measure import MeasureSettings
from nas.train import TrainBudget
from objectives import get_objective

DB_FILE = "table.db"
CONFIG_FILE = "table.json"
MIN_EVAL_POINTS = 8


class TableConfig(Section):
    file_noun: ClassVar[str] = "table"

    kind: Literal["table"] = "table"
    name: str
    directory: str | None = None  # None → studies/<name>
    space: SpaceConfig
    data: DataField = None  # None → the shipped corpus; a path or a [data] table (nas/config/data.py)
    budget: TrainBudget
    objectives: tuple[str, ...]
    seeds: tuple[int, ...]
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage: str | None = None  # None → SQLite in the table's folder; a URL; or journal:PATH
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError(f"{list(seeds)}: give one or more different seeds >= 0, e.g. [0, 1]")
        return seeds

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            get_objective(name)
        ran = [n for n in names if not get_objective(n).analytic]
        if len(ran) > 4:
            raise ValueError(f"{ran}: a table records at most 4 objectives that need a run (costs are free and "
                             "always recorded); drop some")
        if "val_loss" not in names:
            raise ValueError(f"{list(names)} lacks \"val_loss\": a table records every run's learning curve, "
                             "so it trains; add \"val_loss\"")
        return names

    @model_validator(mode="after")
    def _check(self) -> TableConfig:
        self.trial_config(self.seeds[0])  # a study's checks of the same settings, one message each
        designs = self.designs()
        steps = self.budget.tokens // (self.budget.batch_size * (self.budget.seq_len or designs[0][1].context))
        points = steps if self.budget.eval_every == 0 else steps // self.budget.eval_every
        if min(steps, points) < MIN_EVAL_POINTS:
            raise ValueError(f"budget: {steps} steps with eval_every={self.budget.eval_every} give {points} validation "
                             f"points; a table needs at least {MIN_EVAL_POINTS} per run (for early stopping later): "
                             "raise budget.tokens or lower eval_every")
        return self

    # ---- derived -----------------------------------------------------------------
    def designs(self) -> list[tuple[dict[str, Any], Any]]:
        """(sampler parameters, ArchSpec) of every distinct design of the space."""
        from search_spaces import enumerate_designs, get_space

        try:
            return enumerate_designs(get_space(self.space.name, **self.space.options))
        except (ValueError, TypeError) as err:
            raise ValueError(f"space: {err}") from None

    def trial_config(self, seed: int) -> StudyConfig:
        """The study engine's trial config of one run: this table's settings at one seed."""
        return validate(StudyConfig, {
            "name": self.name, "directory": str(self.table_dir), "space": self.space.model_dump(mode="json"),
            "data": as_stored(self.data), "budget": {**self.budget_dict(), "seed": seed},
            "objectives": list(self.study_objectives),
            "measure": self.model_dump(mode="json")["measure"], "trials": 1,
        }, f"table {self.name!r}")

    @property
    def study_objectives(self) -> tuple[str, ...]:
        """The objectives a run is told with: the recorded ones that need a run (the record
        has every cost anyway), padded with costs to the two a study needs."""
        ran = [n for n in self.objectives if not get_objective(n).analytic]
        pad = [n for n in ("kv_cache_bytes_per_token", "params") if n not in ran]
        return tuple(ran + pad[: max(0, 2 - len(ran))])

    def budget_dict(self) -> dict[str, Any]:
        return dict(self.model_dump(mode="json")["budget"])

    @property
    def table_dir(self) -> Path:
        return run_folder(self.directory, self.name)

    @property
    def storage_url(self) -> str:
        return storage_or_sqlite(self.storage, self.table_dir, DB_FILE)


def load_table_config(path_or_preset: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TableConfig:
    """Read a table file or a table preset, apply ``key.path=value`` overrides, validate."""
    raw, path = load_raw(path_or_preset, "table", overrides)
    return validate(TableConfig, raw, str(path))

"""A probe suite file: designs × tasks over a grid of model sizes, validated before anything runs.

A suite file (TOML; two ship in ``nas/presets/`` with ``kind = "probe_suite"``) names the
designs (``search_spaces.variants`` names such as ``qk_v+2d`` or ``mixer``), the tasks, a grid
of widths, depths, heads and lengths, a number of seeds and a probe budget; optionally ``[lm]``
adds the validation loss of each design trained as a language model on a corpus. Every design
is built at every size, and every task at every length, when the file is read.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PositiveInt, field_validator, model_validator

from nas.config.base import Section, validate
from nas.config.loader import load_raw, presets
from nas.config.shape import ModelShape, ModelStyle
from nas.probing.probe import ProbeBudget
from nas.sweep import LRSweep
from nas.train import TrainBudget
from objectives.probes import PROBES, get_probe
from search_spaces.spec import ArchSpec
from search_spaces.variants import variant

GRID_AXES = ("d_model", "n_layers", "n_heads", "length")
LM_SET_BY_SUITE = ("seed", "device")  # an LM run's seed is the suite's, its device --device
Axis = tuple[PositiveInt, ...]


@dataclass(frozen=True, kw_only=True)
class TaskEntry:
    """One table column: a probe with its size parameters and, optionally, its own budget."""

    label: str
    task: str
    params: dict[str, Any]
    budget: ProbeBudget


class SuiteGrid(Section):
    """The sizes: mode product (every combination) or star (the first values as a centre, one
    axis varied at a time). ``length`` is the probes' sequence length; none: each task's own."""

    mode: Literal["product", "star"] = "product"
    d_model: Axis
    n_layers: Axis
    n_heads: Axis
    length: Axis | None = None

    @field_validator("d_model", "n_layers", "n_heads", "length")
    @classmethod
    def _distinct(cls, values: Axis | None) -> Axis | None:
        if values is not None and not values:
            raise ValueError("empty; give a list of positive integers, e.g. [2]")
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"{list(values)} repeats a value; list each once")
        return values

    def axes(self) -> dict[str, Axis]:
        """The axes given, in GRID_AXES order."""
        return {axis: values for axis in GRID_AXES if (values := getattr(self, axis)) is not None}


class SuiteModel(ModelStyle):
    """Shared by every design; width, depth and heads come from the grid."""

    ffn_mult: float = Field(default=4.0, gt=0)  # the FFN width as a multiple of d_model


class TaskTable(Section):
    """``[tasks.<label>]``: ``task`` (default: the label), a ``budget`` changing the suite's, and
    the probe's size parameters (any other key)."""

    model_config = ConfigDict(extra="allow")

    task: str | None = None
    budget: dict[str, Any] = Field(default_factory=dict)

    @field_validator("budget")
    @classmethod
    def _budget_keys(cls, budget: dict[str, Any]) -> dict[str, Any]:
        known = sorted(f.name for f in dataclasses.fields(ProbeBudget))
        unknown = sorted(set(budget) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; known keys are {known}")
        return budget

    def entry(self, label: str, budget: ProbeBudget) -> TaskEntry:
        return TaskEntry(label=label, task=self.task or label, params=dict(self.model_extra or {}),
                         budget=dataclasses.replace(budget, **self.budget))


class SuiteLM(Section):
    """``[lm]``: ``context``, ``corpus`` (None → the shipped Shakespeare corpus) and the fields of
    ``nas.train.TrainBudget`` (any other key) but its seed and device, which the suite sets."""

    model_config = ConfigDict(extra="allow")

    context: int = Field(default=64, ge=2)
    corpus: str | None = None
    tokens: int  # how many tokens to train each design on, e.g. tokens = 200_000

    @model_validator(mode="after")
    def _check_budget(self) -> SuiteLM:
        if set(self.budget) & set(LM_SET_BY_SUITE):
            raise ValueError("seed and device are set by the suite (its seeds, --device); remove them")
        known = sorted({f.name for f in dataclasses.fields(TrainBudget)} - set(LM_SET_BY_SUITE))
        unknown = sorted(set(self.budget) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; known keys are {known}")
        TrainBudget(**self.budget)  # its own checks, one message each
        return self

    @property
    def budget(self) -> dict[str, Any]:
        """The TrainBudget fields the file sets (the seed and device come per run)."""
        return {"tokens": self.tokens, **(self.model_extra or {})}


class Published(Section):
    """``[published]``: a paper's figures printed beside ours, labelled as theirs."""

    label: str  # e.g. "Kayyam et al. 2026, Table 2 (mean accuracy over their grid)"
    values: dict[str, float]  # by variant name


class SuiteConfig(Section):
    file_noun: ClassVar[str] = "probe suite"

    kind: Literal["probe_suite"]  # this file is read by `qkvnas probe-suite`
    name: str = "probe_suite"
    description: str = ""
    variants: tuple[str, ...]
    grid: SuiteGrid
    model: SuiteModel = Field(default_factory=SuiteModel)
    seeds: int = Field(default=1, ge=1)
    budget: ProbeBudget = Field(default_factory=ProbeBudget)
    task_tables: dict[str, TaskTable] = Field(alias="tasks")  # by label, in the file's order
    lm: SuiteLM | None = None
    # Seeds per probe length where they differ from `seeds` (TOML keys are strings: "64" = 3).
    seeds_by_length: dict[str, PositiveInt] = Field(default_factory=dict)
    # Grid cells left out here, each a partial point such as {length = 128}; the report lists
    # them as not run, with `not_run_command`, which runs them where they fit (a GPU).
    not_run: tuple[dict[str, PositiveInt], ...] = ()
    not_run_command: str = ""
    success_threshold: float = Field(default=0.95, gt=0, le=1)  # a run "solves" a task above this
    published: Published | None = None
    lr_sweep: LRSweep | None = None

    @field_validator("variants")
    @classmethod
    def _some_variants(cls, variants: tuple[str, ...]) -> tuple[str, ...]:
        if not variants:
            raise ValueError("empty; list designs such as [\"qkv\", \"qk_v\", \"mixer\"]")
        return variants

    @field_validator("task_tables")
    @classmethod
    def _some_tasks(cls, tables: dict[str, TaskTable]) -> dict[str, TaskTable]:
        if not tables:
            raise ValueError(f"empty; add tables such as [tasks.reverse]; tasks are {sorted(PROBES)}")
        return tables

    @model_validator(mode="after")
    def _check_cells(self) -> SuiteConfig:
        lengths = {str(v) for v in self.grid.length or ()}
        unknown = sorted(set(self.seeds_by_length) - lengths)
        if unknown:
            raise ValueError(f"seeds_by_length names length(s) {unknown} that grid.length {sorted(lengths)} does not have")
        for cell in self.not_run:
            bad = sorted(set(cell) - set(self.grid.axes()))
            if bad or not cell:
                raise ValueError(f"not_run entry {cell}: give grid axes {list(self.grid.axes())}, e.g. {{length = 128}}")
        if self.not_run and not self.run_points():
            raise ValueError("not_run leaves no grid point to run; remove an entry")
        if self.lr_sweep is not None:
            for entry in self.tasks:
                self.lr_sweep.check_shared(entry.budget.lr, f"tasks.{entry.label}.budget")
        return self

    @model_validator(mode="after")
    def _check_runs(self) -> SuiteConfig:
        for label, table in self.task_tables.items():
            self._check_task(label, table)
        for size in self.model_points():  # every design must exist at every size before anything runs
            for name in self.variants:
                variant(name, base=self.base_spec(size))
        return self

    def _check_task(self, label: str, table: TaskTable) -> None:
        where = f"tasks.{label}"
        try:
            entry = table.entry(label, self.budget)
        except ValueError as err:
            raise ValueError(f"{where}.budget: {err}") from None
        if self.grid.length is not None and "length" in entry.params:
            raise ValueError(f"{where}.length conflicts with grid.length; set the length in one place")
        for length in self.grid.length or (None,):  # every length of the grid must make a valid probe
            try:
                get_probe(entry.task, **entry.params, **({} if length is None else {"length": length}))
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None

    # ---- derived -----------------------------------------------------------------
    @property
    def tasks(self) -> tuple[TaskEntry, ...]:
        """The table's columns, each with its budget (the suite's, changed by the task's own)."""
        return tuple(table.entry(label, self.budget) for label, table in self.task_tables.items())

    def grid_points(self) -> list[dict[str, int]]:
        """Mode product: every combination. Mode star: the first value of every axis (the
        centre), then one axis at a time moved to each of its other values."""
        axes = self.grid.axes()
        if self.grid.mode == "product":
            return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
        centre = {a: values[0] for a, values in axes.items()}
        return [centre] + [{**centre, a: v} for a, values in axes.items() for v in values[1:]]

    def is_not_run(self, point: dict[str, int]) -> bool:
        return any(all(point.get(k) == v for k, v in cell.items()) for cell in self.not_run)

    def run_points(self) -> list[dict[str, int]]:
        """The grid points this suite runs (those no ``not_run`` entry matches)."""
        return [p for p in self.grid_points() if not self.is_not_run(p)]

    def seeds_at(self, point: dict[str, int]) -> int:
        return self.seeds_by_length.get(str(point.get("length")), self.seeds)

    def lrs(self) -> tuple[float | None, ...]:
        """The sweep's learning rates, or (None,): each run at its budget's own."""
        return self.lr_sweep.values if self.lr_sweep is not None else (None,)

    def model_points(self) -> list[dict[str, int]]:
        """The distinct model sizes of the grid (length is a property of the task)."""
        seen: list[dict[str, int]] = []
        for point in self.run_points():
            size = {k: v for k, v in point.items() if k != "length"}
            if size not in seen:
                seen.append(size)
        return seen

    def base_spec(self, size: dict[str, int]) -> ArchSpec:
        """The shared settings at one size; vocabulary and context are set later by the probe
        (``adapt_spec``) or the LM corpus."""
        style = self.model.model_dump(exclude={"ffn_mult"})
        d_model = size["d_model"]
        return ModelShape(**style, d_model=d_model, n_heads=size["n_heads"], n_layers=size["n_layers"],
                          ffn_dim=int(self.model.ffn_mult * d_model)).spec()


# ---- reading a suite file -------------------------------------------------------------------
def preset_names() -> list[str]:
    return presets("probe_suite")


def load_suite(name_or_path: str | Path) -> SuiteConfig:
    """A shipped preset by name (``paper_synthetic``) or a suite TOML file by path."""
    raw, path = load_raw(name_or_path, "probe_suite")
    return parse_suite(raw, source=str(path))


def parse_suite(data: dict[str, Any], *, source: str = "probe suite") -> SuiteConfig:
    _steps_or_epochs(data, source)
    return validate(SuiteConfig, data, source)


def _steps_or_epochs(raw: dict[str, Any], source: str) -> None:
    """A budget gives steps or epochs: both would leave one of them silently unused."""
    tasks = raw.get("tasks")
    tables: dict[str, Any] = tasks if isinstance(tasks, dict) else {}
    budgets = [("budget", raw.get("budget"))] + [(f"tasks.{label}.budget", table.get("budget"))
                                                 for label, table in tables.items() if isinstance(table, dict)]
    for where, budget in budgets:
        if isinstance(budget, dict) and "steps" in budget and "epochs" in budget:
            raise ValueError(f"{source}: {where}: give steps or epochs, not both "
                             "(with epochs, the steps are epochs × n_train / batch_size)")

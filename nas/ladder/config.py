"""The ladder file: designs, sizes, token budgets and seeds, validated before anything runs
(every design scaled to every size, every budget a whole number of steps)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nas.common import atomic_write_text
from nas.config import ModelShape, RayConfig, ResourcesConfig, Section, apply_override, load_raw, presets, validate
from nas.config.base import run_folder, storage_or_sqlite
from nas.config.data import DataField
from nas.ladder.grid import grid
from nas.sweep import LRSweep
from nas.train import TrainBudget, TrainSettings

CONFIG_FILE = "ladder.json"  # the validated config beside the ladder, found by `qkvnas report NAME`
DB_FILE = "ladder.db"
TPP_RANGE = (1e-4, 1e6)
DEFAULT_PRESET = "ladder_small"

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class SizeStep(Section):
    """One rung: every design at this width, with its layer pattern repeated ``repeats`` times."""

    d_model: int = Field(ge=1)
    repeats: int = Field(default=1, ge=1)

    @property
    def label(self) -> str:
        return f"d{self.d_model}r{self.repeats}"


@dataclass(frozen=True, kw_only=True)
class LadderBudget(TrainSettings):
    """``TrainBudget`` without ``tokens`` and ``seed``: those come from each grid point. The
    fields, defaults and checks are TrainBudget's own, so a ladder trains exactly as a study does."""

    def train_budget(self, *, tokens: int, seed: int) -> TrainBudget:
        return TrainBudget(tokens=tokens, seed=seed, **asdict(self))


class Target(Section):
    """The scale the gap is extrapolated to: the baseline's non-embedding N and tokens D.
    Default: a GPT-2-style model near the paper's 300M (≈ 250M non-embedding) on 10B tokens."""

    params: float = Field(default=2.5e8, gt=0)
    tokens: float = Field(default=1e10, gt=0)


class LadderConfig(Section):
    file_noun: ClassVar[str] = "ladder"

    # Left out of the stored ladder.json, which stays as it was before presets had a kind.
    kind: Literal["ladder"] = Field(default="ladder", exclude=True)
    name: str
    directory: str | None = None  # None → studies/<name>
    data: DataField = None  # None → the shipped corpus; a path or a [data] table (nas/config/data.py)
    baseline: str = "qkv"  # a variant name or a spec file
    designs: tuple[str, ...] = ()  # variant names or spec files
    from_export: str | None = None  # a study's export folder: its specs/*.json join the designs
    max_export_designs: int | None = Field(default=None, ge=1)
    base: ModelShape | None = None  # None → the first spec file's or export spec's shape, else defaults
    sizes: tuple[SizeStep, ...]
    tokens_per_param: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1)
    budget: LadderBudget = Field(default_factory=LadderBudget)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage: str | None = None  # None → SQLite in the ladder folder; any SQLAlchemy URL; journal:PATH
    target: Target = Field(default_factory=Target)
    ray: RayConfig = Field(default_factory=RayConfig)
    # Every design also at these learning rates (budget.lr among them); the report sets each
    # design's gap at its own best learning rate beside the gap at the shared one. Left out of
    # the stored ladder.json while unset, so ladders stored before it resume unchanged.
    lr_sweep: Annotated[LRSweep | None, Field(exclude_if=lambda v: v is None)] = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not name or not set(name) <= _NAME_CHARS or name[0] in ".-_":
            raise ValueError(f"{name!r} is not a usable ladder name; use letters, digits, '_', '-' or '.'")
        return name

    @field_validator("sizes")
    @classmethod
    def _check_sizes(cls, sizes: tuple[SizeStep, ...]) -> tuple[SizeStep, ...]:
        labels = [s.label for s in sizes]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{labels} lists a size twice; list each (d_model, repeats) once")
        if len(sizes) < 2:
            raise ValueError("give at least two sizes (three or more to see a trend), e.g. [{d_model = 32}, {d_model = 64}]")
        return sizes

    @field_validator("tokens_per_param", mode="before")
    @classmethod
    def _ints_are_floats(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        return value

    @field_validator("tokens_per_param")
    @classmethod
    def _check_tpp(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(f"{list(values)}: give two or more different ratios, e.g. [2, 8, 32]")
        if any(not (TPP_RANGE[0] <= v <= TPP_RANGE[1]) for v in values):
            raise ValueError(f"{list(values)}: every ratio must lie in [{TPP_RANGE[0]:g}, {TPP_RANGE[1]:g}]")
        return tuple(sorted(values))

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(f"{list(seeds)}: give two or more different seeds (intervals need them), e.g. [0, 1]")
        if any(s < 0 for s in seeds):
            raise ValueError(f"{list(seeds)}: seeds must be >= 0")
        return seeds

    @model_validator(mode="after")
    def _check_grid(self) -> LadderConfig:
        if not self.designs and not self.from_export:
            raise ValueError("designs: give at least one design to compare with the baseline "
                             "(designs = [\"q_kv\"]) or a study export (from_export = \"DIR\")")
        if self.max_export_designs is not None and not self.from_export:
            raise ValueError("max_export_designs applies to from_export designs; set from_export or remove it")
        if self.lr_sweep is not None:
            self.lr_sweep.check_shared(self.budget.lr, "budget")
        grid(self)  # every design at every size and budget, so a bad ladder never starts
        return self

    # ---- derived -----------------------------------------------------------------
    @property
    def ladder_dir(self) -> Path:
        return run_folder(self.directory, self.name)

    @property
    def storage_url(self) -> str:
        return storage_or_sqlite(self.storage, self.ladder_dir, DB_FILE)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, *, source: str = "stored ladder config") -> LadderConfig:
        return validate(cls, json.loads(text), source)


# ---- loading ----------------------------------------------------------------------------
def ladder_presets() -> list[str]:
    return presets("ladder")


def load_ladder_config(path_or_preset: str | Path | None = None, overrides: Iterable[str] = (), *,
                       from_export: str | None = None) -> LadderConfig:
    """A ladder file or preset name, ``key.path=value`` overrides, and ``from_export``. With an
    export and no file, the export's designs run on the default preset's grid and budget."""
    raw, path = load_raw(path_or_preset or DEFAULT_PRESET, "ladder")
    if from_export is not None:
        if path_or_preset is None:
            raw.update(name=f"ladder-{Path(from_export).resolve().name}", designs=[])
            raw.pop("base", None)  # the baseline takes the shape of the export's designs
        raw["from_export"] = from_export
    for item in overrides:
        apply_override(raw, item)
    return validate(LadderConfig, raw, str(path))


def save_config_file(config: LadderConfig) -> Path:
    path = config.ladder_dir / CONFIG_FILE
    return atomic_write_text(path, json.dumps(json.loads(config.to_json()), indent=2) + "\n")


def find_ladder(name_or_dir: str) -> LadderConfig:
    """The config of a ladder, from its folder or its name (``studies/<name>``)."""
    for folder in (Path(name_or_dir), Path("studies") / name_or_dir):
        saved = folder / CONFIG_FILE
        if saved.is_file():
            return LadderConfig.from_json(saved.read_text(encoding="utf-8"), source=str(saved))
    raise ValueError(f"no ladder {name_or_dir!r}: looked for {CONFIG_FILE} in {name_or_dir}/ and "
                     f"studies/{name_or_dir}/; give the ladder's folder or run `qkvnas ladder` first")

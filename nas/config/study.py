"""A study, described by a TOML file or a shipped preset, validated before anything starts.

``load_config("study.toml", ["trials=40", "budget.tokens=50000"])`` reads the file (or the
preset of that name under ``nas/presets/``), applies the ``--set`` overrides and validates the
result. Any mistake is a ``ValueError`` of one line that names the key path and the fix, e.g.
``study.toml: budget.tokenz: unknown key; known keys are [...]``.

The budget, measurement and probe sections are the plain dataclasses of the modules that use
them (``TrainBudget``, ``MeasureSettings``, ``ProbeBudget``), so their own checks apply and no
default is written twice. Both budgets inherit the fields of ``nas.train.Optimizer``, so a study
file and the stored config keep them flat (``[budget] lr = 3e-3``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from nas.config.base import Section, run_folder, validate
from nas.config.data import DataField
from nas.config.loader import apply_override, load_raw
from nas.config.sweep import LRSweep
from nas.measure import MeasureSettings
from nas.probing.probe import ProbeBudget
from nas.train import TrainBudget
from objectives import get_objective
from objectives.registry import DECODING, MEASURE_PHASE, NVML_ENERGY

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TARGET = re.compile(r"^(local|accelerator:[A-Za-z0-9][A-Za-z0-9_.-]*|resource:[A-Za-z0-9_][A-Za-z0-9_.:-]*)$")


class SpaceConfig(Section):
    name: str = "paper"
    options: dict[str, Any] = Field(default_factory=dict)


class SamplerConfig(Section):
    name: Literal["tpe", "nsga2", "nsga3", "gp", "random"] = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the sampler


class ResourcesConfig(Section):
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)  # fractions share one GPU between trials
    max_concurrent: int = Field(default=1, ge=1)
    # The hardware the figures are for: "local" (wherever Ray places trials), "accelerator:<Ray
    # accelerator type>" (e.g. accelerator:H100) or "resource:<custom Ray resource>". Trials run
    # only on nodes that have it; a cluster without it is an error, never a silent fallback.
    target: str = "local"

    @field_validator("target")
    @classmethod
    def _check_target(cls, target: str) -> str:
        if not _TARGET.match(target):
            raise ValueError(f"target={target!r} is not a target; use \"local\", \"accelerator:<type>\" "
                             "(a Ray accelerator type, e.g. accelerator:H100) or \"resource:<name>\" "
                             "(a custom resource a node was started with)")
        return target


class ProbeConfig(Section):
    budget: ProbeBudget = Field(default_factory=ProbeBudget)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # task -> size parameters


class FidelityConfig(Section):
    """Multi-fidelity search: stop trials whose point at a rung is dominated (nas/engine/rungs.py).
    ``scheduler = "none"`` trains every trial for the full budget, as before."""

    scheduler: Literal["none", "mo_asha"] = "none"
    # Fractions of budget.tokens, ascending, in (0, 1). One rung at half the budget: on
    # table_quick the designs' val loss at 1/8 of the budget ranks them no better than chance
    # (Spearman 0.03 with the final loss), at 1/4 poorly (0.67), at 1/2 well (0.97, above the
    # seed-to-seed 0.94); ASHA's usual 1/9 and 1/3 stopped the eventual front and never reached
    # 95% of its hypervolume in replay, while [0.5] with eta 2 kept random search's and TPE's
    # reliability and saved tokens (README, "Stopping dominated trials early").
    rungs: tuple[float, ...] = (0.5,)
    eta: float = Field(default=2.0, gt=1)  # a rung keeps the top 1/eta of its trials
    tie_break: Literal["crowding", "epsnet"] = "crowding"

    @field_validator("rungs", mode="before")
    @classmethod
    def _ints_are_floats(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        return value

    @field_validator("rungs")
    @classmethod
    def _check_rungs(cls, rungs: tuple[float, ...]) -> tuple[float, ...]:
        if not rungs or list(rungs) != sorted(set(rungs)) or not all(0 < r < 1 for r in rungs):
            raise ValueError(f"{list(rungs)}: give ascending, distinct fractions of the budget strictly between 0 "
                             "and 1, e.g. [0.111, 0.333]")
        return rungs

    def rung_tokens(self, budget_tokens: int) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(r * budget_tokens)) for r in self.rungs}))


class ExportConfig(Section):
    """``[export]``: ``weights = true`` keeps every trained trial's weights in the study folder
    (``weights/<spec hash>-s<seed>/``, nas.weights) and the export copies the front's."""

    weights: bool = False


class RayConfig(Section):
    address: str | None = None  # None: a local Ray starts and stops with the run
    dashboard: bool = False


class StudyConfig(Section):
    file_noun: ClassVar[str] = "study"

    kind: Literal["study"] = "study"  # presets of other kinds (ladders, probe suites) share nas/presets/
    name: str
    directory: str | None = None  # None → studies/<name>
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    data: DataField = None  # None → the shipped corpus; a path or a [data] table (nas/config/data.py)
    budget: TrainBudget
    objectives: tuple[str, ...]
    constraints: dict[str, float] = Field(default_factory=dict)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    trials: int = Field(ge=1)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage: str | None = None  # None → SQLite in the study directory; a URL; or journal:PATH
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    # Each trial trains at every one of these learning rates and keeps its best run, so a design
    # is never ranked only by how well the shared lr suits it. Left out of a stored config while
    # unset, so studies stored before it resume unchanged.
    lr_sweep: Annotated[LRSweep | None, Field(exclude_if=lambda v: v is None)] = None
    # Left out of a stored config at its default, as lr_sweep.
    export: Annotated[ExportConfig, Field(exclude_if=lambda v: v == ExportConfig())] = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _check_sweep(self) -> StudyConfig:
        if self.lr_sweep is None:
            return self
        self.lr_sweep.check_shared(self.budget.lr, "budget")
        if self.fidelity.scheduler != "none":
            raise ValueError("lr_sweep trains each trial at several learning rates, which rungs of one learning "
                             "curve cannot rank; set fidelity.scheduler = \"none\" or remove lr_sweep")
        return self

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a usable study name; use letters, digits, '_', '-' or '.'")
        return name

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not 2 <= len(names) <= 4:
            raise ValueError(f"give 2 to 4 objectives, not {len(names)}, e.g. [\"val_loss\", \"kv_cache_bytes_per_token\"]")
        if len(set(names)) != len(names):
            raise ValueError(f"{list(names)} names an objective twice; list each once")
        for name in names:
            get_objective(name)
        return names

    @field_validator("constraints")
    @classmethod
    def _check_constraints(cls, limits: dict[str, float]) -> dict[str, float]:
        for key in limits:
            constraint_objective(key)
        return limits

    @model_validator(mode="after")
    def _check_space(self) -> StudyConfig:
        from search_spaces import get_space

        try:
            get_space(self.space.name, **self.space.options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"space: {err}") from None
        return self

    @model_validator(mode="after")
    def _check_measurable(self) -> StudyConfig:
        """Every measured objective or constraint comes from a phase the measurement runs."""
        causal = (self.space.options.get("base") or {}).get("causal", True)
        for name in self.wanted:
            phase = MEASURE_PHASE.get(name)
            if phase is not None and phase not in self.measure.include:
                raise ValueError(f"{name!r} is measured in the {phase!r} phase, which measure.include="
                                 f"{list(self.measure.include)} leaves out; add {phase!r} to measure.include "
                                 f"or drop {name!r}")
            if name in DECODING and causal is False:
                raise ValueError(f"{name!r} times incremental decoding, which an encoder (space.options.base."
                                 "causal = false) does not do; drop it or set causal = true")
        return self

    # ---- derived -----------------------------------------------------------------
    @property
    def wanted(self) -> list[str]:
        """The objectives and the objectives the constraints bound."""
        return list(self.objectives) + [constraint_objective(key)[1] for key in self.constraints]

    @property
    def study_dir(self) -> Path:
        return run_folder(self.directory, self.name)

    @property
    def needs(self) -> frozenset[str]:
        """What a trial has to do: {"costs", "measure", "train", "probe"} ∩ objectives ∪ constraints."""
        return frozenset().union(*(get_objective(name).needs for name in self.wanted))

    def to_json(self) -> str:
        return self.model_dump_json()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> StudyConfig:
        """A copy with ``key.path=value`` overrides applied and validated again."""
        raw = self.to_dict()
        for item in overrides:
            apply_override(raw, item)
        return validate(StudyConfig, raw, f"study {self.name!r} with --set")

    @classmethod
    def from_json(cls, text: str, *, source: str = "stored config") -> StudyConfig:
        return validate(cls, json.loads(text), source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, overrides: list[str] | tuple[str, ...] = (),
                  source: str = "study dict") -> StudyConfig:
        """A plain dict with the keys of a study file (lists where the file has arrays), with
        ``key.path=value`` overrides; a ValueError of one line for any mistake, as for a file."""
        raw = json.loads(json.dumps(data, default=str))  # a copy the overrides may change
        for item in overrides:
            apply_override(raw, item)
        return validate(cls, raw, source)

    @classmethod
    def model_validate(cls, obj: Any, *, strict: bool | None = None, extra: Any = None,
                       from_attributes: bool | None = None, context: Any | None = None, by_alias: bool | None = None,
                       by_name: bool | None = None) -> Self:
        """A dict is validated as the JSON it would be: strict Python-mode validation would refuse
        every list where a section keeps a tuple, and a dict from TOML or JSON has only lists."""
        if isinstance(obj, dict):
            return cls.model_validate_json(json.dumps(obj, default=str), strict=strict, extra=extra, context=context,
                                           by_alias=by_alias, by_name=by_name)
        return super().model_validate(obj, strict=strict, extra=extra, from_attributes=from_attributes,
                                      context=context, by_alias=by_alias, by_name=by_name)


def constraint_objective(key: str) -> tuple[Literal["max", "min"], str]:
    """``"max_params"`` → ("max", "params"): a constraint is a bound on an objective's value."""
    bound, _, name = key.partition("_")
    if bound not in ("max", "min") or not name:
        raise ValueError(f"constraint {key!r} must be max_<objective> or min_<objective>, e.g. max_params")
    try:
        get_objective(name)
    except ValueError as err:
        raise ValueError(f"constraint {key!r}: {err}") from None
    return bound, name  # type: ignore[return-value]


def check_hardware(config: StudyConfig, ray_address: str | None = None) -> None:
    """Refuse, before a local run starts, an objective this machine cannot measure: NVML energy
    without an NVIDIA GPU whose driver reports it. Not checked for a Ray cluster elsewhere (its
    nodes, not this one, measure), nor at load: a study stored elsewhere still exports here."""
    energy = [name for name in config.wanted if name in NVML_ENERGY]
    if not energy or ray_address or config.ray.address:
        return
    from nas.device import resolve_device
    from nas.measure.fingerprint import Nvml

    try:
        device = resolve_device(config.measure.device)
    except ValueError as err:
        raise ValueError(f"measure.device: {err}") from None
    reason = Nvml(device).energy_reason()
    if reason is not None:
        raise ValueError(f"{energy[0]!r} is read from NVML's energy counter of an NVIDIA GPU, which the trials "
                         f"here cannot read ({reason}); drop it from objectives and constraints, or run the study "
                         "on a machine with an NVIDIA GPU and nvidia-ml-py")


def load_config(path_or_preset: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a study file or a preset name, apply ``key.path=value`` overrides, validate."""
    raw, path = load_raw(path_or_preset, "study", overrides)
    return validate(StudyConfig, raw, str(path))

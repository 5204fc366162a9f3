"""Scaling ladders: a set of designs re-trained over model sizes, token budgets and seeds.

    ladder.toml ──► LadderConfig (validated: every design scaled to every size, every budget
        │            a whole number of steps, before anything runs)
        ▼
    designs (baseline first: named variants, spec files, a study's Pareto export)
        │ scale_spec(spec, d_model, repeats): width and depth steps that keep the pattern
        ▼
    grid of points (design × size × tokens-per-parameter × seed), one Optuna trial each
        │ Ray Tune runs them (the study engine's Ray session), Optuna storage keeps the record
        ▼
    ladder.parquet: one row per run ──► nas/scaling.py fits ──► nas/report.py

**N is the non-embedding parameter count** (``costs.params − costs.embedding_params``: token
and position embeddings excluded, the LM head too when it is tied): at the tiny sizes of a CPU
ladder the embeddings are most of the model and would hide the scaling of the blocks (Kaplan
et al. 2020 make the same choice). **D is the number of tokens trained**, whole steps.

At one size step every design trains on the same tokens, ``tokens_per_param × N(baseline)``
rounded to whole steps, and with the same seed it sees the same batches: the gap to the
baseline at a (size, budget, seed) point is a paired comparison that differs only in the
design. A design that saves parameters therefore has a slightly higher tokens-per-parameter
ratio of its own; the fits use each run's own N and D.

Scaling keeps a design's per-layer pattern: depth repeats the pattern (``kv_from`` indices are
remapped into each copy), width keeps the head dimension (heads proportional to d_model), keeps
each layer's query-to-K/V-head ratio (GQA groups grow with the heads; MQA keeps its single K/V
head), and scales the FFN width, ranks and latents with d_model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import tomllib
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nas.config import PRESET_DIR, RayConfig, ResourcesConfig, StudyConfig, apply_override
from nas.costs import costs
from nas.study import ATTR_REASON, ATTR_STALE, SQLiteLock, open_storage, recover_stale_trials, sqlite_path
from nas.train import TrainBudget
from search_spaces.spec import ArchSpec, LayerSpec
from search_spaces.variants import variant

CONFIG_FILE = "ladder.json"  # the validated config beside the ladder, found by `qkvnas report NAME`
DB_FILE = "ladder.db"
RESULTS_FILE = "ladder.parquet"
ATTR_LADDER = "ladder_config"
ATTR_POINT = "point"
ATTR_ERROR = "error"  # a trial record's traceback: the run broke (a bug, out of memory), not the design
MIN_STEPS = 8  # a run shorter than this is warm-up and noise, not a point on a curve
OBJECTIVE = "val_loss"
STEP_OBJECTIVES = ("val_loss", "kv_cache_bytes_per_token")  # what each point's trial records
# Optuna parameters of a point: numeric with fixed wide ranges, so that a ladder can grow
# (more sizes, budgets, seeds, designs) without changing a stored distribution.
DESIGN_ID_MAX = 16**12 - 1  # the design's spec hash (12 hex digits) as an integer
PARAM_RANGES = {"design_id": (0, DESIGN_ID_MAX), "d_model": (1, 1 << 20), "repeats": (1, 4096),
                "seed": (0, 2**31 - 1)}
TPP_RANGE = (1e-4, 1e6)
LADDER_PRESET_PREFIX = "ladder_"
DEFAULT_PRESET = "ladder_small"

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


# ---- the ladder file --------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BaseShape(_Section):
    """The model the named variants are applied to (sizes then rescale it)."""

    vocab_size: int = Field(default=256, ge=1)
    context: int = Field(default=64, ge=1)
    d_model: int = Field(default=32, ge=1)
    n_heads: int = Field(default=4, ge=1)
    ffn_dim: int = Field(default=128, ge=1)
    n_layers: int = Field(default=1, ge=1)
    pos: Literal["rope", "learned", "none"] = "rope"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    activation: Literal["gelu", "relu2", "swiglu"] = "gelu"
    bias: bool = False
    tie_embeddings: bool = True

    def spec(self) -> ArchSpec:
        fields = self.model_dump()
        n_layers = fields.pop("n_layers")
        return ArchSpec(**fields, layers=tuple(LayerSpec() for _ in range(n_layers)))


class SizeStep(_Section):
    """One rung: every design at this width, with its layer pattern repeated ``repeats`` times."""

    d_model: int = Field(ge=1)
    repeats: int = Field(default=1, ge=1)

    @property
    def label(self) -> str:
        return f"d{self.d_model}r{self.repeats}"


_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainBudget)}


class LadderBudget(_Section):
    """``TrainBudget`` without ``tokens`` and ``seed``: those come from each grid point. The
    defaults are TrainBudget's own, so a ladder trains exactly as a study does."""

    batch_size: int = Field(default=_TRAIN_DEFAULTS["batch_size"], ge=1)
    seq_len: int | None = _TRAIN_DEFAULTS["seq_len"]
    lr: float = _TRAIN_DEFAULTS["lr"]
    min_lr_frac: float = _TRAIN_DEFAULTS["min_lr_frac"]
    warmup_frac: float = _TRAIN_DEFAULTS["warmup_frac"]
    weight_decay: float = _TRAIN_DEFAULTS["weight_decay"]
    grad_clip: float = _TRAIN_DEFAULTS["grad_clip"]
    eval_every: int = Field(default=_TRAIN_DEFAULTS["eval_every"], ge=0)
    eval_batches: int = Field(default=_TRAIN_DEFAULTS["eval_batches"], ge=1)
    device: str = _TRAIN_DEFAULTS["device"]

    @model_validator(mode="after")
    def _check(self) -> "LadderBudget":
        self.train_budget(tokens=1, seed=0)  # TrainBudget's own checks, one message each
        return self

    def train_budget(self, *, tokens: int, seed: int) -> TrainBudget:
        return TrainBudget(tokens=tokens, seed=seed, **self.model_dump())


class Target(_Section):
    """The scale the gap is extrapolated to: the baseline's non-embedding N and tokens D.
    Default: a GPT-2-style model near the paper's 300M (≈ 250M non-embedding) on 10B tokens."""

    params: float = Field(default=2.5e8, gt=0)
    tokens: float = Field(default=1e10, gt=0)


class LadderConfig(_Section):
    name: str
    directory: str | None = None  # None → studies/<name>
    data: str | None = None  # None → the shipped Shakespeare corpus
    baseline: str = "qkv"  # a variant name or a spec file
    designs: tuple[str, ...] = ()  # variant names or spec files
    from_export: str | None = None  # a study's export folder: its specs/*.json join the designs
    max_export_designs: int | None = Field(default=None, ge=1)
    base: BaseShape | None = None  # None → the first spec file's or export spec's shape, else defaults
    sizes: tuple[SizeStep, ...]
    tokens_per_param: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1)
    budget: LadderBudget = Field(default_factory=LadderBudget)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage: str | None = None  # None → SQLite in the ladder folder; any SQLAlchemy URL; journal:PATH
    target: Target = Field(default_factory=Target)
    ray: RayConfig = Field(default_factory=RayConfig)

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
    def _check_grid(self) -> "LadderConfig":
        if not self.designs and not self.from_export:
            raise ValueError("designs: give at least one design to compare with the baseline "
                             "(designs = [\"q_kv\"]) or a study export (from_export = \"DIR\")")
        if self.max_export_designs is not None and not self.from_export:
            raise ValueError("max_export_designs applies to from_export designs; set from_export or remove it")
        grid(self)  # every design at every size and budget, so a bad ladder never starts
        return self

    # ---- derived -----------------------------------------------------------------
    @property
    def ladder_dir(self) -> Path:
        return Path(self.directory) if self.directory else Path("studies") / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.ladder_dir / DB_FILE).resolve()}"

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, *, source: str = "stored ladder config") -> "LadderConfig":
        return _validate(json.loads(text), source)


# ---- loading ----------------------------------------------------------------------------
def ladder_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob(f"{LADDER_PRESET_PREFIX}*.toml"))


def load_ladder_config(path_or_preset: str | Path | None = None, overrides: Iterable[str] = (), *,
                       from_export: str | None = None) -> LadderConfig:
    """A ladder file or preset name, ``key.path=value`` overrides, and ``from_export``. With an
    export and no file, the export's designs run on the default preset's grid and budget."""
    path = _ladder_path(path_or_preset or DEFAULT_PRESET)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    if from_export is not None:
        if path_or_preset is None:
            raw.update(name=f"ladder-{Path(from_export).resolve().name}", designs=[])
            raw.pop("base", None)  # the baseline takes the shape of the export's designs
        raw["from_export"] = from_export
    for item in overrides:
        apply_override(raw, item)
    return _validate(raw, str(path))


def _ladder_path(path_or_preset: str | Path) -> Path:
    path = Path(path_or_preset)
    if path.is_file():
        return path
    if str(path_or_preset) in ladder_presets():
        return PRESET_DIR / f"{path_or_preset}.toml"
    raise ValueError(f"{str(path_or_preset)!r} is neither a ladder file nor a ladder preset; give a .toml path "
                     f"or one of {ladder_presets()}")


def _validate(raw: dict[str, Any], source: str) -> LadderConfig:
    try:
        return LadderConfig.model_validate_json(json.dumps(raw, default=str))
    except ValidationError as err:
        raise ValueError(f"{source}: {format_errors(err)}") from None


def format_errors(err: ValidationError) -> str:
    """Every problem on one line, ``key.path: what is wrong; fix``, separated by ' | '."""
    parts = []
    for e in err.errors():
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        kind, got = e["type"], e.get("input")
        if kind == "value_error" and not path:  # whole-ladder checks name their own keys
            parts.append(e["msg"].removeprefix("Value error, "))
            continue
        if kind == "extra_forbidden":
            known = _known_keys(e["loc"][:-1])
            parts.append(f"{path}: unknown key; known keys are {known}")
        elif kind == "missing":
            parts.append(f"{path}: required; add it to the ladder file")
        elif kind == "value_error":
            parts.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(f"{path}: {e['msg'].lower()} (got {got!r})")
    return " | ".join(parts)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = LadderConfig
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections (sizes)
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        sections = [a for a in typing.get_args(field.annotation) or (field.annotation,)
                    if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return sorted(model.model_fields)


# ---- designs ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Design:
    name: str
    spec: ArchSpec  # at the shape it was given; sizes rescale it
    source: str  # "variant", a spec file path, or "export:<dir>"
    baseline: bool = False

    @property
    def design_id(self) -> int:
        return int(self.spec.hash, 16)


def resolve_designs(config: LadderConfig) -> list[Design]:
    """The baseline first, then the listed designs, then the export's (Pareto order)."""
    exported = export_designs(config.from_export, config.max_export_designs) if config.from_export else []
    listed_files = [ref for ref in (config.baseline, *config.designs) if _is_spec_file(ref)]
    if config.base is not None:
        base = config.base.spec()
    elif exported or listed_files:
        # The shape of the first spec given, so the baseline is that model with plain attention.
        first = exported[0].spec if exported else _design(listed_files[0], BaseShape().spec(), "designs").spec
        base = first.with_layers([LayerSpec() for _ in range(first.n_layers)])
    else:
        base = BaseShape().spec()
    baseline = dataclasses.replace(_design(config.baseline, base, "baseline"), baseline=True)
    designs = [baseline] + [_design(ref, base, f"designs[{i}]") for i, ref in enumerate(config.designs)]
    seen: dict[str, str] = {}
    for d in designs:
        if d.spec.hash in seen:
            raise ValueError(f"designs: {d.name!r} is the same model as {seen[d.spec.hash]!r}; list each design once")
        seen[d.spec.hash] = d.name
    # A Pareto front often holds the baseline itself: it is run once, as the baseline.
    return designs + [d for d in exported if d.spec.hash not in seen]


def _is_spec_file(ref: str) -> bool:
    return ref.endswith(".json") or os.sep in ref


def _design(ref: str, base: ArchSpec, where: str) -> Design:
    if _is_spec_file(ref):
        try:
            spec = ArchSpec.load(ref)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return Design(name=Path(ref).stem, spec=spec, source=ref)
    try:
        return Design(name=ref, spec=variant(ref, base=base), source="variant")
    except ValueError as err:
        raise ValueError(f"{where}: {err}; or give the path of a JSON spec file") from None


def export_designs(folder: str, limit: int | None) -> list[Design]:
    """The designs of a study export: ``specs/<hash>.json``, in the order of ``pareto.parquet``
    when it is there (its Pareto-optimal trials), else every spec in file-name order."""
    root = Path(folder)
    spec_dir = root / "specs"
    if not spec_dir.is_dir():
        raise ValueError(f"from_export: {root} has no specs/ folder; give the --out folder of `qkvnas export`")
    files = {p.stem: p for p in sorted(spec_dir.glob("*.json"))}
    pareto = _pareto_hashes(root / "pareto.parquet")
    order = list(files) if pareto is None else pareto
    designs, seen = [], set()
    for h in order:
        if h in files and h not in seen:
            seen.add(h)
            designs.append(Design(name=f"pareto-{h}", spec=ArchSpec.load(str(files[h])), source=f"export:{root}"))
    if not designs:
        raise ValueError(f"from_export: {spec_dir} holds no spec of a Pareto-optimal trial; export the study again")
    return designs[:limit] if limit else designs


def _pareto_hashes(path: Path) -> list[str] | None:
    """Spec hashes of the Pareto-optimal trials, best first as exported; None without the file."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["spec_hash"])
    return [str(h) for h in table.column("spec_hash").to_pylist() if h]


# ---- scaling a design -------------------------------------------------------------------
def scale_spec(spec: ArchSpec, *, d_model: int, repeats: int = 1) -> ArchSpec:
    """The design at width ``d_model`` with its layer pattern repeated ``repeats`` times."""
    if d_model % spec.head_dim:
        raise ValueError(f"d_model={d_model} is not a multiple of the design's head dimension {spec.head_dim} "
                         f"(d_model/n_heads = {spec.d_model}/{spec.n_heads}); use a multiple of {spec.head_dim}")
    n_heads = d_model // spec.head_dim
    factor = d_model / spec.d_model
    layers = [
        _scale_layer(spec, layer, i, n_heads=n_heads, d_model=d_model, factor=factor, offset=copy * spec.n_layers)
        for copy in range(repeats) for i, layer in enumerate(spec.layers)
    ]
    return dataclasses.replace(spec, d_model=d_model, n_heads=n_heads, ffn_dim=max(1, round(spec.ffn_dim * factor)),
                               layers=tuple(layers))


def _scale_layer(spec: ArchSpec, layer: LayerSpec, i: int, *, n_heads: int, d_model: int, factor: float,
                 offset: int) -> LayerSpec:
    if layer.attn != "attention":
        return layer
    assert layer.n_kv_heads is not None
    group = spec.n_heads // layer.n_kv_heads  # query heads per K/V head
    if layer.n_kv_heads == 1 and spec.n_heads > 1:
        kv_heads = 1  # MQA stays MQA: one K/V head at every width
    elif n_heads % group:
        raise ValueError(
            f"layers[{i}] shares one K/V head among {group} query heads, but d_model={d_model} gives {n_heads} "
            f"heads; use a d_model whose head count is a multiple of {group}"
        )
    else:
        kv_heads = n_heads // group
    changes: dict[str, Any] = {"n_kv_heads": kv_heads}
    for name in ("qk_rank", "v_rank", "kv_latent"):
        rank = getattr(layer, name)
        if rank is not None:
            changes[name] = min(d_model - 1, max(1, round(rank * factor)))
    if layer.kv_from is not None:
        changes["kv_from"] = layer.kv_from + offset
    return dataclasses.replace(layer, **changes)


def non_embedding_params(spec: ArchSpec) -> int:
    c = costs(spec)
    return c.params - c.embedding_params


# ---- the grid ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Point:
    """One run of the ladder: a design at a size, for a token budget, with a seed."""

    design: str
    baseline: bool
    design_id: int
    size: str
    d_model: int
    repeats: int
    tokens_per_param: float  # nominal: tokens / N(baseline at this size)
    seed: int
    tokens: int  # whole steps of batch_size × seq_len
    params: int  # all trainable parameters
    params_nonembedding: int  # N
    spec_json: str

    @property
    def key(self) -> tuple[int, int, int, float, int]:
        return (self.design_id, self.d_model, self.repeats, self.tokens_per_param, self.seed)

    @property
    def label(self) -> str:
        return f"{self.design} {self.size} tpp={self.tokens_per_param:g} seed={self.seed}"

    @property
    def params_dict(self) -> dict[str, Any]:
        """The point's Optuna parameters."""
        return {"design_id": self.design_id, "d_model": self.d_model, "repeats": self.repeats,
                "tokens_per_param": self.tokens_per_param, "seed": self.seed}

    @property
    def compute(self) -> float:
        return 6.0 * self.params_nonembedding * self.tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def grid(config: LadderConfig, designs: list[Design] | None = None) -> list[Point]:
    """Every (design, size, budget, seed) point, largest compute first (so that the long runs
    start early and short ones fill the gaps at the end)."""
    designs = designs if designs is not None else resolve_designs(config)
    _check_context(config, designs)
    per_step = config.budget.batch_size * (config.budget.seq_len or designs[0].spec.context)
    points = []
    for size in config.sizes:
        scaled = {d.name: _scaled(d, size) for d in designs}
        base_n = non_embedding_params(scaled[designs[0].name])
        for tpp in config.tokens_per_param:
            steps = round(tpp * base_n / per_step)
            if steps < MIN_STEPS:
                raise ValueError(
                    f"tokens_per_param: {tpp:g} × N={base_n} at size {size.label} is {steps} steps of "
                    f"{per_step} tokens; a run needs at least {MIN_STEPS}: raise the ratio or the smallest size, "
                    "or lower budget.batch_size"
                )
            for d in designs:
                for seed in config.seeds:
                    points.append(_point(d, size, scaled[d.name], tpp, seed, steps * per_step))
    return sorted(points, key=lambda p: (-p.compute, p.design, p.seed))


def _scaled(design: Design, size: SizeStep) -> ArchSpec:
    try:
        return scale_spec(design.spec, d_model=size.d_model, repeats=size.repeats)
    except ValueError as err:
        raise ValueError(f"sizes: design {design.name!r} at {size.label}: {err}") from None


def _point(design: Design, size: SizeStep, spec: ArchSpec, tpp: float, seed: int, tokens: int) -> Point:
    c = costs(spec)
    return Point(design=design.name, baseline=design.baseline, design_id=design.design_id, size=size.label,
                 d_model=size.d_model, repeats=size.repeats, tokens_per_param=tpp, seed=seed, tokens=tokens,
                 params=c.params, params_nonembedding=c.params - c.embedding_params, spec_json=spec.to_json())


def _check_context(config: LadderConfig, designs: list[Design]) -> None:
    contexts = {d.spec.context for d in designs}
    if len(contexts) > 1:
        raise ValueError(f"designs: their contexts differ ({sorted(contexts)}); a ladder compares designs on the "
                         "same windows: give specs with one context")
    if config.budget.seq_len is not None and config.budget.seq_len > min(contexts):
        raise ValueError(f"budget.seq_len={config.budget.seq_len} exceeds the designs' context {min(contexts)}; lower it")


# ---- the Optuna record ------------------------------------------------------------------
def open_ladder(config: LadderConfig) -> optuna.Study:
    """The ladder's Optuna study: created on the first run, loaded and checked afterwards."""
    storage = open_storage(config.storage_url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if config.name in names:
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=optuna.samplers.RandomSampler())
        _check_compatible(study, config)
        study.set_user_attr(ATTR_LADDER, json.loads(config.to_json()))  # the grid may have grown
        return study
    study = optuna.create_study(study_name=config.name, storage=storage, direction="minimize",
                                sampler=optuna.samplers.RandomSampler())
    with warnings.catch_warnings():  # experimental in Optuna 4 and 5, and what dashboards read
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE])
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


def save_config_file(config: LadderConfig) -> Path:
    config.ladder_dir.mkdir(parents=True, exist_ok=True)
    path = config.ladder_dir / CONFIG_FILE
    _atomic_write_text(path, json.dumps(json.loads(config.to_json()), indent=2) + "\n")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def trial_key(trial: FrozenTrial) -> tuple[int, int, int, float, int] | None:
    """The grid point a trial is for, from its (fixed) parameters; None if it has none."""
    p = trial.params or trial.system_attrs.get("fixed_params") or {}
    try:
        return (int(p["design_id"]), int(p["d_model"]), int(p["repeats"]), float(p["tokens_per_param"]), int(p["seed"]))
    except KeyError:
        return None


def is_settled(trial: FrozenTrial) -> bool:
    """A point with this trial needs no new run: it is complete, queued or running, or it
    failed on its own (a divergence is a result). A run that was interrupted, or that raised
    an unexpected error (a bug, out of memory), is tried again by the next ``run_ladder``."""
    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get(ATTR_STALE) and not trial.user_attrs.get(ATTR_ERROR)
    return trial.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)


def queue_pending(study: optuna.Study, points: list[Point]) -> list[Point]:
    """Enqueue every point without a settled trial; drop queued trials that are no longer in
    the grid. Returns the points that are queued now (newly or from before)."""
    by_key = {p.key: p for p in points}
    settled = {trial_key(t) for t in study.get_trials(deepcopy=False) if is_settled(t)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if trial_key(t) not in by_key:
            study._storage.set_trial_user_attr(t._trial_id, ATTR_REASON, "not in the ladder's grid any more")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    for p in points:
        if p.key not in settled:
            study.enqueue_trial(p.params_dict, user_attrs={ATTR_POINT: p.label})
    return waiting_points(study, points)


def waiting_points(study: optuna.Study, points: list[Point]) -> list[Point]:
    waiting = {trial_key(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    return [p for p in points if p.key in waiting]


def suggest_point(trial: Any, by_key: dict[tuple, Point]) -> Point:
    """Read a trial's point through Optuna's suggest API (an enqueued trial returns its fixed
    values), so the parameters are stored with their distributions."""
    lo, hi = PARAM_RANGES["design_id"]
    key = (
        trial.suggest_int("design_id", lo, hi),
        trial.suggest_int("d_model", *PARAM_RANGES["d_model"]),
        trial.suggest_int("repeats", *PARAM_RANGES["repeats"]),
        trial.suggest_float("tokens_per_param", *TPP_RANGE, log=True),
        trial.suggest_int("seed", *PARAM_RANGES["seed"]),
    )
    if key not in by_key:
        raise ValueError(f"trial {trial.number} is for no point of this ladder (params {key}); its queue was changed")
    return by_key[key]


def point_attrs(point: Point) -> dict[str, Any]:
    """What a trial stores about its point, readable without this code."""
    fields = point.to_dict()
    fields.pop("spec_json")
    return {ATTR_POINT: point.label, **fields}


# ---- one run (in a Ray worker) ----------------------------------------------------------
def point_study_config(config: LadderConfig, point: Point) -> StudyConfig:
    """The study engine's trial config for one point: its token budget and seed."""
    return StudyConfig.model_validate({
        "name": config.name, "directory": str(config.ladder_dir), "data": config.data, "trials": 1,
        "budget": point_budget(config, point), "objectives": STEP_OBJECTIVES,
    })


def point_budget(config: LadderConfig, point: Point) -> TrainBudget:
    return config.budget.train_budget(tokens=point.tokens, seed=point.seed)


def run_point(point: Point, config: LadderConfig) -> dict[str, Any]:
    """Train one point through the study engine's trial (costs → train → record); never raises
    for the run's own failure (a divergence or an error is a failed record with its reason)."""
    from nas.trial import run_trial

    study_config = point_study_config(config, point)
    record = run_trial(ArchSpec.from_json(point.spec_json), study_config, seed=point.seed)
    return record.to_dict()


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
    points = grid(config)
    with SQLiteLock(config.storage_url, config.name):
        study = open_ladder(config)
        recover_stale_trials(study, all_running=sqlite_path(config.storage_url) is not None)
        queued = queue_pending(study, points)
        done_before = len(points) - len(queued)
        if queued:
            _say(progress, f"ladder {config.name}: {len(points)} points, {done_before} done, {len(queued)} to run "
                           f"(results: {config.ladder_dir / RESULTS_FILE})")
            execute(config, study, points, queued, address=ray_address, progress=progress)
        results = write_results(study, config)
    failed = sum(1 for row in result_rows(study) if row["state"] != "complete")
    return LadderRun(points=len(points), ran=len(queued), already_done=done_before, failed=failed,
                     wall_s=time.perf_counter() - t0, results=results)


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stdout, flush=True)


def execute(config: LadderConfig, study: optuna.Study, points: list[Point], queued: list[Point], *,
            address: str | None, progress: bool) -> None:
    """Run the queued points as Ray Tune trials in the study engine's Ray session.

    The study runner's searcher samples designs from a search space; a ladder's trials are
    fixed in advance, so this is the ladder's own small searcher over the same storage: it pops
    the enqueued trials, and tells each record as it arrives (a kill loses no finished point).
    """
    from nas.runner import ray_session, run_ladder_round  # Ray lives in nas/runner.py only

    by_key = {p.key: p for p in points}
    with ray_session(config, address) as scratch:  # reads config.ray (address, dashboard) only
        remaining = len(queued)
        while remaining:
            run_ladder_round(config, study, by_key, remaining, _Progress(study, remaining, enabled=progress), scratch)
            left = len(waiting_points(study, points))  # interrupted runs come back queued
            if left >= remaining:
                raise RuntimeError("Ray Tune finished a round without finishing a ladder point; see the Ray logs")
            remaining = left


class _Progress:
    """One line per finished point: count, the point, its loss or failure, time left."""

    def __init__(self, study: optuna.Study, target: int, *, enabled: bool) -> None:
        self.study, self.target, self.enabled = study, target, enabled
        self.done, self.t0 = 0, time.perf_counter()

    def finished(self, trial: FrozenTrial) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.target - self.done)
        if trial.state == TrialState.COMPLETE:
            outcome = f"val_loss {trial.values[0]:.4f}"
        else:
            outcome = f"FAILED ({trial.user_attrs.get(ATTR_REASON, 'no reason recorded')})"
        seconds = trial.user_attrs.get("timings", {}).get("total_s")
        took = f" in {seconds:.1f}s" if seconds else ""
        print(f"[{self.done}/{self.target}] {trial.user_attrs.get(ATTR_POINT, trial.number)}: {outcome}{took}; "
              f"{_fmt_duration(left)} left", flush=True)


def _fmt_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ---- the results table ------------------------------------------------------------------
RESULT_COLUMNS = (
    "trial", "state", "reason", "point", "design", "baseline", "design_id", "size", "d_model", "repeats",
    "n_layers", "tokens_per_param", "seed", "tokens", "params", "params_nonembedding", "compute",
    "val_loss", "bits_per_byte", "diverged", "steps", "curve_tokens", "curve_val_loss", "curve_train_loss",
    "train_tokens_per_s", "train_wall_s", "kv_cache_bytes_per_token", "flops_per_token", "attention_params",
    "device", "device_name", "threads", "torch", "spec_hash", "spec_json",
)


def result_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per point that finished (interruptions left out): the point, the final and curve
    losses, the hardware figures. A point's result is its first COMPLETE trial, else its last
    failed one (an error retried later gives way to the retry)."""
    chosen: dict[tuple, FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or t.user_attrs.get(ATTR_STALE):
            continue
        if "design" not in t.user_attrs:
            continue
        key = trial_key(t)
        if key not in chosen or chosen[key].state != TrialState.COMPLETE:
            chosen[key] = t
    return [_row(t) for t in sorted(chosen.values(), key=lambda t: t.number)]


def row_key(row: dict[str, Any]) -> tuple[int, int, int, float, int]:
    """The grid point of a results row (as ``Point.key``)."""
    return (row["design_id"], row["d_model"], row["repeats"], row["tokens_per_param"], row["seed"])


def _row(t: FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    train = a.get("train") or {}
    points = (a.get("curve") or {}).get("points") or []
    c = a.get("costs") or {}
    hw = a.get("hardware") or {}
    spec_json = a.get("spec_json")
    val = t.values[0] if t.state == TrialState.COMPLETE else math.nan
    return {
        "trial": t.number, "state": t.state.name.lower(), "reason": a.get(ATTR_REASON),
        "point": a.get(ATTR_POINT), "design": a["design"], "baseline": bool(a["baseline"]),
        "design_id": int(a["design_id"]), "size": a["size"], "d_model": int(a["d_model"]), "repeats": int(a["repeats"]),
        "n_layers": ArchSpec.from_json(spec_json).n_layers if spec_json else None,
        "tokens_per_param": float(a["tokens_per_param"]), "seed": int(a["seed"]), "tokens": int(a["tokens"]),
        "params": int(a["params"]), "params_nonembedding": int(a["params_nonembedding"]),
        "compute": 6.0 * int(a["params_nonembedding"]) * int(a["tokens"]),
        "val_loss": float(val), "bits_per_byte": _float(train.get("bits_per_byte")) if t.state == TrialState.COMPLETE else math.nan,
        "diverged": bool(train.get("diverged", False)), "steps": train.get("steps"),
        "curve_tokens": [int(p["tokens"]) for p in points],
        "curve_val_loss": [_float(p.get("val_loss")) for p in points],
        "curve_train_loss": [_float(p.get("train_loss")) for p in points],
        "train_tokens_per_s": _float(train.get("train_tokens_per_s")), "train_wall_s": _float(train.get("wall_s")),
        "kv_cache_bytes_per_token": c.get("kv_cache_bytes_per_token"), "flops_per_token": c.get("flops_per_token"),
        "attention_params": c.get("attention_params"),
        "device": hw.get("device"), "device_name": hw.get("device_name"), "threads": hw.get("threads"),
        "torch": hw.get("torch"), "spec_hash": a.get("spec_hash"), "spec_json": spec_json,
    }


def _float(value: Any) -> float:
    """JSON-stored numbers: None and the strings 'inf'/'nan' become floats."""
    if value is None:
        return math.nan
    return float(value)


def write_results(study: optuna.Study, config: LadderConfig) -> Path:
    """``ladder.parquet`` in the ladder folder, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = result_rows(study)
    table = pa.Table.from_pylist(rows, schema=_schema()) if rows else _schema().empty_table()
    config.ladder_dir.mkdir(parents=True, exist_ok=True)
    path = config.ladder_dir / RESULTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _schema() -> Any:
    import pyarrow as pa

    f64, i64, s, b = pa.float64(), pa.int64(), pa.string(), pa.bool_()
    types = {
        "trial": i64, "state": s, "reason": s, "point": s, "design": s, "baseline": b, "design_id": i64, "size": s,
        "d_model": i64, "repeats": i64, "n_layers": i64, "tokens_per_param": f64, "seed": i64, "tokens": i64,
        "params": i64, "params_nonembedding": i64, "compute": f64, "val_loss": f64, "bits_per_byte": f64,
        "diverged": b, "steps": i64, "curve_tokens": pa.list_(i64), "curve_val_loss": pa.list_(f64),
        "curve_train_loss": pa.list_(f64), "train_tokens_per_s": f64, "train_wall_s": f64,
        "kv_cache_bytes_per_token": i64, "flops_per_token": i64, "attention_params": i64, "device": s,
        "device_name": s, "threads": i64, "torch": s, "spec_hash": s, "spec_json": s,
    }
    assert tuple(types) == RESULT_COLUMNS
    return pa.schema([(name, typ) for name, typ in types.items()])


# ---- finding a ladder by name -----------------------------------------------------------
def find_ladder(name_or_dir: str) -> LadderConfig:
    """The config of a ladder, from its folder or its name (``studies/<name>``)."""
    for folder in (Path(name_or_dir), Path("studies") / name_or_dir):
        saved = folder / CONFIG_FILE
        if saved.is_file():
            return LadderConfig.from_json(saved.read_text(encoding="utf-8"), source=str(saved))
    raise ValueError(f"no ladder {name_or_dir!r}: looked for {CONFIG_FILE} in {name_or_dir}/ and "
                     f"studies/{name_or_dir}/; give the ladder's folder or run `qkvnas ladder` first")


def load_ladder_study(config: LadderConfig) -> optuna.Study:
    try:
        return optuna.load_study(study_name=config.name, storage=open_storage(config.storage_url))
    except KeyError:
        raise ValueError(f"storage {config.storage_url!r} has no ladder {config.name!r}; run `qkvnas ladder` first") from None

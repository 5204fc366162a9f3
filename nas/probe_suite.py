"""A grid comparison of attention designs on probe tasks, ending in a variant × task table.

A suite file (TOML; two ship in ``nas/presets/``) names the designs (``search_spaces.variants``
names such as ``qk_v+2d`` or ``mixer``), the tasks, a grid of widths, depths, heads and
lengths, a number of seeds and a probe budget; optionally ``[lm]`` adds the validation loss of
each design trained as a language model on a corpus. Every (design, grid point, task, seed) is
an independent run of ``run_probe``; the table holds mean ± std over grid points and seeds.

Outputs in the chosen folder: ``runs.parquet`` (one row per run), ``table.parquet`` (design,
task, mean, std, n) and ``table.md``.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nas.probe import ProbeBudget, run_probe, torch_threads
from objectives.probes import PROBES, get_probe
from search_spaces.spec import ArchSpec, uniform
from search_spaces.variants import variant

PRESETS_DIR = Path(__file__).parent / "presets"
GRID_AXES = ("d_model", "n_layers", "n_heads", "length")
MODEL_KEYS = {"pos", "norm", "activation", "bias", "tie_embeddings", "ffn_mult"}
LM_COLUMN = "lm_val_loss"
Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class TaskEntry:
    """One table column: a probe with its size parameters and, optionally, its own budget."""

    label: str
    task: str
    params: dict[str, Any]
    budget: ProbeBudget


@dataclass(frozen=True, kw_only=True)
class LMSettings:
    """Language-model training per design: ``nas.train.TrainBudget`` fields plus the context."""

    context: int = 64
    corpus: str | None = None  # None → the shipped Shakespeare corpus
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    name: str
    description: str
    variants: tuple[str, ...]
    tasks: tuple[TaskEntry, ...]
    grid: dict[str, tuple[int, ...]]
    grid_mode: str  # "product" or "star"
    model: dict[str, Any]
    seeds: int
    lm: LMSettings | None = None

    def grid_points(self) -> list[dict[str, int]]:
        """Mode product: every combination. Mode star: the first value of every axis (the
        centre), then one axis at a time moved to each of its other values."""
        axes = [axis for axis in GRID_AXES if axis in self.grid]
        if self.grid_mode == "product":
            return [dict(zip(axes, values)) for values in itertools.product(*(self.grid[a] for a in axes))]
        centre = {a: self.grid[a][0] for a in axes}
        return [centre] + [{**centre, a: v} for a in axes for v in self.grid[a][1:]]

    def model_points(self) -> list[dict[str, int]]:
        """The distinct model sizes of the grid (length is a property of the task)."""
        seen: list[dict[str, int]] = []
        for point in self.grid_points():
            size = {k: v for k, v in point.items() if k != "length"}
            if size not in seen:
                seen.append(size)
        return seen

    def base_spec(self, size: dict[str, int]) -> ArchSpec:
        """The shared settings at one size; vocabulary and context are set later by the probe
        (``adapt_spec``) or the LM corpus."""
        extra = {k: v for k, v in self.model.items() if k != "ffn_mult"}
        d_model = size["d_model"]
        return ArchSpec(
            vocab_size=256, context=64, d_model=d_model, n_heads=size["n_heads"],
            ffn_dim=int(self.model.get("ffn_mult", 4) * d_model), layers=uniform(size["n_layers"]), **extra,
        )


# ---- reading a suite file -------------------------------------------------------------------
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml") if _is_suite_file(p))


def load_suite(name_or_path: str) -> SuiteConfig:
    """A shipped preset by name (``paper_synthetic``) or a suite TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ValueError(
                f"probe suite preset {name_or_path!r} does not exist; use one of {preset_names()} or a .toml path"
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"suite file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    try:
        return parse_suite(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _is_suite_file(path: Path) -> bool:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")).get("kind") == "probe_suite"
    except (OSError, tomllib.TOMLDecodeError):
        return False


def parse_suite(data: dict[str, Any]) -> SuiteConfig:
    _only(data, "suite", {"kind", "name", "description", "variants", "tasks", "grid", "model", "seeds", "budget", "lm"})
    if data.get("kind") != "probe_suite":
        raise ValueError("kind must be \"probe_suite\" (this file is read by `qkvnas probe-suite`)")
    variants = tuple(data.get("variants", ()))
    if not variants:
        raise ValueError("variants is empty; list designs such as [\"qkv\", \"qk_v\", \"mixer\"]")
    grid, grid_mode = _parse_grid(data.get("grid", {}))
    model = dict(data.get("model", {}))
    _only(model, "model", MODEL_KEYS)
    seeds = data.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be a positive integer")
    budget = _budget(data.get("budget", {}), "budget")
    tasks = tuple(_parse_task(label, entry, budget, grid) for label, entry in data.get("tasks", {}).items())
    if not tasks:
        raise ValueError(f"tasks is empty; add tables such as [tasks.reverse]; tasks are {sorted(PROBES)}")
    config = SuiteConfig(
        name=str(data.get("name", "probe_suite")), description=str(data.get("description", "")),
        variants=variants, tasks=tasks, grid=grid, grid_mode=grid_mode, model=model, seeds=seeds,
        lm=_parse_lm(data.get("lm")),
    )
    for size in config.model_points():  # every design must exist at every size before anything runs
        for name in variants:
            variant(name, base=config.base_spec(size))
    return config


def _parse_grid(grid: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], str]:
    _only(grid, "grid", {*GRID_AXES, "mode"})
    mode = grid.get("mode", "product")
    if mode not in ("product", "star"):
        raise ValueError(f"grid.mode={mode!r} is not known; use \"product\" (every combination) or \"star\" "
                         "(the first values as a centre, one axis varied at a time)")
    out = {}
    for axis in GRID_AXES:
        values = grid.get(axis)
        if values is None and axis != "length":
            raise ValueError(f"grid.{axis} is missing; give a list such as {axis} = [2]")
        if values is None:
            continue
        if not isinstance(values, list) or not values or not all(isinstance(v, int) and v > 0 for v in values):
            raise ValueError(f"grid.{axis}={values!r} must be a non-empty list of positive integers")
        if len(set(values)) != len(values):
            raise ValueError(f"grid.{axis}={values!r} repeats a value")
        out[axis] = tuple(values)
    return out, mode


def _budget(fields: dict[str, Any], where: str, base: ProbeBudget | None = None) -> ProbeBudget:
    known = {f.name for f in dataclasses.fields(ProbeBudget)}
    _only(fields, where, known)
    try:
        return dataclasses.replace(base or ProbeBudget(), **fields)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _parse_task(label: str, entry: dict[str, Any], budget: ProbeBudget, grid: dict[str, Any]) -> TaskEntry:
    where = f"tasks.{label}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table, e.g. [{where}]")
    params = dict(entry)
    task = params.pop("task", label)
    task_budget = _budget(params.pop("budget", {}), f"{where}.budget", budget)
    if "length" in grid and "length" in params:
        raise ValueError(f"{where}.length conflicts with grid.length; set the length in one place")
    for length in grid.get("length", (None,)):  # every length of the grid must make a valid probe
        try:
            get_probe(task, **params, **({} if length is None else {"length": length}))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return TaskEntry(label=label, task=task, params=params, budget=task_budget)


def _parse_lm(lm: dict[str, Any] | None) -> LMSettings | None:
    if lm is None:
        return None
    lm = dict(lm)
    context = lm.pop("context", 64)
    corpus = lm.pop("corpus", None)
    if "seed" in lm or "device" in lm:
        raise ValueError("lm.seed and lm.device are set by the suite (its seeds, --device); remove them")
    if "tokens" not in lm:
        raise ValueError("lm.tokens is missing: how many tokens to train each design on, e.g. tokens = 200_000")
    if not isinstance(context, int) or isinstance(context, bool) or context < 2:
        raise ValueError(f"lm.context={context!r} must be an integer of at least 2")
    from nas.train import TrainBudget

    _only(lm, "lm", {f.name for f in dataclasses.fields(TrainBudget)} - {"seed", "device"})
    try:
        TrainBudget(**lm)
    except ValueError as err:
        raise ValueError(f"lm: {err}") from None
    return LMSettings(context=context, corpus=corpus, budget=lm)


def _only(table: dict[str, Any], where: str, known: set[str]) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")


# ---- running ----------------------------------------------------------------------------------
def run_suite(config: SuiteConfig, out_dir: str | Path, *, device: str = "auto", threads: int | None = 1,
              log: Log | None = None) -> dict[str, Any]:
    """Run every (design, grid point, task, seed), then the LM runs; write runs, table, Markdown.

    ``threads``: torch CPU threads while the suite runs (None: leave as is); see ``torch_threads``.
    """
    log = log or _stderr
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch_threads(threads):
        rows = _probe_runs(config, device, log)
        if config.lm is not None:
            rows += _lm_runs(config, device, log)
    table = summarise(rows, config)
    wall_s = time.perf_counter() - t0
    markdown = to_markdown(config, table, rows, wall_s)
    write_outputs(out, rows, table, markdown)
    return {"runs": rows, "table": table, "markdown": markdown, "wall_s": wall_s}


def _probe_runs(config: SuiteConfig, device: str, log: Log) -> list[dict[str, Any]]:
    jobs = [(name, point, entry, seed) for point in config.grid_points() for name in config.variants
            for entry in config.tasks for seed in range(config.seeds)]
    rows = []
    for i, (name, point, entry, seed) in enumerate(jobs, 1):
        size = {k: v for k, v in point.items() if k != "length"}
        params = {**entry.params, **({"length": point["length"]} if "length" in point else {})}
        spec = variant(name, base=config.base_spec(size))
        result = run_probe(spec, entry.task, seed=seed, budget=entry.budget, device=device, params=params)
        rows.append({"variant": name, "task": entry.label, "probe": entry.task, **point,
                     "length": get_probe(entry.task, **params).length, "seed": seed, "metric": "accuracy",
                     "value": result["accuracy"], "train_steps": result["train_steps"],
                     "final_train_loss": result["final_train_loss"], "wall_s": result["wall_s"],
                     "cpu_s": result["cpu_s"]})
        log(f"[{i}/{len(jobs)}] {name} {entry.label} {_point_text(point)} seed {seed}: "
            f"accuracy {result['accuracy']:.3f} ({result['wall_s']:.1f} s, cpu {result['cpu_s']:.1f} s)")
    return rows


def _lm_runs(config: SuiteConfig, device: str, log: Log) -> list[dict[str, Any]]:
    """Validation loss of each design trained as a causal LM (needs nas.train and a corpus)."""
    from nas.data import load_corpus
    from nas.train import TrainBudget, train

    assert config.lm is not None
    corpus = load_corpus(config.lm.corpus)
    jobs = [(name, size, seed) for size in config.model_points() for name in config.variants
            for seed in range(config.seeds)]
    rows = []
    for i, (name, size, seed) in enumerate(jobs, 1):
        base = dataclasses.replace(config.base_spec(size), vocab_size=corpus.vocab_size, context=config.lm.context)
        budget = TrainBudget(**config.lm.budget, seed=seed, device=device)
        cpu0 = time.process_time()
        result = train(variant(name, base=base), corpus, budget)
        rows.append({"variant": name, "task": LM_COLUMN, "probe": None, **size, "length": config.lm.context,
                     "seed": seed, "metric": "val_loss", "value": result.val_loss, "train_steps": result.steps,
                     "final_train_loss": result.train_losses[-1] if result.train_losses else math.nan,
                     "wall_s": result.wall_s, "cpu_s": time.process_time() - cpu0})
        log(f"[lm {i}/{len(jobs)}] {name} {_point_text(size)} seed {seed}: "
            f"val loss {result.val_loss:.4f} ({result.wall_s:.1f} s)")
    return rows


def _point_text(point: dict[str, int]) -> str:
    short = {"d_model": "d", "n_layers": "L", "n_heads": "h", "length": "len"}
    return " ".join(f"{short[k]}{v}" for k, v in point.items())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- the table ----------------------------------------------------------------------------------
def summarise(rows: list[dict[str, Any]], config: SuiteConfig) -> list[dict[str, Any]]:
    """Mean ± std (sample std; 0 for one run) per design and column, over grid points and seeds."""
    columns = [e.label for e in config.tasks] + ([LM_COLUMN] if config.lm is not None else [])
    table = []
    for name in config.variants:
        for column in columns:
            values = np.array([r["value"] for r in rows if r["variant"] == name and r["task"] == column], dtype=float)
            if values.size == 0:
                continue
            finite = values[np.isfinite(values)]
            table.append({
                "variant": name, "task": column, "n": int(values.size), "n_failed": int(values.size - finite.size),
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            })
    return table


def to_markdown(config: SuiteConfig, table: list[dict[str, Any]], rows: list[dict[str, Any]], wall_s: float) -> str:
    columns = list(dict.fromkeys(r["task"] for r in table))
    cell = {(r["variant"], r["task"]): r for r in table}
    head = ["variant", *columns]
    lines = [f"# {config.name}", "", config.description.strip(), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in config.variants:
        cells = [_cell(cell.get((name, c))) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    grid = f"{config.grid_mode}: " + ", ".join(f"{k} {list(v)}" for k, v in config.grid.items())
    n_probe = sum(r["metric"] == "accuracy" for r in rows)
    lines += ["", f"Probe cells: test accuracy on queried positions, mean ± std over {config.seeds} seed(s) × "
              f"{len(config.grid_points())} grid point(s) ({grid})."]
    if config.lm is not None:
        settings = ", ".join(f"{k} {v}" for k, v in config.lm.budget.items())
        lines.append(f"{LM_COLUMN}: validation loss (nats/token) of the design trained as a causal LM, "
                     f"context {config.lm.context}, {settings}.")
    lines.append(f"{n_probe} probe runs, {len(rows) - n_probe} LM runs, {wall_s:.0f} s wall time.")
    return "\n".join(lines) + "\n"


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    text = f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    return text + (f" ({entry['n_failed']} failed)" if entry["n_failed"] else "")


def write_outputs(out: Path, rows: list[dict[str, Any]], table: list[dict[str, Any]], markdown: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _atomic(out / "runs.parquet", lambda p: pq.write_table(pa.Table.from_pylist(rows), p))
    _atomic(out / "table.parquet", lambda p: pq.write_table(pa.Table.from_pylist(table), p))
    _atomic(out / "table.md", lambda p: Path(p).write_text(markdown, encoding="utf-8"))


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)

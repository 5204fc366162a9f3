"""Export a study: ``export_study(name_or_storage, out_dir)`` writes

* ``pareto.parquet`` — one row per trial on the feasible Pareto front (``study.best_trials``),
* ``trials.parquet`` — every trial in every state,
* ``specs/<hash>.json`` — each evaluated design, which ``ArchSpec.load`` rebuilds exactly,
* ``pareto.png`` — the front (pairwise panels for more than two objectives),
* ``study.json`` — the study's name, objectives, directions, counts and config.

Every file is written to a temporary name and moved into place with ``os.replace``, so a
reader never sees half a file. Columns: objective values under their names, constraint
violations as ``constraint:<key>`` (> 0 violated), the spec JSON and hash, the hardware and
the timings; nested data (curve, costs, measurement) as JSON strings.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.common import atomic_write, atomic_write_text
from nas.study import (
    ATTR_CONFIG, ATTR_DUPLICATE_OF, ATTR_REASON, ATTR_RETRY_OF, ATTR_SPEC_HASH, ATTR_SPEC_JSON, ATTR_STALE, ATTR_STATUS, counts,
    is_feasible, load_existing, pareto_front,
)

HARDWARE_COLUMNS = ("device", "device_name", "cpu_model", "torch", "cuda", "host")
TIMING_COLUMNS = ("total_s", "costs_s", "measure_s", "train_s", "probe_s")
COST_COLUMNS = ("params", "kv_cache_bytes_per_token", "flops_per_token")


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    out_dir: Path
    pareto: Path
    trials: Path
    plot: Path
    specs: tuple[Path, ...]
    front_size: int  # trials on the front (a design the sampler proposed twice counts twice)
    front_designs: int  # distinct designs on the front
    n_trials: int


def export_study(name_or_storage: str | optuna.Study, out_dir: str | Path, *,
                 study_name: str | None = None) -> ExportResult:
    """Write the study's front, trials, specs and plot to ``out_dir`` (created if needed)."""
    study = name_or_storage if isinstance(name_or_storage, optuna.Study) else load_existing(
        str(name_or_storage), study_name=study_name)
    out = Path(out_dir)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(study)
    on_front = {t.number for t in front}
    rows = [trial_row(study, t, on_front=t.number in on_front) for t in trials]
    _write_parquet(out / "trials.parquet", rows, study)
    _write_parquet(out / "pareto.parquet", [r for r in rows if r["on_front"]], study)
    specs = _write_specs(out / "specs", trials)
    plot = out / "pareto.png"
    atomic_write(plot, lambda path: plot_front(study, path))
    atomic_write(out / "study.json", lambda path: path.write_text(json.dumps(study_summary(study), indent=2) + "\n"))
    return ExportResult(out_dir=out, pareto=out / "pareto.parquet", trials=out / "trials.parquet", plot=plot,
                        specs=tuple(specs), front_size=len(front),
                        front_designs=len({t.user_attrs.get(ATTR_SPEC_HASH, t.number) for t in front}), n_trials=len(trials))


# ---- rows -------------------------------------------------------------------------------
def trial_row(study: optuna.Study, trial: FrozenTrial, *, on_front: bool) -> dict[str, Any]:
    attrs = trial.user_attrs
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "status": attrs.get(ATTR_STATUS),
        "reason": attrs.get(ATTR_REASON),
        "feasible": is_feasible(trial) if trial.state == optuna.trial.TrialState.COMPLETE else None,
        "on_front": on_front,
        "interrupted": bool(attrs.get(ATTR_STALE, False)),
        "duplicate_of": attrs.get(ATTR_DUPLICATE_OF),
        "retry_of": attrs.get(ATTR_RETRY_OF),
    }
    values = trial.values if trial.state == optuna.trial.TrialState.COMPLETE else None
    for i, name in enumerate(names):
        row[name] = float(values[i]) if values else None
    for key, value in sorted(trial.constraints.items()):
        row[f"constraint:{key}"] = float(value)
    row["spec_hash"] = attrs.get(ATTR_SPEC_HASH)
    row["spec_json"] = attrs.get(ATTR_SPEC_JSON)
    row["params_json"] = json.dumps(trial.params, sort_keys=True)
    hardware = attrs.get("hardware") or {}
    for key in HARDWARE_COLUMNS:
        row[f"hw_{key}"] = _str_or_none(hardware.get(key))
    row["hardware_json"] = json.dumps(hardware, sort_keys=True) if hardware else None
    timings = attrs.get("timings") or {}
    for key in TIMING_COLUMNS:
        row[key] = timings.get(key)
    row["datetime_start"] = trial.datetime_start.isoformat() if trial.datetime_start else None
    row["datetime_complete"] = trial.datetime_complete.isoformat() if trial.datetime_complete else None
    costs = attrs.get("costs") or {}
    for key in COST_COLUMNS:
        row[f"cost_{key}"] = costs.get(key)
    # Early stopping (nas/engine/stopping.py): where a PRUNED trial stopped and what it trained.
    row["stopped_at_rung"] = attrs.get("stopped_at_rung")
    row["tokens_spent"] = attrs.get("tokens_spent")
    for key in ("costs", "measure", "train", "curve", "stability", "probes", "constraint_values", "objective_values",
                "rungs"):
        row[f"{key}_json"] = json.dumps(attrs[key], sort_keys=True) if attrs.get(key) is not None else None
    return row


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _write_parquet(path: Path, rows: list[dict[str, Any]], study: optuna.Study) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = _columns(rows, study)
    table = pa.table({name: pa.array([r.get(name) for r in rows], type=kind) for name, kind in columns.items()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _columns(rows: list[dict[str, Any]], study: optuna.Study) -> dict[str, Any]:
    """Column name → Arrow type, fixed by name so an empty front still has every column."""
    import pyarrow as pa

    names = list(dict.fromkeys(k for r in rows for k in r))
    for metric in study.metric_names or []:
        if metric not in names:
            names.append(metric)
    kinds = {}
    for name in names:
        sample = next((r[name] for r in rows if r.get(name) is not None), None)
        if name in (study.metric_names or []) or name.startswith("constraint:") or name in TIMING_COLUMNS:
            kinds[name] = pa.float64()
        elif isinstance(sample, bool) or name in ("on_front", "feasible", "interrupted"):
            kinds[name] = pa.bool_()
        elif isinstance(sample, int) or name in ("number", "duplicate_of", "retry_of", "stopped_at_rung", "tokens_spent") \
                or name.startswith("cost_"):
            kinds[name] = pa.int64()
        elif isinstance(sample, float):
            kinds[name] = pa.float64()
        else:
            kinds[name] = pa.string()
    return kinds


def _write_specs(folder: Path, trials: list[FrozenTrial]) -> list[Path]:
    written: dict[str, Path] = {}
    for trial in trials:
        text, digest = trial.user_attrs.get(ATTR_SPEC_JSON), trial.user_attrs.get(ATTR_SPEC_HASH)
        if not text or not digest or digest in written:
            continue
        path = folder / f"{digest}.json"
        atomic_write_text(path, text + "\n")
        written[digest] = path
    return list(written.values())


def study_summary(study: optuna.Study) -> dict[str, Any]:
    c = counts(study)
    return {
        "study": study.study_name,
        "objectives": study.metric_names,
        "directions": [d.name.lower() for d in study.directions],
        "front": [t.number for t in pareto_front(study)],
        "counts": {"complete": c.complete, "infeasible": c.infeasible, "failed": c.failed,
                   "interrupted": c.stale, "running": c.running, "queued": c.waiting},
        "config": study.user_attrs.get(ATTR_CONFIG),
    }


# ---- the plot ---------------------------------------------------------------------------
def plot_front(study: optuna.Study, path: Path) -> None:
    """Feasible trials in grey, infeasible ones as crosses, the front in colour; one panel per
    pair of objectives. Axes spanning more than 100× are logarithmic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = pareto_front(study)
    for ax, (i, j) in zip(axes.flat, pairs):
        _panel(ax, complete, front, i, j, names, study.directions)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle(f"{study.study_name}: {len(front)} Pareto-optimal of {len(complete)} completed trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _panel(ax: Any, complete: list[FrozenTrial], front: list[FrozenTrial], i: int, j: int,
           names: list[str], directions: list[Any]) -> None:
    def points(trials: list[FrozenTrial]) -> tuple[list[float], list[float]]:
        kept = [t for t in trials if math.isfinite(t.values[i]) and math.isfinite(t.values[j])]
        return [t.values[i] for t in kept], [t.values[j] for t in kept]

    feasible = [t for t in complete if is_feasible(t)]
    infeasible = [t for t in complete if not is_feasible(t)]
    ax.scatter(*points(feasible), s=18, c="0.7", label="feasible")
    if infeasible:
        ax.scatter(*points(infeasible), s=18, marker="x", c="tab:red", alpha=0.5, label="infeasible")
    fx, fy = points(front)
    ax.scatter(fx, fy, s=40, c="tab:blue", edgecolors="k", zorder=3, label="Pareto front")
    signs = [1.0 if d.name == "MINIMIZE" else -1.0 for d in (directions[i], directions[j])]
    px, py = _front_2d(*points(feasible), signs)
    if px:  # with more than two objectives the study's front is wider than this pair's
        label = "front of this pair" if len(names) > 2 else None
        ax.plot(px, py, c="tab:blue", lw=1, drawstyle="steps-post", label=label)
    for values, setter in ((fx + points(feasible)[0], ax.set_xscale), (fy + points(feasible)[1], ax.set_yscale)):
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 100:
            setter("log")
    ax.set_xlabel(f"{names[i]} ({'lower' if signs[0] > 0 else 'higher'} is better)")
    ax.set_ylabel(f"{names[j]} ({'lower' if signs[1] > 0 else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _front_2d(xs: list[float], ys: list[float], signs: list[float]) -> tuple[list[float], list[float]]:
    """The non-dominated points of one pair of objectives, ordered along x."""
    order = sorted(range(len(xs)), key=lambda k: (signs[0] * xs[k], signs[1] * ys[k]))
    kept: list[int] = []
    for k in order:
        if not kept or signs[1] * ys[k] < signs[1] * ys[kept[-1]]:
            kept.append(k)
    kept.sort(key=lambda k: xs[k])
    return [xs[k] for k in kept], [ys[k] for k in kept]

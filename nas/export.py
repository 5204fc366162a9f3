"""Export a study: ``export_study(name_or_storage, out_dir)`` writes

* ``pareto.parquet`` — one row per trial on the feasible Pareto front (``study.best_trials``),
* ``trials.parquet`` — every trial in every state,
* ``specs/<hash>.json`` — each design on the front, which ``ArchSpec.load`` rebuilds exactly,
* ``specs_all/<hash>.json`` — every evaluated design,
* ``pareto.png`` and ``pareto.svg`` — the front (pairwise panels for more than two objectives),
* ``weights/<hash>-s<seed>/`` — with ``[export] weights = true``, the front's trained weights,
* ``hypervolume.parquet`` and ``hypervolume.png`` — the hypervolume after each completed trial,
  against the study's fixed reference point (nas/study/hypervolume.py; a study with one objective
  has none),
* ``study.json`` — the study's name, objectives, directions, counts, hypervolume and config,
* ``manifest.json`` — every file above and its size, written last.

The export is written as a whole (``nas/swap.py``): into a new folder beside ``out_dir``, which
then replaces it in one rename. A reader sees the previous export or the new one, never files
of both; an export that fails or is killed leaves the previous one as it was.

Columns (nas/export_schema.py, README "Export schema"): objective values under their names,
constraint violations as ``constraint:<key>`` (> 0 violated), the spec JSON and hash, the
hardware and the timings; nested data (curve, costs, measurement) as JSON strings. A front is
counted in designs, with its trials beside where a design was proposed again (``front_count``).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.engine import attrs as record_attrs
from nas.engine.record import ATTR_REMEASURE_OF, superseded
from nas.export_plot import plot_front
from nas.export_schema import SCHEMA_VERSION, TIMING_COLUMNS, table, utc
from nas.study import (
    ATTR_CONFIG, ATTR_DUPLICATE_OF, ATTR_REASON, ATTR_RETRY_OF, ATTR_SPEC_HASH, ATTR_SPEC_JSON, ATTR_STALE, ATTR_STATUS, counts,
    is_feasible, load_existing, pareto_front,
)
from nas.study import hypervolume
from nas.study.display import count_text, noisy_figures, one_per_design
from nas.swap import whole_folder

# What an export folder always holds; ``weights`` only with ``[export] weights = true``.
FILES = ("pareto.parquet", "trials.parquet", "specs", "specs_all", "pareto.png", "pareto.svg", "study.json")
OPTIONAL_FILES = ("weights", *hypervolume.FILES)
HARDWARE_COLUMNS = ("device", "device_name", "cpu_model", "torch", "cuda", "host")
COST_COLUMNS = ("params", "kv_cache_bytes_per_token", "flops_per_token")
__all__ = ["ExportResult", "export_study", "plot_front", "study_summary", "trial_row", "trials_table"]


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    out_dir: Path
    pareto: Path
    trials: Path
    plot: Path
    specs: tuple[Path, ...]  # the front's designs, specs/<hash>.json
    front_size: int  # trials on the front (a design the sampler proposed twice counts twice)
    front_designs: int  # distinct designs on the front
    n_trials: int
    specs_all: tuple[Path, ...] = ()  # every evaluated design, specs_all/<hash>.json
    weights: tuple[Path, ...] = ()  # the front's trained weights, weights/<hash>-s<seed>/

    @property
    def front_text(self) -> str:
        """'7 designs (11 trials)': the count every display of a front uses."""
        return count_text(self.front_designs, self.front_size)


def export_study(name_or_storage: str | optuna.Study, out_dir: str | Path, *,
                 study_name: str | None = None) -> ExportResult:
    """Write the study's front, trials, specs and plot to ``out_dir`` (created if needed)."""
    study = name_or_storage if isinstance(name_or_storage, optuna.Study) else load_existing(
        str(name_or_storage), study_name=study_name)
    out = Path(out_dir)
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(study)
    weights = front_weights(front)
    rows = _rows(study, trials, front, weights)
    with whole_folder(out, known=FILES + OPTIONAL_FILES) as gen:
        _write_parquet(gen / "trials.parquet", rows, study)
        _write_parquet(gen / "pareto.parquet", [r for r in rows if r["on_front"]], study)
        front_specs = _write_specs(gen / "specs", front)
        all_specs = _write_specs(gen / "specs_all", trials)
        copied = _copy_weights(gen / "weights", weights)
        plot_front(study, gen / "pareto.png")
        hypervolume.write_files(study, gen)
        (gen / "study.json").write_text(json.dumps(study_summary(study), indent=2) + "\n", encoding="utf-8")
    return ExportResult(out_dir=out, pareto=out / "pareto.parquet", trials=out / "trials.parquet", plot=out / "pareto.png",
                        specs=tuple(out / "specs" / f"{d}.json" for d in front_specs),
                        specs_all=tuple(out / "specs_all" / f"{d}.json" for d in all_specs),
                        weights=tuple(out / "weights" / name for name in copied),
                        front_size=len(front), front_designs=len(one_per_design(front)), n_trials=len(trials))


# ---- rows -------------------------------------------------------------------------------
def trial_row(study: optuna.Study, trial: FrozenTrial, *, on_front: bool) -> dict[str, Any]:
    """One trial as a row of ``trials.parquet``; the columns are README's "Export schema"."""
    attrs = record_attrs.read(trial)  # user attributes with the record's bulk (nas/engine/attrs.py)
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
        # Contention (nas/measure/noise.py): None where the trial has no measurement checked for it.
        "noisy": bool(noisy_figures(trial)) if "noisy" in (attrs.get("measure") or {}) else None,
        "noise": "; ".join(f"{name}: {why}" for name, why in noisy_figures(trial).items()) or None,
        "remeasure_of": attrs.get(ATTR_REMEASURE_OF),
    }
    # The values the trial measured: an objective it never reached is null (not the stand-in
    # Optuna was told), and its reason column says why.
    values = record_attrs.objective_values(trial, names) if trial.state == optuna.trial.TrialState.COMPLETE else {}
    for name in names:
        row[name] = _number(values.get(name))
    for key, value in sorted(record_attrs.constraint_values(trial).items()):
        row[f"constraint:{key}"] = _number(value)
    row["spec_hash"] = attrs.get(ATTR_SPEC_HASH)
    row["spec_json"] = attrs.get(ATTR_SPEC_JSON)
    row["params_json"] = json.dumps(trial.params, sort_keys=True)
    hardware = attrs.get("hardware") or {}
    for key in HARDWARE_COLUMNS:
        row[f"hw_{key}"] = _str_or_none(hardware.get(key))
    row["hardware_json"] = json.dumps(hardware, sort_keys=True) if hardware else None
    timings = attrs.get("timings") or {}
    for key in TIMING_COLUMNS:
        row[key] = _number(timings.get(key))
    row["datetime_start"] = utc(trial.datetime_start)
    row["datetime_complete"] = utc(trial.datetime_complete)
    costs = attrs.get("costs") or {}
    for key in COST_COLUMNS:
        row[f"cost_{key}"] = costs.get(key)
    # Two throughputs, apart: the measurement protocol's (the objective train_tokens_per_s, median
    # of timed repeats) and that of the trial's own training run (first step and evaluation left out).
    row["measured_train_tokens_per_s"] = _number((attrs.get("measure") or {}).get("train_tokens_per_s"))
    row["trained_tokens_per_s"] = _number((attrs.get("train") or {}).get("train_tokens_per_s"))
    # Early stopping (nas/engine/stopping.py): where a PRUNED trial stopped and what it trained.
    row["stopped_at_rung"] = attrs.get("stopped_at_rung")
    row["tokens_spent"] = attrs.get("tokens_spent")
    for key in ("costs", "measure", "train", "curve", "stability", "probes", "constraint_values", "objective_values",
                "rungs"):
        row[f"{key}_json"] = json.dumps(attrs[key], sort_keys=True) if attrs.get(key) is not None else None
    return row


def _number(value: Any) -> float | None:
    """A figure as a float; None for a missing one and for ``inf``/``nan`` (stored as strings too)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if abs(number) < float("inf") else None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def trials_table(study: optuna.Study, *, front_only: bool = False):  # -> pyarrow.Table
    """The rows of ``trials.parquet`` (``pareto.parquet`` with ``front_only``), read from storage now."""
    front = pareto_front(study)
    rows = _rows(study, study.get_trials(deepcopy=False), front, front_weights(front))
    return table([r for r in rows if r["on_front"]] if front_only else rows, study)


def _rows(study: optuna.Study, trials: list[FrozenTrial], front: list[FrozenTrial],
          weights: dict[str, Path]) -> list[dict[str, Any]]:
    on_front = {t.number for t in front}
    rows = [trial_row(study, t, on_front=t.number in on_front) for t in trials]
    remeasured = superseded(trials)  # a trial measured again → the trial that did
    for row in rows:
        row["superseded_by"] = remeasured.get(row["number"])
        copied = weights.get(row["spec_hash"] or "") if row["on_front"] else None
        row["weights"] = f"weights/{copied.name}" if copied else None  # relative to the export folder
    return rows


def _write_parquet(path: Path, rows: list[dict[str, Any]], study: optuna.Study) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table(rows, study), path)


def _write_specs(folder: Path, trials: list[FrozenTrial]) -> list[str]:
    """Each design of ``trials`` once, as ``<hash>.json``; returns the hashes in trial order."""
    folder.mkdir()
    written: dict[str, None] = {}
    for trial in trials:
        text, digest = trial.user_attrs.get(ATTR_SPEC_JSON), trial.user_attrs.get(ATTR_SPEC_HASH)
        if not text or not digest or digest in written:
            continue
        (folder / f"{digest}.json").write_text(text + "\n", encoding="utf-8")
        written[digest] = None
    return list(written)


# ---- weights ------------------------------------------------------------------------------
def front_weights(front: list[FrozenTrial]) -> dict[str, Path]:
    """Spec hash → the trained weights folder of a front design (``[export] weights = true``,
    nas/trial.py ``weights_folder``: ``<hash>-s<seed>``); designs without one are left out."""
    out: dict[str, Path] = {}
    for trial, _ in one_per_design(front):
        folder, digest = record_attrs.read(trial).get("weights"), trial.user_attrs.get(ATTR_SPEC_HASH)
        if folder and digest and Path(folder).is_dir():
            out[digest] = Path(folder)
    return out


def _copy_weights(folder: Path, weights: dict[str, Path]) -> list[str]:
    """Copy each front design's weights folder into ``weights/<hash>-s<seed>/``."""
    names = []
    for source in weights.values():
        shutil.copytree(source, folder / source.name)
        names.append(source.name)
    return names


def study_summary(study: optuna.Study) -> dict[str, Any]:
    c = counts(study)
    front = pareto_front(study)
    return {
        "study": study.study_name,
        "schema_version": SCHEMA_VERSION,
        "objectives": study.metric_names,
        "directions": [d.name.lower() for d in study.directions],
        "front": [t.number for t in front],
        "front_designs": len(one_per_design(front)),
        "counts": {"complete": c.complete, "infeasible": c.infeasible, "failed": c.failed,
                   "interrupted": c.stale, "running": c.running, "queued": c.waiting},
        "hypervolume": _hypervolume(study),
        "config": study.user_attrs.get(ATTR_CONFIG),
    }


def _hypervolume(study: optuna.Study) -> dict[str, Any] | None:
    """The hypervolume now and its reference point (the history is in hypervolume.parquet)."""
    found = hypervolume.study_history(study)
    if found is None:
        return None
    h, stored = found
    return {"value": h.value, "reference_point": h.reference, "reference_stored": stored,
            "last_improved_at_trial": h.last_improved}

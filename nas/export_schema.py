"""The schema of ``pareto.parquet`` and ``trials.parquet``: each column's Arrow type and unit,
fixed by name (so an empty front still has every column, with the types a full one has), and
the file's key-value metadata (schema and qkvnas versions, each objective's unit and direction).

Values a trial never had are null, never ``inf`` or ``nan``: an objective an infeasible design
did not reach (its ``reason`` says why), a figure of a failed trial, a measurement not made.
README "Export schema" lists the columns; ``SCHEMA_VERSION`` changes when one changes meaning.
"""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import optuna

SCHEMA_VERSION = 2  # 1: qkvnas before file metadata (datetimes as strings, inf for never measured)
BOOL_COLUMNS = frozenset({"on_front", "feasible", "interrupted", "noisy"})
INT_COLUMNS = frozenset({"number", "duplicate_of", "retry_of", "remeasure_of", "superseded_by", "stopped_at_rung",
                         "tokens_spent", "cost_params", "cost_kv_cache_bytes_per_token", "cost_flops_per_token"})
TIME_COLUMNS = frozenset({"datetime_start", "datetime_complete"})
TIMING_COLUMNS = ("total_s", "costs_s", "measure_s", "train_s", "probe_s")
FLOAT_COLUMNS = frozenset({*TIMING_COLUMNS, "measured_train_tokens_per_s", "trained_tokens_per_s"})
UNITS = {  # column → unit, for the columns that have one (objectives: from objectives/registry.py)
    **{name: "s" for name in TIMING_COLUMNS},
    "cost_params": "parameters", "cost_kv_cache_bytes_per_token": "bytes/token", "cost_flops_per_token": "FLOPs/token",
    "measured_train_tokens_per_s": "tokens/s", "trained_tokens_per_s": "tokens/s", "tokens_spent": "tokens",
    "datetime_start": "UTC", "datetime_complete": "UTC",
}


def objective_info(study: optuna.Study) -> dict[str, dict[str, str | None]]:
    """Objective → its unit, direction and description (the registry's; a user's objective that
    cannot be imported here has its direction from the study and no unit)."""
    from objectives import get_objective

    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    out: dict[str, dict[str, str | None]] = {}
    for name, direction in zip(names, study.directions):
        try:
            objective = get_objective(name)
            unit, description = objective.unit, objective.description
        except (ValueError, ImportError):
            unit, description = None, None
        out[name] = {"unit": unit, "direction": direction.name.lower(), "description": description}
    return out


def arrow_type(name: str, objectives: dict[str, Any], sample: Any) -> Any:
    import pyarrow as pa

    if name in objectives or name.startswith("constraint:") or name in FLOAT_COLUMNS:
        return pa.float64()
    if name in TIME_COLUMNS:
        return pa.timestamp("us", tz="UTC")
    if name in BOOL_COLUMNS or isinstance(sample, bool):
        return pa.bool_()
    if name in INT_COLUMNS or isinstance(sample, int):
        return pa.int64()
    if isinstance(sample, float):
        return pa.float64()
    return pa.string()


def cell(value: Any) -> Any:
    """A row's value as a Parquet cell: non-finite floats are null (never measured)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def utc(value: datetime | None) -> datetime | None:
    """Optuna's datetimes are naive local time: as UTC."""
    return None if value is None else value.astimezone(UTC)


def table(rows: list[dict[str, Any]], study: optuna.Study) -> Any:  # -> pyarrow.Table
    """The rows as an Arrow table with the export's schema and metadata."""
    import pyarrow as pa

    objectives = objective_info(study)
    names = list(dict.fromkeys(k for r in rows for k in r))
    names += [name for name in objectives if name not in names]
    units = {**UNITS, **{name: info["unit"] for name, info in objectives.items() if info["unit"]},
             **{name: "violation (> 0 violated)" for name in names if name.startswith("constraint:")}}
    fields, arrays = [], []
    for name in names:
        sample = next((r[name] for r in rows if r.get(name) is not None), None)
        kind = arrow_type(name, objectives, sample)
        unit = units.get(name)
        fields.append(pa.field(name, kind, metadata={"unit": unit} if unit else None))
        arrays.append(pa.array([cell(r.get(name)) for r in rows], type=kind))
    schema = pa.schema(fields, metadata=metadata(study, objectives, {n: units[n] for n in names if n in units}))
    return pa.Table.from_arrays(arrays, schema=schema)


def metadata(study: optuna.Study, objectives: dict[str, Any], units: dict[str, str]) -> dict[str, str]:
    """The file's key-value metadata: plain strings, JSON where a value is structured."""
    from nas.weights import qkvnas_version

    return {
        "qkvnas.schema_version": str(SCHEMA_VERSION),
        "qkvnas.version": qkvnas_version(),
        "qkvnas.study": study.study_name,
        "qkvnas.objectives": json.dumps(objectives),
        "qkvnas.units": json.dumps(units),
    }


def read_metadata(path: Any) -> dict[str, Any]:
    """An export's Parquet metadata, decoded (``objectives`` and ``units`` as dicts)."""
    import pyarrow.parquet as pq

    raw = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items() if k.startswith(b"qkvnas.")}
    return {key.removeprefix("qkvnas."): json.loads(value) if key in ("qkvnas.objectives", "qkvnas.units") else value
            for key, value in raw.items()}

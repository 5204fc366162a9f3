"""The results table of a ladder: ``ladder.parquet``, one row per finished point."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.common import atomic_write
from nas.engine import attrs
from nas.ladder.config import LadderConfig
from nas.ladder.record import ATTR_POINT, trial_key
from nas.engine.queue import results_by_key
from nas.study import ATTR_REASON
from search_spaces.spec import ArchSpec

RESULTS_FILE = "ladder.parquet"
RESULT_COLUMNS = (
    "trial", "state", "reason", "point", "design", "baseline", "design_id", "size", "d_model", "repeats",
    "n_layers", "tokens_per_param", "seed", "lr", "tokens", "params", "params_nonembedding", "compute",
    "val_loss", "bits_per_byte", "diverged", "steps", "curve_tokens", "curve_val_loss", "curve_train_loss",
    "train_tokens_per_s", "train_wall_s", "kv_cache_bytes_per_token", "flops_per_token", "attention_params",
    "device", "device_name", "threads", "torch", "spec_hash", "spec_json",
)


def result_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per point that finished (interruptions left out): the point, the final and curve
    losses, the hardware figures. A point's result is its first COMPLETE trial, else its last
    failed one (an error retried later gives way to the retry)."""
    chosen = results_by_key(study, lambda t: trial_key(t) if "design" in t.user_attrs else None)
    return [_row(t) for t in sorted(chosen.values(), key=lambda t: t.number)]


def row_key(row: dict[str, Any]) -> tuple:
    """The grid point of a results row (as ``Point.key``)."""
    key = (row["design_id"], row["d_model"], row["repeats"], row["tokens_per_param"], row["seed"])
    return key if row.get("lr") is None else (*key, row["lr"])


def _row(t: FrozenTrial) -> dict[str, Any]:
    a = attrs.read(t)  # user attributes and the bulk (nas/engine/attrs.py)
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
        "tokens_per_param": float(a["tokens_per_param"]), "seed": int(a["seed"]),
        "lr": _float(a.get("lr")) if a.get("lr") is not None else None, "tokens": int(a["tokens"]),
        "params": int(a["params"]), "params_nonembedding": int(a["params_nonembedding"]),
        "compute": 6.0 * int(a["params_nonembedding"]) * int(a["tokens"]),
        "val_loss": float(val),
        "bits_per_byte": _float(train.get("bits_per_byte")) if t.state == TrialState.COMPLETE else math.nan,
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
    return atomic_write(config.ladder_dir / RESULTS_FILE, lambda tmp: pq.write_table(table, tmp))


def _schema() -> Any:
    import pyarrow as pa

    f64, i64, s, b = pa.float64(), pa.int64(), pa.string(), pa.bool_()
    types = {
        "trial": i64, "state": s, "reason": s, "point": s, "design": s, "baseline": b, "design_id": i64, "size": s,
        "d_model": i64, "repeats": i64, "n_layers": i64, "tokens_per_param": f64, "seed": i64, "lr": f64, "tokens": i64,
        "params": i64, "params_nonembedding": i64, "compute": f64, "val_loss": f64, "bits_per_byte": f64,
        "diverged": b, "steps": i64, "curve_tokens": pa.list_(i64), "curve_val_loss": pa.list_(f64),
        "curve_train_loss": pa.list_(f64), "train_tokens_per_s": f64, "train_wall_s": f64,
        "kv_cache_bytes_per_token": i64, "flops_per_token": i64, "attention_params": i64, "device": s,
        "device_name": s, "threads": i64, "torch": s, "spec_hash": s, "spec_json": s,
    }
    assert tuple(types) == RESULT_COLUMNS
    return pa.schema([(name, typ) for name, typ in types.items()])

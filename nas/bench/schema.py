"""The table of a tabulated space: one row per design × seed, and how it is read back.

``table.parquet`` columns (units in the file's metadata, ``META_KEY``):

    design          int64    index of the design in the space's enumeration
    spec_hash       string   ArchSpec.hash; spec_json the whole design; params_json the
                             sampler's parameters that build it (JSON)
    seed            int64
    status          string   complete | infeasible | failed;  reason: string (null if complete)
    tokens          int64    training tokens the run used (whole steps)
    curve_tokens    list<int64>   tokens seen at each validation point (the same for every design)
    curve_val_loss  list<double>  validation loss at each point (nats/token)
    <objective>     double   one column per recorded objective (the table file's objectives and
                             every analytic cost), NaN where the run did not reach it
    train_wall_s, total_s    double, seconds

The metadata (JSON under ``META_KEY``) holds: ``schema_version``, ``name``, ``space`` (name and
options, to rebuild the space), ``objectives`` (the objective columns), ``directions`` and
``units`` (per objective), ``seeds``, ``budget_tokens``, ``designs`` (how many the space has),
``eval_tokens`` (the shared validation points).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

META_KEY = b"qkvnas.table"
SCHEMA_VERSION = 1
TABLE_FILE = "table.parquet"
COST_OBJECTIVES = ("params", "attention_params", "kv_cache_bytes_per_token", "flops_per_token", "flops_per_token_decode")
FIXED_COLUMNS = ("design", "spec_hash", "spec_json", "params_json", "seed", "status", "reason", "tokens",
                 "curve_tokens", "curve_val_loss", "train_wall_s", "total_s")


@dataclass(frozen=True)
class Table:
    """A table read back: its rows (dicts, columns as above) and its metadata."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    path: Path | None = None
    by_hash: dict[str, list[dict[str, Any]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_hash: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            by_hash.setdefault(row["spec_hash"], []).append(row)
        object.__setattr__(self, "by_hash", by_hash)

    @property
    def objectives(self) -> list[str]:
        return list(self.meta["objectives"])

    @property
    def directions(self) -> dict[str, str]:
        return dict(self.meta["directions"])

    @property
    def seeds(self) -> list[int]:
        return list(self.meta["seeds"])

    def seed_mean(self, objective: str) -> dict[str, float]:
        """spec hash → mean of ``objective`` over the design's complete runs (NaN if none)."""
        out = {}
        for h, rows in self.by_hash.items():
            values = [float(r[objective]) for r in rows if r["status"] == "complete" and math.isfinite(float(r[objective]))]
            out[h] = sum(values) / len(values) if values else math.nan
        return out

    def check_objectives(self, names: list[str] | tuple[str, ...]) -> None:
        missing = [n for n in names if n not in self.objectives]
        if missing:
            raise ValueError(f"the table has no {missing} (it recorded {self.objectives}); choose among those, "
                             "or tabulate again with them in the table file's objectives")


def read_table(path: str | Path) -> Table:
    """``table.parquet``, or the folder or name (``studies/<name>``) of a tabulation."""
    import pyarrow.parquet as pq

    file = resolve_table_path(path)
    try:
        table = pq.read_table(file)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{file} is not a readable Parquet table; give the table.parquet `qkvnas tabulate` "
                         "wrote") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{file} is not a qkvnas table (no {META_KEY.decode()} metadata); make one with `qkvnas tabulate`")
    meta = json.loads(raw)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{file} has table schema {meta.get('schema_version')}, this qkvnas reads {SCHEMA_VERSION}; "
                         "tabulate again")
    return Table(rows=table.to_pylist(), meta=meta, path=file)


def resolve_table_path(path: str | Path) -> Path:
    for candidate in (Path(path), Path(path) / TABLE_FILE, Path("studies") / str(path) / TABLE_FILE):
        if candidate.is_file():
            return candidate
    raise ValueError(f"no table at {str(path)!r}: give a table.parquet, its folder, or a tabulation's name "
                     f"(looked in studies/{path}/{TABLE_FILE}); make one with `qkvnas tabulate`")

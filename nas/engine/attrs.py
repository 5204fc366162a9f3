"""Where a trial's record lives in Optuna storage, and the one accessor that reads it back.

A finished trial's record (``nas.engine.record.tell_record``) is stored in two parts, both in the
study's own storage, so every storage (SQLite, a journal, PostgreSQL) and every machine that
reaches it reads the whole record, and ``optuna.copy_study`` copies it:

* **user attributes**, what ``optuna trials`` / ``optuna best-trials`` print and optuna-dashboard
  shows: short and readable, each value's JSON under ``INLINE_LIMIT`` characters (the dashboard
  cuts a non-string value at 1,024 into invalid JSON): ``status``, ``reason``, ``error`` (the
  last line of a traceback), ``spec_hash``, ``spec_json`` (a string, which the dashboard shows
  whole, even for a deep design), ``figures`` (the headline figures: the objective values the
  trial measured, its constraint values, parameters, KV bytes, tokens trained, time, device,
  noisy figures) and ``record``, a line that says where the rest is;
* **the bulk**, one trial system attribute ``BULK_KEY`` (a JSON object): the learning curve,
  the full measurement and hardware fingerprint, costs, training result, stability, probes,
  timings, the objective and constraint values (never-measured objectives as "inf"), the full
  traceback, a probe suite's row. Neither Optuna's CLI nor optuna-dashboard prints system
  attributes.

Why not files in the study folder or Optuna artifacts (``FileSystemArtifactStore``): both keep
the data on one machine's disk, while a PostgreSQL study's workers and readers need not share
one (an artifact's metadata is in the storage, its bytes are not), and ``copy_study`` copies
neither. The storage holds as much as before; only what the CLI and the dashboard print shrank.

Everything that reads a trial's record reads it through ``read(trial)``: the user attributes
with the bulk over them. Studies written before this layout keep the whole record in their
user attributes and have no bulk: ``read`` gives them as they are.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.common import jsonable
from nas.engine import compat

BULK_KEY = "qkvnas:record"  # the trial system attribute that holds the bulk of its record
ATTR_FIGURES = "figures"
ATTR_LINK = "record"  # where the bulk is, in words
INLINE_LIMIT = 800  # characters of a user attribute's JSON, at most (optuna-dashboard cuts at 1,024)
# Always in the bulk: the parts of a record that grow with the run (curves, repeats, probes, rows).
BULK = ("costs", "measure", "train", "curve", "stability", "probes", "hardware", "timings", "lr_sweep",
        "objective_values", "constraint_values", "error", "row")
FIGURE_DIGITS = 4  # significant digits of a float among the headline figures


def split(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A record's attributes (JSON-able) as (user attributes, bulk). A key in ``BULK``, or any
    value longer than ``INLINE_LIMIT`` as JSON, goes to the bulk; None values stay out of the
    user attributes (the bulk keeps them, so ``"train" in read(trial)`` means what it did)."""
    inline: dict[str, Any] = {}
    bulk: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in BULK or len(json.dumps(value)) > INLINE_LIMIT:
            bulk[key] = value
        elif value is not None:
            inline[key] = value
    if bulk.get("error"):
        inline["error"] = _last_line(str(bulk["error"]))
    figures = headline(attrs)
    if figures:
        inline[ATTR_FIGURES] = figures
    if bulk:
        inline[ATTR_LINK] = link_text(bulk)
    return inline, bulk


def write(study: optuna.Study, trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Store a running trial's record attributes: the user attributes, then the bulk."""
    inline, bulk = split(attrs)
    for key, value in inline.items():
        trial.set_user_attr(key, value)
    if bulk:
        compat.set_trial_system_attr(study, trial, BULK_KEY, bulk)


def copy(study: optuna.Study, source: FrozenTrial, trial: optuna.Trial, *, skip: tuple[str, ...] = ()) -> None:
    """Store ``source``'s record (less the keys in ``skip``) in a running trial, laid out as
    above whichever layout the source has (one written before keeps its bulk inline)."""
    record = {k: v for k, v in read(source).items() if k not in skip and k not in (ATTR_FIGURES, ATTR_LINK)}
    write(study, trial, record)


def system_attrs(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(user_attrs, system_attrs) for ``optuna.trial.create_trial`` of a trial added whole."""
    inline, bulk = split(attrs)
    return inline, ({BULK_KEY: bulk} if bulk else {})


def read(trial: FrozenTrial) -> dict[str, Any]:
    """Everything the trial's record holds: its user attributes with the bulk over them (the
    bulk has the full form of a key both have, such as ``error``)."""
    bulk = trial.system_attrs.get(BULK_KEY)
    return trial.user_attrs | bulk if isinstance(bulk, dict) else dict(trial.user_attrs)


def bulk_of(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's bulk as stored ({} for a trial written before this layout)."""
    bulk = trial.system_attrs.get(BULK_KEY)
    return dict(bulk) if isinstance(bulk, dict) else {}


def objective_values(trial: FrozenTrial, names: list[str]) -> dict[str, float]:
    """The objective values the trial measured, ±inf for one it never reached (an infeasible
    design stopped before it): its ``objective_values``, not the finite stand-in told to
    Optuna (nas/engine/record.py); a trial without them gives its Optuna values."""
    stored = read(trial).get("objective_values")
    if isinstance(stored, dict) and stored:
        return {name: float(stored[name]) for name in names if name in stored}
    return dict(zip(names, trial.values or []))


def constraint_values(trial: FrozenTrial) -> dict[str, float]:
    """Constraint name → value (> 0 violated). The names are in the trial's ``constraint_values``
    (Optuna's list attribute numbers them; nas/engine/compat.py); a trial written before keeps
    them in Optuna's ``constraints:<name>`` attributes."""
    stored = read(trial).get("constraint_values")
    if isinstance(stored, dict) and len(stored) == len(trial.constraints):
        return {str(k): float(v) for k, v in stored.items()}
    return dict(trial.constraints)


def headline(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The few figures a person looks at first; {} when the record has none (a probe run)."""
    out: dict[str, Any] = {}
    measured = {k: v for k, v in (attrs.get("objective_values") or {}).items() if _finite(v)}
    if measured:
        out["objectives"] = {k: _round(v) for k, v in measured.items()}
    if attrs.get("constraint_values"):
        out["constraints"] = {k: _round(v) for k, v in attrs["constraint_values"].items()}
    costs, train = attrs.get("costs") or {}, attrs.get("train") or {}
    timings, hardware = attrs.get("timings") or {}, attrs.get("hardware") or {}
    for key, value in (("params", costs.get("params")), ("kv_cache_bytes_per_token", costs.get("kv_cache_bytes_per_token")),
                       ("tokens", train.get("tokens_seen")), ("steps", train.get("steps")),
                       ("total_s", timings.get("total_s")), ("device", hardware.get("device_name") or hardware.get("device"))):
        if value is not None and key not in measured:  # an objective's value is there already
            out[key] = _round(value)
    noisy = (attrs.get("measure") or {}).get("noisy") if isinstance(attrs.get("measure"), dict) else None
    if noisy:
        out["noisy"] = sorted(noisy)
    while out and len(json.dumps(out)) > INLINE_LIMIT:  # many objectives or constraints: the rest is in the bulk
        out.popitem()
    return out


def link_text(bulk: Mapping[str, Any]) -> str:
    size = len(json.dumps(bulk))
    return (f"system attr {BULK_KEY!r} ({size:,} bytes): {', '.join(sorted(k for k in bulk if bulk[k] is not None))}; "
            "qkvnas reads it with nas.engine.attrs.read")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:300]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{FIGURE_DIGITS}g}") if math.isfinite(value) else jsonable(value)
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return value
    return value

"""How a study reads on screen: the current Pareto front as a small table, a design's short
label, the counts line, and the JSON summary of ``qkvnas status --json``."""
from __future__ import annotations

import json
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.engine.record import ATTR_SPEC_HASH, ATTR_SPEC_JSON, Counts, counts, pareto_front

FRONT_ROWS = 8  # rows of the front table; the rest is summarised


def fmt_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if 1000 <= abs(value) < 1e12:
        return f"{value:,.0f}"
    if value.is_integer():
        return str(int(value))
    return f"{value:.4g}"


def design_label(trial: FrozenTrial) -> str:
    """The design, short, in the grammar of ``search_spaces.variants``: 'q_kv+mqa ×2' or
    'qkv+gqa2 | qkv_single+mqa' (layers in order, equal neighbours merged)."""
    text = trial.user_attrs.get(ATTR_SPEC_JSON)
    if not text:
        return " ".join(f"{k}={v}" for k, v in trial.params.items())
    spec = json.loads(text)
    names = [_layer_label(layer, spec["n_heads"]) for layer in spec["layers"]]
    runs: list[list[Any]] = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return " | ".join(name if n == 1 else f"{name} ×{n}" for name, n in runs)


def _layer_label(layer: dict[str, Any], n_heads: int) -> str:
    if layer["attn"] != "attention":
        return "noattn" if layer["attn"] == "none" else "mixer"
    parts = [layer["proj"]]
    g = layer["n_kv_heads"]
    if g != n_heads:
        parts.append("mqa" if g == 1 else f"gqa{g}")
    for key, tag in (("qk_rank", "lowrank"), ("kv_latent", "latent"), ("window", "window"), ("kv_from", "kv_from")):
        if layer.get(key) is not None:
            parts.append(f"{tag}{layer[key]}")
    parts += [tag for key, tag in (("asym_pos", "2d"), ("dconv", "dconv")) if layer.get(key)]
    return "+".join(parts)


def front_table(study: optuna.Study, *, rows: int = FRONT_ROWS) -> str:
    """The current feasible Pareto front, one line per trial, objectives in columns."""
    front = pareto_front(study)
    if not front:
        return "  (no feasible completed trial yet)"
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    arrows = ["↓" if d == optuna.study.StudyDirection.MINIMIZE else "↑" for d in study.directions]
    header = ["trial"] + [f"{n} {a}" for n, a in zip(names, arrows)] + ["design"]
    designs = one_per_design(front)
    body = [[f"{t.number}" + (f" (+{n - 1} same)" if n > 1 else "")] + [fmt_value(v) for v in t.values]
            + [design_label(t)] for t, n in designs[:rows]]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + body]
    if len(designs) > rows:
        lines.append(f"  ... and {len(designs) - rows} more designs on the front")
    return "\n".join(lines)


def one_per_design(front: list[FrozenTrial]) -> list[tuple[FrozenTrial, int]]:
    """A design the sampler proposed again appears once, with how many trials share it."""
    first: dict[str, FrozenTrial] = {}
    seen: dict[str, int] = {}
    for trial in front:
        key = trial.user_attrs.get(ATTR_SPEC_HASH) or f"trial-{trial.number}"
        first.setdefault(key, trial)
        seen[key] = seen.get(key, 0) + 1
    return [(trial, seen[key]) for key, trial in first.items()]


def summary_line(c: Counts, target: int) -> str:
    parts = [f"{c.done}/{target} trials done", f"{c.complete} complete"]
    if c.infeasible:
        parts.append(f"{c.infeasible} infeasible")
    if c.pruned:
        parts.append(f"{c.pruned} stopped early")
    parts.append(f"{c.failed} failed")
    if c.stale:
        parts.append(f"{c.stale} interrupted (requeued)")
    if c.running:
        parts.append(f"{c.running} running")
    if c.waiting:
        parts.append(f"{c.waiting} queued")
    return ", ".join(parts)


def stopping_text(summary: dict[str, Any]) -> str:
    """``stopping.stopping_summary`` in a line: how many stopped at each rung, tokens saved."""
    rungs = ", ".join(f"rung {r}: {n}" for r, n in summary["stopped_by_rung"].items())
    return (f"{summary['stopped']} stopped early ({rungs or 'none'}), {summary['tokens_saved_frac']:.0%} of the "
            f"full-budget training tokens saved ({summary['tokens_trained']:,} of {summary['tokens_full_budget']:,} trained)")


def describe(study: optuna.Study, target: int | None) -> dict[str, Any]:
    """A JSON-able summary of a study (for ``qkvnas status --json``)."""
    c = counts(study)
    return {
        "study": study.study_name,
        "objectives": study.metric_names,
        "target": target,
        "complete": c.complete,
        "infeasible": c.infeasible,
        "failed": c.failed,
        "interrupted": c.stale,
        "running": c.running,
        "stopped_early": c.pruned,
        "queued": c.waiting,
        "front": [{"trial": t.number, "values": dict(zip(study.metric_names or [], t.values)),
                   "params": t.params, "spec_hash": t.user_attrs.get(ATTR_SPEC_HASH)} for t in pareto_front(study)],
    }

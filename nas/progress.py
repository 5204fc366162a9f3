"""What a user sees while a study runs, and what ``qkvnas status`` prints: trials done against
the target, failures, the current Pareto front as a small table, and the time left."""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial

from nas.study import (
    ATTR_DUPLICATE_OF, ATTR_REASON, ATTR_SPEC_HASH, ATTR_SPEC_JSON, ATTR_STATUS, Counts, counts, pareto_front,
)

FRONT_ROWS = 8  # rows of the front table; the rest is summarised
FRONT_EVERY = 4  # print the front table after every this many finished trials


def fmt_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if 1000 <= abs(value) < 1e12:
        return f"{value:,.0f}"
    if value.is_integer():
        return str(int(value))
    return f"{value:.4g}"


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


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
    designs = _one_per_design(front)
    body = [[f"{t.number}" + (f" (+{n - 1} same)" if n > 1 else "")] + [fmt_value(v) for v in t.values]
            + [design_label(t)] for t, n in designs[:rows]]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + body]
    if len(designs) > rows:
        lines.append(f"  ... and {len(designs) - rows} more designs on the front")
    return "\n".join(lines)


def _one_per_design(front: list[FrozenTrial]) -> list[tuple[FrozenTrial, int]]:
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
    parts.append(f"{c.failed} failed")
    if c.stale:
        parts.append(f"{c.stale} interrupted (requeued)")
    if c.running:
        parts.append(f"{c.running} running")
    if c.waiting:
        parts.append(f"{c.waiting} queued")
    return ", ".join(parts)


class Progress:
    """Prints one line per finished trial, the front every few trials, and an ETA from the
    durations of this run's trials (a resumed study does not count earlier runs)."""

    def __init__(self, study: optuna.Study, target: int, *, concurrency: int, out: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.study, self.target, self.concurrency = study, target, concurrency
        self.out = out or sys.stdout
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.finished_here = 0
        self.durations: list[float] = []

    def start(self) -> None:
        c = counts(self.study)
        self._print(f"study {self.study.study_name!r}: {summary_line(c, self.target)}; "
                    f"running {max(0, self.target - c.done)} more, {self.concurrency} at a time")

    def trial_finished(self, trial: FrozenTrial) -> None:
        self.finished_here += 1
        if trial.duration is not None:
            self.durations.append(trial.duration.total_seconds())
        c = counts(self.study)
        left = max(0, self.target - c.done)
        # From the trials' own durations: Ray's start-up is not a cost every trial pays again.
        eta = sum(self.durations) / len(self.durations) * left / self.concurrency if self.durations else math.nan
        self._print(f"[{c.done}/{self.target}] trial {trial.number} {self._outcome(trial)}  "
                    f"| failed {c.failed} | front {len(_one_per_design(pareto_front(self.study)))} designs "
                    f"| left ~{fmt_duration(eta)}")
        if self.finished_here % FRONT_EVERY == 0 and left:
            self._print("current front:\n" + front_table(self.study))

    def finish(self) -> None:
        c = counts(self.study)
        self._print(f"done in {fmt_duration(time.monotonic() - self.t0)}: {summary_line(c, self.target)}")
        self._print("Pareto front:\n" + front_table(self.study))

    def note(self, text: str) -> None:
        self._print(text)

    def _outcome(self, trial: FrozenTrial) -> str:
        status = trial.user_attrs.get(ATTR_STATUS, trial.state.name.lower())
        label = design_label(trial)
        if trial.state == optuna.trial.TrialState.FAIL:
            return f"failed ({trial.user_attrs.get(ATTR_REASON, 'no reason recorded')}) {label}"
        names = self.study.metric_names or []
        values = " ".join(f"{n}={fmt_value(v)}" for n, v in zip(names, trial.values or []))
        source = trial.user_attrs.get(ATTR_DUPLICATE_OF)
        dup = f" (same design as trial {source})" if source is not None else ""
        return f"{status}{dup} {label}: {values}"

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.out, flush=True)


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
        "queued": c.waiting,
        "front": [{"trial": t.number, "values": dict(zip(study.metric_names or [], t.values)),
                   "params": t.params, "spec_hash": t.user_attrs.get(ATTR_SPEC_HASH)} for t in pareto_front(study)],
    }

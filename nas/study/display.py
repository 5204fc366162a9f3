"""How a study reads on screen: the current Pareto front as a small table, a design's short
label, the counts line, the JSON summary of ``qkvnas status --json``, and the note that says what
a study is (a study user attribute, which optuna-dashboard shows on the study's page)."""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from nas.engine.attrs import BULK_KEY, read as read_attrs  # not the nas.engine package: progress imports this module
from nas.engine.record import ATTR_REMEASURE_OF, ATTR_SPEC_HASH, ATTR_SPEC_JSON, Counts, counts, current, pareto_front

if TYPE_CHECKING:
    from nas.config import StudyConfig

ATTR_DESCRIPTION = "description"  # the study user attribute that says what the study is
FRONT_ROWS = 8  # rows of the front table; the rest is summarised
NOISY_ROWS = 8  # noisy trials listed by qkvnas status; the rest is counted


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
    return spec_label(text)


def spec_label(text: str | None) -> str:
    """``design_label`` of a spec's JSON; '' without one."""
    if not text:
        return ""
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
    body = [[f"{t.number}" + (f" (+{n - 1} same)" if n > 1 else "") + _marks(t)] + [fmt_value(v) for v in t.values]
            + [design_label(t)] for t, n in designs[:rows]]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + body]
    if len(designs) > rows:
        lines.append(f"  ... and {len(designs) - rows} more designs on the front")
    return "\n".join(lines)


def _marks(trial: FrozenTrial) -> str:
    remeasured = trial.user_attrs.get(ATTR_REMEASURE_OF)
    return (f" (remeasured {remeasured})" if remeasured is not None else "") + (" noisy" if noisy_figures(trial) else "")


def noisy_figures(trial: FrozenTrial) -> dict[str, str]:
    """The trial's measured figures that neighbours spoiled, and why (nas/measure/noise.py); {}
    when its measurement was quiet, or made before qkvnas checked, or never made."""
    measured = read_attrs(trial).get("measure")
    return dict(measured.get("noisy") or {}) if isinstance(measured, dict) else {}


def noise_note(trial: FrozenTrial) -> str | None:
    """'noisy: train_tokens_per_s spread 112% > limit 25% (+2 more)', or None for a quiet trial."""
    return noise_text(noisy_figures(trial)) or None


def noise_text(noisy: dict[str, str]) -> str:
    """The first noisy figure and why, and how many more; '' when none is."""
    if not noisy:
        return ""
    name, reason = next(iter(noisy.items()))
    return f"noisy: {name} {reason}" + (f" (+{len(noisy) - 1} more)" if len(noisy) > 1 else "")


def noisy_lines(study: optuna.Study) -> list[str]:
    """What ``qkvnas status`` says of noisy measurements: which trials, why, and the command that
    measures them again; [] when there are none."""
    noisy = [t for t in current(study.get_trials(deepcopy=False)) if noisy_figures(t)]
    if not noisy:
        return []
    lines = [f"noisy measurements: {len(noisy)} trial(s), measure them again with: qkvnas remeasure {study.study_name}"]
    lines += [f"  trial {t.number}: {noise_note(t)}" for t in noisy[:NOISY_ROWS]]
    if len(noisy) > NOISY_ROWS:
        lines.append(f"  ... and {len(noisy) - NOISY_ROWS} more")
    return lines


def front_count(front: list[FrozenTrial]) -> str:
    """The size of a front, in designs: '7 designs', or '7 designs (11 trials)' where the
    sampler proposed some design again. Every place that counts a front says it this way."""
    return count_text(len(one_per_design(front)), len(front))


def count_text(designs: int, trials: int) -> str:
    text = f"{designs} design{'' if designs == 1 else 's'}"
    return text if designs == trials else f"{text} ({trials} trials)"


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
    if c.surplus:
        parts.append(f"{c.surplus} not run (other workers filled the target)")
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
        "not_run_target_filled": c.surplus,
        "running": c.running,
        "stopped_early": c.pruned,
        "queued": c.waiting,
        "front": [{"trial": t.number, "values": dict(zip(study.metric_names or [], t.values)),
                   "params": t.params, "spec_hash": t.user_attrs.get(ATTR_SPEC_HASH), "noisy": bool(noisy_figures(t))}
                  for t in pareto_front(study)],
        "noisy": {str(t.number): noisy_figures(t) for t in current(study.get_trials(deepcopy=False)) if noisy_figures(t)},
    }


def study_note(config: StudyConfig) -> str:
    """What the study is, in a few lines: the study's ``description`` attribute."""
    from objectives import get_objective

    goals = ", ".join(f"{n} ({'lower' if get_objective(n).direction == 'minimize' else 'higher'} is better)"
                      for n in config.objectives)
    limits = ", ".join(f"{k} = {fmt_value(float(v))}" for k, v in config.constraints.items())
    return (f"qkvnas search study {config.name!r}: {config.trials} trials of designs from the {config.space.name!r} "
            f"space, each trained on {config.budget.tokens:,} tokens; sampler {config.sampler.name}. "
            f"Objectives: {goals}. "
            + (f"Constraints: {limits} (a design that breaks one is COMPLETE with status 'infeasible' and a constraint > 0; "
               "an objective it never reached is told as the hypervolume reference point). " if limits else "")
            + f"Each trial: status, reason, figures and spec_json in its user attributes; curve, measurement, hardware "
              f"and costs in its system attribute {BULK_KEY!r}. The whole config: the 'config' attribute.")

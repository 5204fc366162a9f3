"""The front as a figure: ``plot_front(study, png)`` writes ``pareto.png`` and ``pareto.svg``
beside it. Feasible trials in grey, infeasible ones as crosses, the front in colour with each
design's short hash beside its point (``specs/<hash>.json``); one panel per pair of objectives,
each axis with its unit (objectives/registry.py). Axes spanning more than 100× are logarithmic."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.engine import attrs
from nas.engine.record import ATTR_SPEC_HASH, current, is_feasible, pareto_front
from nas.export_schema import objective_info
from nas.study.display import front_count

SHORT_HASH = 6  # characters of a spec hash beside a front point


def plot_front(study: optuna.Study, path: Path) -> list[Path]:
    """Write the figure as ``path`` (PNG) and the same name with ``.svg``; returns both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = objective_info(study)
    names = list(info)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    complete = current(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    front = pareto_front(study)
    for ax, (i, j) in zip(axes.flat, pairs):
        _panel(ax, complete, front, (i, j), names, info)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle(f"{study.study_name}: Pareto front of {front_count(front)}, of {len(complete)} completed trials")
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # room for the title
    svg = path.with_suffix(".svg")
    fig.savefig(path, dpi=110, format="png")
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, editable
        fig.savefig(svg, format="svg")
    plt.close(fig)
    return [path, svg]


def axis_label(name: str, info: dict[str, Any]) -> str:
    """'kv_cache_bytes_per_token [bytes/token]' over '(lower is better)'."""
    unit = f" [{info['unit']}]" if info.get("unit") else ""
    return f"{name}{unit}\n({'lower' if info['direction'] == 'minimize' else 'higher'} is better)"


def _panel(ax: Any, complete: list[FrozenTrial], front: list[FrozenTrial], pair: tuple[int, int],
           names: list[str], info: dict[str, dict[str, Any]]) -> None:
    i, j = pair

    def points(trials: list[FrozenTrial]) -> tuple[list[float], list[float]]:
        # The values measured (nas/engine/attrs.py): not the stand-in an infeasible design was told
        # for one it never reached, which would sit at the study's reference point.
        measured = [attrs.objective_values(t, names) for t in trials]
        kept = [m for m in measured if _shown(m.get(names[i], math.inf)) and _shown(m.get(names[j], math.inf))]
        return [m[names[i]] for m in kept], [m[names[j]] for m in kept]

    feasible = points([t for t in complete if is_feasible(t)])
    infeasible = points([t for t in complete if not is_feasible(t)])
    fx, fy = points(front)
    if feasible[0]:  # a series is drawn, and named in the legend, only when it has points
        ax.scatter(*feasible, s=18, c="0.7", label="feasible")
    if infeasible[0]:
        ax.scatter(*infeasible, s=18, marker="x", c="tab:red", alpha=0.5, label="infeasible")
    if fx:
        ax.scatter(fx, fy, s=40, c="tab:blue", edgecolors="k", zorder=3, label="Pareto front")
    _hashes(ax, front, i, j)
    signs = [1.0 if info[names[k]]["direction"] == "minimize" else -1.0 for k in (i, j)]
    px, py = _front_2d(*feasible, signs)
    if len(names) > 2 and px:  # with more than two objectives the study's front is wider than this pair's
        ax.plot(px, py, c="tab:blue", lw=1, drawstyle="steps-post", label="front of this pair")
    elif px:
        ax.plot(px, py, c="tab:blue", lw=1, drawstyle="steps-post")
    for values, setter in ((fx + feasible[0], ax.set_xscale), (fy + feasible[1], ax.set_yscale)):
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 100:
            setter("log")
    ax.set_xlabel(axis_label(names[i], info[names[i]]))
    ax.set_ylabel(axis_label(names[j], info[names[j]]))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _hashes(ax: Any, front: list[FrozenTrial], i: int, j: int) -> None:
    """Each front design's short hash beside its point, once per design."""
    seen: set[str] = set()
    for trial in front:
        digest = str(trial.user_attrs.get(ATTR_SPEC_HASH) or f"trial {trial.number}")
        if digest in seen or not (_shown(trial.values[i]) and _shown(trial.values[j])):
            continue
        seen.add(digest)
        ax.annotate(digest[:SHORT_HASH], (trial.values[i], trial.values[j]), xytext=(4, 4), textcoords="offset points",
                    fontsize=6, color="tab:blue")


def _shown(value: float) -> bool:
    """A value a plot can place: finite and not the stand-in told for one never reached."""
    return math.isfinite(value) and abs(value) < 1e300


def _front_2d(xs: list[float], ys: list[float], signs: list[float]) -> tuple[list[float], list[float]]:
    """The non-dominated points of one pair of objectives, ordered along x."""
    order = sorted(range(len(xs)), key=lambda k: (signs[0] * xs[k], signs[1] * ys[k]))
    kept: list[int] = []
    for k in order:
        if not kept or signs[1] * ys[k] < signs[1] * ys[kept[-1]]:
            kept.append(k)
    kept.sort(key=lambda k: xs[k])
    return [xs[k] for k in kept], [ys[k] for k in kept]

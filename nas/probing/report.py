"""A probe suite's Markdown report: per-cell success fractions first, the means after.

Sections: for each task, a cell × design table of ``solved/n [Wilson 95%] · mean · plateau``;
accuracy against budget (the epochs scored along each run); the mean ± std per design and task
with the grand mean beside it (and a paper's published averages, labelled as theirs); with a
learning-rate sweep, each design at its own best learning rate beside the shared one and the
ranking's stability; the grid cells not run here, with the command that runs them.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from nas.probing.job import point_text
from nas.probing.outcomes import Cell, cell_text, cells
from nas.probing.suite_config import SuiteConfig
from nas.sweep import LR, best_rows, finite_mean, ranking_stability

Rows = list[dict[str, Any]]


def shared_rows(config: SuiteConfig, rows: Rows) -> Rows:
    """The runs at each task's own (shared) learning rate: all of them without a sweep."""
    if config.lr_sweep is None:
        return list(rows)
    lr_of = {e.label: e.budget.lr for e in config.tasks}
    return [r for r in rows if r["task"] not in lr_of or math.isclose(float(r[LR]), lr_of[r["task"]])]


def to_markdown(config: SuiteConfig, table: Rows, rows: Rows, wall_s: float, expected: int | None = None) -> str:
    shared = shared_rows(config, rows)
    found = cells(shared, config.success_threshold)
    lines = [f"# {config.name}", "", config.description.strip(), ""]
    if expected is not None and len(rows) < expected:
        lines += [f"**Incomplete: {len(rows)} of {expected} runs finished**; cells below hold the seeds run so far.", ""]
    lines += _cell_tables(config, found)
    lines += _budget_tables(config, found)
    lines += _summary(config, table, shared)
    if config.lr_sweep is not None:
        lines += _sweep(config, rows)
    lines += _not_run(config)
    n_probe = sum(r["metric"] == "accuracy" for r in rows)
    # The runs' own times: a suite stopped and continued (or tabulated with --report) spans
    # several invocations, and this one's wall time alone says nothing of the suite's cost.
    run_s, cpu_s = (math.fsum(v for r in rows if isinstance(v := r.get(k), float) and math.isfinite(v))
                    for k in ("wall_s", "cpu_s"))
    lines += ["", f"{n_probe} probe runs, {len(rows) - n_probe} LM runs: {run_s:.0f} s of run time in all "
              f"({cpu_s:.0f} CPU-s); this invocation took {wall_s:.0f} s."]
    return "\n".join(lines) + "\n"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]


def _cell_tables(config: SuiteConfig, found: list[Cell]) -> list[str]:
    t = config.success_threshold
    out = ["## Solved per cell", "",
           f"Each cell: runs with test accuracy > {t:g} of the seeds run [Wilson 95% interval] · mean accuracy · "
           "plateau (the mean accuracy of the unsolved runs)."]
    by_key = {(c.variant, c.task, point_text(c.point)): c for c in found}
    for entry in config.tasks:
        points = list(dict.fromkeys(point_text(c.point) for c in found if c.task == entry.label))
        if not points:
            continue
        note = _baseline_note([c for c in found if c.task == entry.label])
        body = [[p] + [cell_text(by_key[(v, entry.label, p)]) if (v, entry.label, p) in by_key else "–"
                       for v in config.variants] for p in points]
        out += ["", f"### {entry.label}{note}", ""] + _table(["cell", *config.variants], body)
    return out


def _baseline_note(found: list[Cell]) -> str:
    """The most-frequent-digit answer's accuracy, per sequence length: it falls with length
    (0.24 at 16 digits, 0.16 at 64), so one mean over lengths would hide that a long-sequence
    plateau sits at chance."""
    by_length: dict[int | None, list[float]] = defaultdict(list)
    for c in found:
        if c.baseline is not None:
            by_length[c.point.get("length")].append(c.baseline)
    if not by_length:
        return ""
    if len(by_length) == 1:
        return f" (most-frequent-digit answer: {np.mean(next(iter(by_length.values()))):.2f})"
    parts = ", ".join(f"{np.mean(v):.2f} at length {k}" for k, v in by_length.items())
    return f" (most-frequent-digit answer: {parts})"


def _budget_tables(config: SuiteConfig, found: list[Cell]) -> list[str]:
    epochs = sorted({e for c in found for e in c.by_epoch}, key=int)
    if len(epochs) < 2:
        return []
    out = ["", "## Accuracy against budget", "",
           "Mean test accuracy (fraction of runs solved) after each epoch, over the cells run. The earlier epochs "
           "are read along the full run's schedule, not from runs with a shorter schedule of their own."]
    for entry in config.tasks:
        body = []
        for name in config.variants:
            mine = [c for c in found if c.variant == name and c.task == entry.label]
            body.append([name] + [_epoch_text([c.by_epoch[e] for c in mine if e in c.by_epoch]) for e in epochs])
        out += ["", f"### {entry.label}", ""] + _table(["variant", *[f"epoch {e}" for e in epochs]], body)
    return out


def _epoch_text(points: list[tuple[float, float]]) -> str:
    if not points:
        return "–"
    return f"{np.mean([p[0] for p in points]):.3f} ({np.mean([p[1] for p in points]):.2f})"


def _summary(config: SuiteConfig, table: Rows, shared: Rows) -> list[str]:
    columns = list(dict.fromkeys(r["task"] for r in table))
    cell = {(r["variant"], r["task"]): r for r in table}
    grand = _grand_means(shared)
    pub = config.published
    head = ["variant", *columns, "grand mean"] + (["paper (published)"] if pub else [])
    body = [[name] + [_mean_text(cell.get((name, c))) for c in columns]
            + [f"{grand[name]:.3f}" if name in grand else "–"]
            + ([f"{pub.values[name]:.3f}" if name in pub.values else "–"] if pub else []) for name in config.variants]
    axes = ", ".join(f"{k} {list(v)}" for k, v in config.grid.axes().items())
    ran = len(config.run_points())
    skipped = len(config.grid_points()) - ran
    scope = f"the {ran} grid points run here" + (f" (of the {config.grid.mode} {axes}; the {skipped} not run are "
                                                  "listed at the end)" if skipped else f" ({config.grid.mode}: {axes})")
    out = ["", "## Means", "", f"Mean ± std of test accuracy over {scope} and their seeds; "
           "the grand mean averages every probe run of a design, cells at chance and cells at 1.0 alike, so read "
           "it beside the per-cell tables above."]
    if pub:
        out.append(f"The last column, paper (published), is not ours: {pub.label}.")
    return out + [""] + _table(head, body)


def _grand_means(rows: Rows) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "accuracy" and math.isfinite(float(r["value"])):
            values[r["variant"]].append(float(r["value"]))
    return {k: float(np.mean(v)) for k, v in values.items()}


def _mean_text(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    text = f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    return text + (f" ({entry['n_failed']} failed)" if entry["n_failed"] else "")


def _sweep(config: SuiteConfig, rows: Rows) -> list[str]:
    assert config.lr_sweep is not None
    probe = [r for r in rows if r["metric"] == "accuracy"]
    best = best_rows(probe, ["variant", "task"], "value", maximize=True)
    shared = shared_rows(config, probe)
    body = []
    for name in config.variants:
        row = [name]
        for entry in config.tasks:
            at_best = [r for r in best if r["variant"] == name and r["task"] == entry.label]
            at_shared = [r["value"] for r in shared if r["variant"] == name and r["task"] == entry.label]
            lr = f"{at_best[0][LR]:g}" if at_best else "–"
            row.append(f"{finite_mean([r['value'] for r in at_best]):.3f} @ {lr} (shared {finite_mean(at_shared):.3f})")
        body.append(row)
    stab = ranking_stability(probe, "variant", "value", maximize=True)
    taus = ", ".join(f"lr {k}: τ {v:.2f}" for k, v in stab.tau.items())
    return (["", "## Learning-rate sweep", "",
             f"Each design at its own best learning rate of {list(config.lr_sweep.values)} (per task, by mean accuracy), "
             "beside its accuracy at the shared one. Ranking by mean accuracy over every task: at each design's best "
             f"lr {' > '.join(map(str, stab.orders['best']))}; Kendall's τ of each lr's ranking against it: {taus}; "
             f"the same best design at {stab.same_winner:.0%} of the learning rates.", ""]
            + _table(["variant", *[e.label for e in config.tasks]], body))


def _not_run(config: SuiteConfig) -> list[str]:
    skipped = [p for p in config.grid_points() if config.is_not_run(p)]
    if not skipped:
        return []
    cells_text = "; ".join(point_text(p) for p in skipped)
    out = ["", "## Not run here", "", f"{len(skipped)} grid cell(s) of the paper's grid were not run: {cells_text}."]
    if config.not_run_command:
        out.append(f"Run them where they fit with `{config.not_run_command}`.")
    return out


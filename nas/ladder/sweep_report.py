"""The learning-rate sweep section of a ladder's report.

Per (size, budget) cell, each design's gap to the baseline (mean validation loss over seeds,
design − baseline, nats/token) at the shared learning rate and with every design, the baseline
included, at its own best learning rate of the sweep; then how stable the ranking of designs is
across the sweep. The rest of the report reads the shared learning rate's runs only.
"""
from __future__ import annotations

import math
from typing import Any

from nas.ladder.config import LadderConfig
from nas.sweep import LR, best_lr, lr_means, ranking_stability

Rows = list[dict[str, Any]]
CELL = ("size", "tokens_per_param")


def shared_lr_rows(config: LadderConfig, rows: Rows) -> Rows:
    """The runs at the budget's learning rate (all of them when there is no sweep)."""
    if config.lr_sweep is None:
        return rows
    return [r for r in rows if r.get(LR) is None or math.isclose(r[LR], config.budget.lr)]


def sweep_section(config: LadderConfig, rows: Rows) -> str:
    if config.lr_sweep is None:
        return ""
    done = [r for r in rows if r["state"] == "complete" and math.isfinite(r["val_loss"]) and r.get(LR) is not None]
    if not done:
        return "## Learning-rate sweep\n\nNo sweep run has finished yet.\n"
    baseline = next((r["design"] for r in done if r["baseline"]), None)
    means = lr_means(done, ["design", *CELL], "val_loss")
    best = best_lr(done, ["design", *CELL], "val_loss", maximize=False)
    shared = config.budget.lr
    designs = list(dict.fromkeys(r["design"] for r in sorted(done, key=lambda r: not r["baseline"])))
    cells = list(dict.fromkeys((r["size"], r["tokens_per_param"]) for r in sorted(done, key=lambda r: r["compute"])))
    head = ["size", "tokens/param"] + [f"{d}: best lr" for d in designs] + [
        f"{d} gap @ shared {shared:g} / @ best" for d in designs if d != baseline]
    lines = ["## Learning-rate sweep", "",
             f"Every design at learning rates {list(config.lr_sweep.values)}. Gap: mean val loss over seeds, design − "
             f"baseline `{baseline}` (nats/token), at the shared lr {shared:g} and with each design and the baseline at "
             "its own best lr (the lowest mean val loss of the cell). A gap that shrinks at the best lr was partly the "
             "shared learning rate's.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        row = [cell[0], f"{cell[1]:g}"] + [_lr_text(best.get((d, *cell))) for d in designs]
        for d in designs:
            if d == baseline or baseline is None:
                continue
            mine, base = means.get((d, *cell), {}), means.get((baseline, *cell), {})
            at_shared = mine.get(shared, math.nan) - base.get(shared, math.nan)
            at_best = _best(mine) - _best(base)
            row.append(f"{at_shared:+.4f} / {at_best:+.4f}")
        lines.append("| " + " | ".join(row) + " |")
    stab = ranking_stability(done, "design", "val_loss", maximize=False)
    taus = ", ".join(f"lr {k}: τ {v:.2f}" for k, v in stab.tau.items() if math.isfinite(v))
    lines += ["", f"Ranking by mean val loss over every cell (best first): at each design's best lr "
              f"{' < '.join(map(str, stab.orders['best']))}. Kendall's τ of each lr's ranking against it: "
              f"{taus or 'n/a'}; the same best design at {stab.same_winner:.0%} of the learning rates.", ""]
    return "\n".join(lines)


def _best(by_lr: dict[float, float]) -> float:
    finite = [v for v in by_lr.values() if math.isfinite(v)]
    return min(finite) if finite else math.nan


def _lr_text(lr: float | None) -> str:
    return "n/a" if lr is None else f"{lr:g}"

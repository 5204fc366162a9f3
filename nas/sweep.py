"""Learning-rate sweeps: a ranking of designs that does not hinge on one shared learning rate.

A design can win or lose a comparison only because the shared learning rate suits the baseline.
``[lr_sweep] values = [1e-3, 3e-3, 1e-2]`` in a probe suite or a ladder trains every design at
each value (the cheapest runs first, so an interrupted sweep has its cheap cells). The reports
then give each design at its own best learning rate (``best_rows``) beside the shared one, and
how stable the ranking of designs is across the sweep (``ranking_stability``).

Everything here works on result rows (dicts with a design column, an ``lr`` column and a
metric), so suites and ladders share it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nas.config.sweep import LRSweep

LR = "lr"  # the rows' learning-rate column
__all__ = ["LR", "LRSweep", "Stability", "best_lr", "best_rows", "finite_mean", "kendall_tau", "lr_means",
           "ranking_stability"]


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values; NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def lr_means(rows: Sequence[dict[str, Any]], group: Sequence[str], metric: str) -> dict[tuple, dict[float, float]]:
    """Mean ``metric`` (finite values; NaN when none) per group and learning rate."""
    cells: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        cells[tuple(row[k] for k in group)][float(row[LR])].append(float(row[metric]))
    return {key: {lr: finite_mean(values) for lr, values in by_lr.items()} for key, by_lr in cells.items()}


def best_lr(rows: Sequence[dict[str, Any]], group: Sequence[str], metric: str, *,
            maximize: bool) -> dict[tuple, float]:
    """Each group's learning rate with the best mean metric (a group none of whose runs gave a
    finite value is left out). Ties go to the smaller learning rate."""
    out = {}
    for key, by_lr in lr_means(rows, group, metric).items():
        scored = [(lr, m) for lr, m in sorted(by_lr.items()) if math.isfinite(m)]
        if scored:
            out[key] = (max if maximize else min)(scored, key=lambda item: item[1])[0]
    return out


def best_rows(rows: Sequence[dict[str, Any]], group: Sequence[str], metric: str, *,
              maximize: bool) -> list[dict[str, Any]]:
    """The rows of each group's best learning rate."""
    best = best_lr(rows, group, metric, maximize=maximize)
    return [r for r in rows if best.get(tuple(r[k] for k in group)) == float(r[LR])]


@dataclass(frozen=True)
class Stability:
    """How the ranking of designs moves across a sweep. ``orders``: designs best first at each
    learning rate, and at each design's own best (key ``"best"``); ``tau``: Kendall's τ between
    each learning rate's order and the best-lr order (1 = the same order); ``same_winner``: the
    fraction of learning rates whose best design is the best-lr order's."""

    orders: dict[str, list[Hashable]]
    tau: dict[str, float]
    same_winner: float


def ranking_stability(rows: Sequence[dict[str, Any]], design: str, metric: str, *, maximize: bool) -> Stability:
    means = lr_means(rows, [design], metric)
    designs = sorted(means, key=str)
    lrs = sorted({lr for by_lr in means.values() for lr in by_lr})
    sign = -1.0 if maximize else 1.0

    def order(score: dict[Hashable, float]) -> list[Hashable]:
        finite = [d for d in score if math.isfinite(score[d])]
        return sorted(finite, key=lambda d: (sign * score[d], str(d)))

    at_best = {d[0]: (max if maximize else min)((m for m in means[d].values() if math.isfinite(m)), default=math.nan)
               for d in designs}
    best_order = order(at_best)
    orders: dict[str, list[Hashable]] = {"best": best_order}
    tau: dict[str, float] = {}
    for lr in lrs:
        key = f"{lr:g}"
        orders[key] = order({d[0]: means[d].get(lr, math.nan) for d in designs})
        tau[key] = kendall_tau(best_order, orders[key])
    winners = [orders[f"{lr:g}"][:1] == best_order[:1] for lr in lrs]
    return Stability(orders=orders, tau=tau, same_winner=float(np.mean(winners)) if winners else math.nan)


def kendall_tau(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Kendall's τ-a between two orders over their common items (NaN with fewer than two)."""
    common = [x for x in a if x in set(b)]
    if len(common) < 2:
        return math.nan
    pos = {x: i for i, x in enumerate(b)}
    pairs = [(i, j) for i in range(len(common)) for j in range(i + 1, len(common))]
    concordant = sum(1 if pos[common[i]] < pos[common[j]] else -1 for i, j in pairs)
    return concordant / len(pairs)

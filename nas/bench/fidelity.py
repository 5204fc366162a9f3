"""How short a trial may be: rank correlations from a table's learning curves, and the rungs a
replay simulates on them.

At each validation point, the designs' seed-mean val loss is ranked against their seed-mean
final val loss (the curve's last point, the loss the search optimises); Spearman and Kendall
(scipy.stats). The seed-to-seed correlation of final val loss (one seed's ranking against
another's, mean over pairs of seeds) is the noise ceiling: no short trial can rank the designs
better than a second full run of them does.

A replay with a scheduler (``replay_plan``, ``run_rungs``) feeds each drawn row's learning curve,
point by point, to the same ``RungScheduler`` a live study's engine calls: the curve of a full
run is what the scheduler would have seen had the run been stopped at a rung.
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nas.bench.schema import Table
from nas.engine.rungs import RungPlan, RungScheduler
from objectives import get_objective

if TYPE_CHECKING:  # the study config imports torch; a replay needs only the section's values
    from nas.config.study import FidelityConfig

FRACTIONS = {"1/8": 1 / 8, "1/4": 1 / 4, "1/2": 1 / 2}


def rank_fidelity(table: Table) -> dict[str, Any]:
    """The correlations as a JSON-able dict (None where undefined: fewer than two designs,
    or every design tied)."""
    eval_tokens = [int(t) for t in table.meta.get("eval_tokens") or []]
    curves = complete_curves(table, len(eval_tokens))
    out: dict[str, Any] = {"designs": len(curves), "eval_tokens": eval_tokens, "points": [], "at_fraction": {},
                           "seed_to_seed": seed_to_seed(curves)}
    if not curves:
        return out
    budget = float(table.meta.get("budget_tokens") or eval_tokens[-1])
    means = np.array([np.mean(list(by_seed.values()), axis=0) for by_seed in curves.values()])  # (designs, points)
    out["budget_tokens"] = budget
    out["points"] = [{"tokens": t, "fraction": t / budget, **correlations(means[:, k], means[:, -1])}
                     for k, t in enumerate(eval_tokens)]
    for label, fraction in FRACTIONS.items():
        nearest = int(np.argmin([abs(t - fraction * budget) for t in eval_tokens]))
        out["at_fraction"][label] = out["points"][nearest]
    return out


def complete_curves(table: Table, points: int) -> dict[str, dict[int, list[float]]]:
    """spec hash → seed → val loss at every validation point, for complete runs whose curve
    has all ``points`` points, each finite."""
    out: dict[str, dict[int, list[float]]] = {}
    for row in table.rows:
        curve = [float(v) for v in row["curve_val_loss"] or []]
        if row["status"] == "complete" and points and len(curve) == points and all(math.isfinite(v) for v in curve):
            out.setdefault(row["spec_hash"], {})[int(row["seed"])] = curve
    return out


def correlations(x: Any, y: Any) -> dict[str, float | None]:
    from scipy import stats

    with warnings.catch_warnings():  # a constant input is undefined: reported as None, not warned
        warnings.simplefilter("ignore")
        found = {"spearman": stats.spearmanr(x, y).statistic, "kendall": stats.kendalltau(x, y).statistic}
    return {k: float(v) if v is not None and math.isfinite(v) else None for k, v in found.items()}


def seed_to_seed(curves: dict[str, dict[int, list[float]]]) -> dict[str, Any] | None:
    """Final val loss of one seed against another's over the designs both have, mean over
    pairs of seeds; None with fewer than two seeds."""
    seeds = sorted({s for by_seed in curves.values() for s in by_seed})
    pairs = []
    for a, b in itertools.combinations(seeds, 2):
        both = [by_seed for by_seed in curves.values() if a in by_seed and b in by_seed]
        pairs.append(correlations([c[a][-1] for c in both], [c[b][-1] for c in both]))
    if not pairs:
        return None
    out: dict[str, Any] = {"pairs": len(pairs), "seeds": seeds}
    for key in ("spearman", "kendall"):
        found = [v for p in pairs if (v := p[key]) is not None]
        out[key] = float(np.mean(found)) if found else None
    return out


def fidelity_text(fidelity: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    if not fidelity["points"]:
        return "fidelity: no complete learning curves in the table"
    lines = [f"fidelity (rank of seed-mean val loss against final val loss, {fidelity['designs']} designs):"]
    for label, point in fidelity["at_fraction"].items():
        lines.append(f"  at {label} of the budget ({point['tokens']:,} tokens): {_pair(point)}")
    ceiling = fidelity["seed_to_seed"]
    if ceiling is None:
        lines.append("  seed-to-seed (noise ceiling): one seed only, not known")
    else:
        lines.append(f"  seed-to-seed (noise ceiling, {ceiling['pairs']} pair(s) of seeds): {_pair(ceiling)}")
    return "\n".join(lines)


def _pair(d: dict[str, Any]) -> str:
    return f"Spearman {_fmt(d['spearman'])}, Kendall {_fmt(d['kendall'])}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ---- the rungs of a replay --------------------------------------------------------------------
def replay_plan(table: Table, objectives: Sequence[str], fidelity: FidelityConfig | None) -> RungPlan | None:
    """The rungs a live study with this ``[fidelity]`` section would rank at (as
    ``StudyJob.rung_plan``): its fractions of the table's budget, the val loss at a rung and the
    replayed objectives known before training (needs within costs and measure), minimised."""
    if fidelity is None or fidelity.scheduler == "none":
        return None
    budget = int(table.meta.get("budget_tokens") or 0)
    if budget < 1:
        raise ValueError("the table's metadata has no budget_tokens to place the rungs in; tabulate again")
    fixed = tuple((name, 1 if get_objective(name).direction == "minimize" else -1) for name in objectives
                  if get_objective(name).needs <= {"costs", "measure"})
    return RungPlan(rungs=fidelity.rung_tokens(budget), eta=fidelity.eta, tie_break=fidelity.tie_break, fixed=fixed)


def run_rungs(plan: RungPlan, scheduler: RungScheduler, number: int, row: dict[str, Any]) -> tuple[int | None, int]:
    """One run's curve reported to ``scheduler`` as trial ``number``'s validation points would
    arrive: (the rung it stopped at, the tokens seen at that point), or (None, the run's
    tokens) when it was kept at every rung its curve reached."""
    fixed = {f"objective:{name}": float(row[name]) for name, _ in plan.fixed}
    for tokens, loss in zip(row["curve_tokens"] or [], row["curve_val_loss"] or []):
        point = plan.point({plan.quality: float(loss), **fixed})  # None: a NaN loss is not ranked, as live
        decision = None if point is None else scheduler.report(number, int(tokens), point)
        if decision is not None and not decision.keep:
            return decision.rung, int(tokens)
    return None, int(row["tokens"])

"""Hypervolume over a table: every objective normalised to minimisation over the table's
designs, a fixed reference point, and Optuna's own hypervolume code (``nas.engine.compat``).

Per objective, ``low`` and ``high`` are the least and greatest seed-mean value over the
designs' complete runs. A value ``v`` becomes ``(v - low) / (high - low)`` when minimised and
``(high - v) / (high - low)`` when maximised, so the table's designs lie in [0, 1] and 0 is
best; the reference point is ``REFERENCE`` in every objective, so the designs at an edge of the
front still add volume. A study's single-seed values may fall a little outside [0, 1] (a lucky
seed): that is the study's front as it saw it. Failed and infeasible runs are not points of a front.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.bench.schema import Table
from nas.engine.compat import hypervolume

REFERENCE = 1.1


@dataclass(frozen=True, kw_only=True)
class Normalisation:
    """How a table's objectives map to minimisation in [0, 1], and the reference point."""

    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    reference: tuple[float, ...]

    @classmethod
    def of(cls, table: Table, objectives: Sequence[str]) -> Normalisation:
        table.check_objectives(list(objectives))
        lows, highs = [], []
        for name in objectives:
            means = [v for v in table.seed_mean(name).values() if math.isfinite(v)]
            if not means:
                raise ValueError(f"objective {name!r}: no design of the table has a complete run with a finite value; "
                                 "nothing to normalise over (is the table empty or every run failed?)")
            lows.append(min(means))
            highs.append(max(means))
        return cls(objectives=tuple(objectives), directions=tuple(table.directions[n] for n in objectives),
                   low=tuple(lows), high=tuple(highs), reference=(REFERENCE,) * len(objectives))

    def point(self, values: Sequence[float]) -> np.ndarray:
        """One design's values (in the objectives' order) as a normalised minimisation point."""
        out = np.empty(len(self.objectives))
        for i, (v, lo, hi, direction) in enumerate(zip(values, self.low, self.high, self.directions)):
            # An objective every design ties on tells designs apart by nothing: a unit span keeps
            # it at 0 instead of dividing by zero.
            span = hi - lo if hi > lo else 1.0
            out[i] = (v - lo) / span if direction == "minimize" else (hi - v) / span
        return out

    def hypervolume(self, points: Iterable[Sequence[float]]) -> float:
        """Hypervolume of designs' raw values (each in the objectives' order)."""
        normalised = [self.point(p) for p in points]
        if not normalised:
            return 0.0
        return hypervolume(np.stack(normalised), np.asarray(self.reference))

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_point": list(self.reference),
            "objectives": {n: {"direction": d, "low": lo, "high": hi}
                           for n, d, lo, hi in zip(self.objectives, self.directions, self.low, self.high)},
            "rule": "per objective over the designs' seed-mean values of complete runs: minimised (v - low) / "
                    "(high - low), maximised (high - v) / (high - low); 0 is best; reference point 1.1 in each",
        }


def design_means(table: Table, objectives: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """spec hash → the design's seed-mean values, for designs with every one finite (a design
    without a complete run has none and is no point of the true front)."""
    columns = [table.seed_mean(name) for name in objectives]
    out = {}
    for h in table.by_hash:
        values = tuple(c[h] for c in columns)
        if all(math.isfinite(v) for v in values):
            out[h] = values
    return out


def true_front_hypervolume(table: Table, norm: Normalisation) -> float:
    """The hypervolume of every design of the table at its seed-mean values."""
    true_hv = norm.hypervolume(design_means(table, norm.objectives).values())
    if true_hv <= 0.0:
        raise ValueError("the table's true front has no hypervolume (no design with a complete run); tabulate again")
    return true_hv

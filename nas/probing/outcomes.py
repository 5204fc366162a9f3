"""Reading pass-or-fail probe outcomes honestly.

A synthetic task is solved or not: a run either learns the routing (accuracy near 1) or sits on
a plateau (e.g. ~0.22 on REVERSE at length 16: each sequence's most frequent digit). The mean ±
std of such runs says little, and a grand mean mixes cells at chance with cells at 1.0. So each
cell (design × grid point × task) is read as: the fraction of seeds that solved it (accuracy
above the suite's threshold) with a Wilson binomial interval, the mean accuracy, and the
plateau level (the mean accuracy of the runs that did not solve it).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
CELL_AXES = ("d_model", "n_layers", "n_heads", "length")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (sound at 0/n and n/n, unlike p ± z·se)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"successes={successes} of n={n}: need n >= 1 and 0 <= successes <= n")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Cell:
    """One design × grid point × task (× learning rate), over its seeds."""

    variant: str
    task: str
    point: dict[str, int]
    lr: float | None
    n: int  # runs with a finite accuracy
    solved: int
    low: float  # Wilson 95% interval of the success fraction
    high: float
    mean: float
    plateau: float | None  # mean accuracy of the unsolved runs; None when every run solved it
    baseline: float | None  # the most-frequent-token answer's accuracy on the test set
    by_epoch: dict[str, tuple[float, float]]  # epoch → (mean accuracy, success fraction)

    @property
    def fraction(self) -> float:
        return self.solved / self.n if self.n else math.nan

    def to_row(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(point=json.dumps(self.point), by_epoch=json.dumps(self.by_epoch), fraction=self.fraction)
        return out


def cells(rows: Sequence[dict[str, Any]], threshold: float) -> list[Cell]:
    """Probe rows grouped into cells, in the rows' order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("metric") == "accuracy":
            point = {k: int(row[k]) for k in CELL_AXES if row.get(k) is not None}
            groups[(row["variant"], row["task"], json.dumps(point), row.get("lr"))].append(row)
    return [_cell(key, group, threshold) for key, group in groups.items()]


def _cell(key: tuple, group: list[dict[str, Any]], threshold: float) -> Cell:
    variant, task, point, lr = key
    acc = np.array([float(r["value"]) for r in group])
    acc = acc[np.isfinite(acc)]
    solved = int((acc > threshold).sum())
    low, high = wilson_interval(solved, len(acc)) if len(acc) else (math.nan, math.nan)
    unsolved = acc[acc <= threshold]
    baselines = [float(r["mode_baseline"]) for r in group if r.get("mode_baseline") is not None]
    return Cell(variant=variant, task=task, point=json.loads(point), lr=lr, n=len(acc), solved=solved,
                low=low, high=high, mean=float(acc.mean()) if len(acc) else math.nan,
                plateau=float(unsolved.mean()) if len(unsolved) else None,
                baseline=float(np.mean(baselines)) if baselines else None,
                by_epoch=_by_epoch(group, threshold))


def _by_epoch(group: list[dict[str, Any]], threshold: float) -> dict[str, tuple[float, float]]:
    per: dict[str, list[float]] = defaultdict(list)
    for row in group:
        curve = row.get("accuracy_by_epoch") or {}
        for epoch, acc in (json.loads(curve) if isinstance(curve, str) else curve).items():
            if acc is not None and math.isfinite(acc):
                per[str(epoch)].append(float(acc))
    return {e: (float(np.mean(v)), float(np.mean(np.array(v) > threshold)))
            for e, v in sorted(per.items(), key=lambda item: int(item[0]))}


def cell_text(cell: Cell) -> str:
    """``4/6 [0.30–0.94] · 0.741 · plateau 0.22``: solved of n with the interval, mean accuracy,
    and where the unsolved runs sit."""
    if cell.n == 0:
        return "failed"
    text = f"{cell.solved}/{cell.n} [{cell.low:.2f}–{cell.high:.2f}] · {cell.mean:.3f}"
    return text + (f" · plateau {cell.plateau:.2f}" if cell.plateau is not None else "")

"""Multi-objective successive halving (MO-ASHA, Schmucker et al. 2021), asynchronous.

Rungs are token counts inside the full budget. When a trial reaches a rung it reports a point:
its validation loss there and the objectives that do not change with the budget (KV bytes,
parameters, measured throughput: known before training), all turned to minimisation. The trial
continues only if it ranks in the top 1/η of the points recorded at that rung so far (itself
included) by non-dominated sorting, ties inside the last front broken by crowding distance
(spread-out points first) or an ε-net (points far from those already kept first). Nothing
waits for a rung to fill: the first trials at a rung always continue, as in ASHA.

Pure numpy: the engine's executors (Ray Tune's scheduler in tune.py, the in-process loop) and
the replay of a table call the same ``RungScheduler``.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

TieBreak = Literal["crowding", "epsnet"]


def nondominated_fronts(points: np.ndarray) -> list[list[int]]:
    """Indices of ``points`` (n, m; minimised) by front: front 0 is non-dominated, front 1 is
    non-dominated once front 0 is removed, ... Identical points share a front."""
    n = len(points)
    dominated_by = [0] * n  # how many points dominate i
    dominates: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if _dominates(points[i], points[j]):
                dominates[i].append(j)
                dominated_by[j] += 1
            elif _dominates(points[j], points[i]):
                dominates[j].append(i)
                dominated_by[i] += 1
    fronts, current = [], [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominates[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point of one front: the boundary points of every
    objective get inf, the others the sum over objectives of their neighbours' normalised gap.
    A point identical to an earlier one adds no spread: it gets 0 (the first keeps its own)."""
    unique, first, inverse = np.unique(points, axis=0, return_index=True, return_inverse=True)
    spread = _crowding(unique)
    inverse = inverse.reshape(-1)
    return np.array([spread[u] if first[u] == i else 0.0 for i, u in enumerate(inverse)])


def _crowding(points: np.ndarray) -> np.ndarray:
    n, m = points.shape
    if n <= 2:
        return np.full(n, math.inf)
    distance = np.zeros(n)
    for k in range(m):
        order = np.argsort(points[:, k], kind="stable")
        span = points[order[-1], k] - points[order[0], k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if span > 0:
            distance[order[1:-1]] += (points[order[2:], k] - points[order[:-2], k]) / span
    return distance


def epsnet_order(points: np.ndarray) -> list[int]:
    """Greedy ε-net: the point best in the first objective, then repeatedly the point farthest
    (in normalised Chebyshev distance) from those chosen. Identical points come last."""
    n = len(points)
    span = np.ptp(points, axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen = [int(np.argmin(scaled[:, 0]))]
    nearest = np.max(np.abs(scaled - scaled[chosen[0]]), axis=1)
    while len(chosen) < n:
        nearest[chosen] = -1.0
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.max(np.abs(scaled - scaled[nxt]), axis=1))
    return chosen


def rank_order(points: np.ndarray, tie_break: TieBreak = "crowding") -> list[int]:
    """All indices, best first: by front, and inside each front by the tie-break (crowding:
    larger distance first; epsnet: the greedy net's order); equal keys keep arrival order."""
    out: list[int] = []
    for front in nondominated_fronts(points):
        sub = points[front]
        if tie_break == "crowding":
            distance = crowding_distance(sub)
            order = sorted(range(len(front)), key=lambda i: (-distance[i], front[i]))
        else:
            order = epsnet_order(sub)
        out += [front[i] for i in order]
    return out


def promoted(points: np.ndarray, index: int, eta: float, tie_break: TieBreak = "crowding") -> bool:
    """Does point ``index`` of the rung's points rank in the top 1/η (at least one kept)?"""
    keep = max(1, math.floor(len(points) / eta))
    return index in rank_order(points, tie_break)[:keep]


@dataclass(frozen=True, kw_only=True)
class Decision:
    rung: int  # index of the rung
    tokens: int  # the rung's token count
    point: tuple[float, ...]  # the minimised point ranked
    keep: bool
    rank: int  # 0-based position among the rung's points at the time
    population: int  # points at the rung then, this one included


@dataclass
class RungScheduler:
    """The state of the rungs of one study: every point recorded at every rung, and which trial
    decided where. ``report`` is called at each validation point of a trial."""

    rungs: tuple[int, ...]  # token counts, ascending, below the full budget
    eta: float
    tie_break: TieBreak = "crowding"
    points: list[dict[Hashable, tuple[float, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if list(self.rungs) != sorted(set(self.rungs)) or not self.rungs:
            raise ValueError(f"rungs {list(self.rungs)} must be distinct token counts in ascending order")
        self.points = self.points or [{} for _ in self.rungs]

    def report(self, trial: Hashable, tokens: int, point: Sequence[float]) -> Decision | None:
        """The decision when this report is the trial's first at or past a rung; else None."""
        for i, rung_tokens in enumerate(self.rungs):
            if tokens >= rung_tokens and trial not in self.points[i]:
                return self.record(trial, i, point)
        return None

    def record(self, trial: Hashable, rung: int, point: Sequence[float]) -> Decision:
        at_rung = self.points[rung]
        at_rung[trial] = tuple(float(v) for v in point)
        keys = list(at_rung)
        arr = np.array([at_rung[k] for k in keys], dtype=float)
        index = keys.index(trial)
        order = rank_order(arr, self.tie_break)
        keep = index in order[: max(1, math.floor(len(keys) / self.eta))]
        return Decision(rung=rung, tokens=self.rungs[rung], point=at_rung[trial], keep=keep,
                        rank=order.index(index), population=len(keys))

    def restore(self, trial: Hashable, rung: int, point: Sequence[float]) -> None:
        """A decision recorded before (read back from storage on resume): the point only."""
        self.points[rung][trial] = tuple(float(v) for v in point)


@dataclass(frozen=True, kw_only=True)
class RungPlan:
    """A job's rungs and what it ranks at them: ``quality`` (a metric every report carries,
    minimised: the validation loss) and the objectives that do not change with the budget, as
    (name, sign) with sign +1 to minimise and -1 to maximise; their values ride in each report
    as ``objective:<name>`` (nas/engine/job.py)."""

    rungs: tuple[int, ...]
    eta: float
    tie_break: TieBreak = "crowding"
    quality: str = "val_loss"
    fixed: tuple[tuple[str, int], ...] = ()

    def point(self, metrics: dict[str, float]) -> tuple[float, ...] | None:
        """The minimised point of a report; None when it lacks a value (no validation yet)."""
        keys = [self.quality, *(f"objective:{name}" for name, _ in self.fixed)]
        if any(k not in metrics or not math.isfinite(float(metrics[k])) for k in keys):
            return None
        return (float(metrics[self.quality]), *(sign * float(metrics[f"objective:{n}"]) for n, sign in self.fixed))

    def scheduler(self) -> RungScheduler:
        return RungScheduler(rungs=self.rungs, eta=self.eta, tie_break=self.tie_break)

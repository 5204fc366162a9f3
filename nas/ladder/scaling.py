"""Scaling-law fits and gaps for ladders: plain numpy and scipy, no torch, no Optuna.

The law, per design (Hoffmann et al. 2022, "Chinchilla", approach 3):

    L(N, D) = E + A / N^α + B / D^β

with N the non-embedding parameters and D the training tokens. It is fitted in log space,
``log L ≈ logsumexp(e, a − α·log N, b − β·log D)`` with ``E, A, B = exp(e, a, b)``, minimising a
Huber loss of the log residuals (robust to the odd bad run) within bounds (scipy's trust-region
least squares), from a grid of starting points (the objective has local minima). A parameter
that ends at a bound, or whose term is a negligible part of every loss, is reported as
undetermined by the ladder. Compute is C ≈ 6·N·D, so the iso-FLOP optimum of a fitted law has a
closed form (``Law.optimum``).

Uncertainty comes from seeds only: ``bootstrap_laws`` resamples, at every grid point on its
own, that point's seed runs with replacement and refits. The intervals it gives cover seed
noise; they do not cover a wrong functional form, which matters most when extrapolating far
beyond the ladder (the report says so beside every extrapolated figure).

Gaps to the baseline are paired: a design and the baseline at the same size step, token
budget and seed saw the same batches. ``cell_gaps`` gives the mean gap per (size, budget) with
a t interval whose standard deviation is pooled over a group of cells (the report pools the
sizes at one budget: seed noise depends mostly on the training length, and two seeds alone
give a useless interval); ``gap_trend`` regresses
the paired gaps on log N and log D and gives the slopes with t intervals.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

HUBER_DELTA = 1e-2  # log-loss residual beyond which a point counts as an outlier (≈1% of the loss)
EXPONENT_BOUNDS = (0.01, 3.0)
LOG_COEF_BOUNDS = (-20.0, 80.0)  # bounds of a = log A and b = log B
BOUND_TOLERANCE = 1e-3  # a fitted coordinate this close to a bound (share of the range) is "at the bound"
NEGLIGIBLE_SHARE = 1e-3  # a term below this share of every run's loss leaves its parameters free
THETA_NAMES = ("E", "A", "alpha", "B", "beta")
FLOPS_PER_PARAM_TOKEN = 6  # training: forward + backward ≈ 6 FLOPs per parameter and token


# ---- the law ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Law:
    """``L(N, D) = E + A / N^alpha + B / D^beta``."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, N: Any, D: Any) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimum(self, compute: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N_opt, D_opt, L_opt) minimising L at fixed C = 6·N·D (closed form of the law)."""
        C = np.asarray(compute, dtype=float) / FLOPS_PER_PARAM_TOKEN
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        N = G * C ** (self.beta / s)
        D = C / N
        return N, D, self.loss(N, D)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @property
    def theta(self) -> np.ndarray:
        """The fitted coordinates (e, a, alpha, b, beta)."""
        return np.array([math.log(self.E), math.log(self.A), self.alpha, math.log(self.B), self.beta])

    @classmethod
    def from_theta(cls, theta: Sequence[float]) -> Law:
        e, a, alpha, b, beta = (float(x) for x in theta)
        return cls(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


@dataclass(frozen=True, kw_only=True)
class LawFit:
    law: Law
    rmse_log: float  # root-mean-square residual of log L (≈ relative error of the fit)
    n_points: int
    converged: bool
    undetermined: tuple[str, ...] = ()  # parameters the runs do not pin down (see _undetermined)

    def to_dict(self) -> dict[str, Any]:
        return {**self.law.to_dict(), "rmse_log": self.rmse_log, "n_points": self.n_points,
                "converged": self.converged, "undetermined": list(self.undetermined)}


# ---- fitting ----------------------------------------------------------------------------
def _terms(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray) -> np.ndarray:
    e, a, alpha, b, beta = theta
    return np.stack([np.full_like(logN, e), a - alpha * logN, b - beta * logD])  # (3, n)


def _residuals(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray) -> np.ndarray:
    return _logsumexp(_terms(theta, logN, logD)) - logL


def _jacobian(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray) -> np.ndarray:
    t = _terms(theta, logN, logD)
    w = np.exp(t - _logsumexp(t))  # (3, n): share of each term in the predicted loss
    return np.stack([w[0], w[1], -w[1] * logN, w[2], -w[2] * logD], axis=1)  # (n, 5)


def _logsumexp(t: np.ndarray) -> np.ndarray:
    top = t.max(axis=0)
    return top + np.log(np.exp(t - top).sum(axis=0))


def _bounds(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # E lies below every loss seen (up to noise): capped at the largest one, floored far below.
    lo = np.array([math.log(1e-4), LOG_COEF_BOUNDS[0], EXPONENT_BOUNDS[0], LOG_COEF_BOUNDS[0], EXPONENT_BOUNDS[0]])
    hi = np.array([math.log(float(L.max())), LOG_COEF_BOUNDS[1], EXPONENT_BOUNDS[1], LOG_COEF_BOUNDS[1], EXPONENT_BOUNDS[1]])
    return lo, hi


def starting_points(N: np.ndarray, D: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
    """A grid over the exponents and the floor; A and B are then set so that each power term
    carries half of the mean excess loss at the geometric-mean N and D."""
    mean_logN, mean_logD, mean_L = float(np.log(N).mean()), float(np.log(D).mean()), float(L.mean())
    starts = []
    for alpha, beta, floor in itertools.product((0.2, 0.5, 1.0), (0.2, 0.5, 1.0), (0.5, 0.9)):
        E = floor * float(L.min())
        half = max(mean_L - E, 1e-3) / 2
        starts.append(np.array([math.log(E), math.log(half) + alpha * mean_logN, alpha,
                                math.log(half) + beta * mean_logD, beta]))
    return starts


def fit_law(N: Any, D: Any, L: Any, *, starts: list[np.ndarray] | None = None,
            delta: float = HUBER_DELTA) -> LawFit:
    """Fit the law to runs (N, D, L); every run is one point (seeds are separate points)."""
    N, D, L = (np.asarray(x, dtype=float).ravel() for x in (N, D, L))
    keep = np.isfinite(L) & (L > 0)
    N, D, L = N[keep], D[keep], L[keep]
    if len(L) < 5:
        raise ValueError(f"a scaling law has 5 parameters; it needs at least 5 finished runs, got {len(L)}")
    if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError("a scaling law needs at least two model sizes and two token budgets")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    lo, hi = _bounds(L)
    best = None
    for x0 in starts if starts is not None else starting_points(N, D, L):
        result = optimize.least_squares(
            _residuals, np.clip(x0, lo + 1e-9, hi - 1e-9), jac=_jacobian, bounds=(lo, hi),
            loss="huber", f_scale=delta, args=(logN, logD, logL), method="trf",
        )
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    rmse = float(np.sqrt(np.mean(_residuals(best.x, logN, logD, logL) ** 2)))
    return LawFit(law=Law.from_theta(best.x), rmse_log=rmse, n_points=len(L), converged=bool(best.success),
                  undetermined=_undetermined(best.x, logN, logD, lo, hi))


def _undetermined(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[str, ...]:
    """Parameters the runs do not pin down: stuck at a bound, or belonging to a term that is a
    negligible share of every run's loss (its coefficient and exponent then trade freely)."""
    names = {n for n, x, a, b in zip(THETA_NAMES, theta, lo, hi) if min(x - a, b - x) <= BOUND_TOLERANCE * (b - a)}
    t = _terms(theta, logN, logD)
    share = np.exp(t - _logsumexp(t)).max(axis=1)  # (3,): largest share of E, the N term, the D term
    for term, group in zip(share, (("E",), ("A", "alpha"), ("B", "beta"))):
        if term < NEGLIGIBLE_SHARE:
            names.update(group)
    return tuple(n for n in THETA_NAMES if n in names)


# ---- bootstrap over seeds ---------------------------------------------------------------
def resample_seeds(N: np.ndarray, D: np.ndarray, L: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one bootstrap replicate: at each (N, D) point, its runs drawn with replacement."""
    picks = []
    for key in _groups(N, D).values():
        picks.append(rng.choice(key, size=len(key), replace=True))
    return np.concatenate(picks)


def _groups(N: np.ndarray, D: np.ndarray) -> dict[tuple[float, float], np.ndarray]:
    groups: dict[tuple[float, float], list[int]] = {}
    for i, key in enumerate(zip(N.tolist(), D.tolist())):
        groups.setdefault(key, []).append(i)
    return {k: np.array(v) for k, v in groups.items()}


def bootstrap_laws(N: Any, D: Any, L: Any, *, n_boot: int = 200, seed: int = 0,
                   point: LawFit | None = None) -> list[Law]:
    """Laws refitted on ``n_boot`` seed resamples; each starts from the point fit (and two grid
    starts, so a replicate can leave the point fit's basin)."""
    N, D, L = (np.asarray(x, dtype=float).ravel() for x in (N, D, L))
    keep = np.isfinite(L) & (L > 0)
    N, D, L = N[keep], D[keep], L[keep]
    point = point or fit_law(N, D, L)
    grid = starting_points(N, D, L)
    starts = [point.law.theta, grid[0], grid[len(grid) // 2]]
    rng = np.random.default_rng(seed)
    laws = []
    for _ in range(n_boot):
        idx = resample_seeds(N, D, L, rng)
        laws.append(fit_law(N[idx], D[idx], L[idx], starts=starts).law)
    return laws


def interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap values (NaNs ignored)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A figure with its interval: ``value`` from the point fit or the mean, ``lo``/``hi`` the bounds."""

    value: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{self.value:+.{digits}f} [no interval: one seed]"
        return f"{self.value:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def law_intervals(point: LawFit, boot: list[Law], level: float = 0.95) -> dict[str, Estimate]:
    """E, A, alpha, B, beta of the point fit with bootstrap percentile intervals."""
    out = {}
    for name in ("E", "A", "alpha", "B", "beta"):
        lo, hi = interval([getattr(law, name) for law in boot], level)
        out[name] = Estimate(value=getattr(point.law, name), lo=lo, hi=hi)
    return out


# ---- gaps to the baseline ---------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CellGap:
    """Design minus baseline loss at one (size, budget) cell, over the seeds both finished."""

    gap: Estimate
    n_seeds: int
    relative: float  # gap / baseline loss


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """(pooled standard deviation, degrees of freedom) of the paired gaps over all cells."""
    ss, df = 0.0, 0
    for group in groups:
        g = np.asarray(group, dtype=float)
        if g.size >= 2:
            ss += float(((g - g.mean()) ** 2).sum())
            df += g.size - 1
    return (math.sqrt(ss / df) if df else math.nan), df


def cell_gaps(gaps: dict[Any, Sequence[float]], baseline_loss: dict[Any, float], level: float = 0.95, *,
              pool: Callable[[Any], Any] = lambda key: None) -> dict[Any, CellGap]:
    """Mean paired gap per cell with a t interval, mean ± t(df) · s_pooled / √k, where the seed
    spread is pooled over the cells that ``pool(key)`` puts in one group (default: all)."""
    groups: dict[Any, list[Sequence[float]]] = {}
    for key, cell in gaps.items():
        groups.setdefault(pool(key), []).append(cell)
    spread = {group: pooled_sd(members) for group, members in groups.items()}
    out = {}
    for key, cell in gaps.items():
        sd, df = spread[pool(key)]
        g = np.asarray(cell, dtype=float)
        mean = float(g.mean())
        half = float(stats.t.ppf(0.5 + level / 2, df)) * sd / math.sqrt(g.size) if df else math.nan
        out[key] = CellGap(gap=Estimate(value=mean, lo=mean - half, hi=mean + half), n_seeds=int(g.size),
                           relative=mean / baseline_loss[key])
    return out


@dataclass(frozen=True, kw_only=True)
class Trend:
    """gap ≈ c + slope_N · log10 N + slope_D · log10 D, fitted to the paired gaps of every seed."""

    intercept: float
    slope_N: Estimate  # change of the gap per decade of N at fixed D
    slope_D: Estimate  # per decade of D at fixed N
    residual_sd: float
    df: int
    n: int
    cov: tuple[tuple[float, ...], ...]  # covariance of (intercept, slope_N, slope_D)

    def predict(self, N: float, D: float, level: float = 0.95) -> Estimate:
        """The trend at (N, D) with a prediction interval for the mean gap there."""
        x = np.array([1.0, math.log10(N), math.log10(D)])
        value = self.intercept + self.slope_N.value * x[1] + self.slope_D.value * x[2]
        se = math.sqrt(float(x @ np.asarray(self.cov) @ x))
        t = float(stats.t.ppf(0.5 + level / 2, self.df))
        return Estimate(value=value, lo=value - t * se, hi=value + t * se)

    def direction(self, which: str, gap: float) -> str:
        """'widens', 'shrinks' or 'flat' as N (``which="N"``) or D grows, for a gap of sign
        ``gap`` (e.g. the mean gap over the ladder): widening means |gap| grows."""
        slope = self.slope_N if which == "N" else self.slope_D
        if not slope.excludes_zero():
            return "flat (CI covers 0)"
        return "widens" if (slope.value > 0) == (gap > 0) else "shrinks"


def gap_trend(N: Any, D: Any, gaps: Any, level: float = 0.95) -> Trend:
    """OLS of paired gaps on (1, log10 N, log10 D) with t intervals on the slopes."""
    N, D, y = (np.asarray(v, dtype=float).ravel() for v in (N, D, gaps))
    X = np.stack([np.ones_like(N), np.log10(N), np.log10(D)], axis=1)  # (n, 3)
    n, p = X.shape
    if n <= p or np.linalg.matrix_rank(X) < p:
        raise ValueError("the gap trend needs runs at two or more sizes and token budgets (more runs than 3)")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    df = n - p
    s2 = float(resid @ resid) / df
    cov = s2 * np.linalg.inv(X.T @ X)
    t = float(stats.t.ppf(0.5 + level / 2, df))
    se = np.sqrt(np.diag(cov))
    est = [Estimate(value=float(coef[i]), lo=float(coef[i] - t * se[i]), hi=float(coef[i] + t * se[i])) for i in (1, 2)]
    return Trend(intercept=float(coef[0]), slope_N=est[0], slope_D=est[1], residual_sd=math.sqrt(s2), df=df, n=n,
                 cov=tuple(tuple(float(v) for v in row) for row in cov))


def law_gap(design: Law, baseline: Law, *, N_design: float, N_baseline: float, D: float) -> float:
    """Loss gap predicted by two laws for models trained on the same D tokens."""
    return float(design.loss(N_design, D) - baseline.loss(N_baseline, D))


def extrapolated_gap(point: tuple[Law, Law], boot: Sequence[tuple[Law, Law]], *, N_design: float,
                     N_baseline: float, D: float, level: float = 0.95) -> Estimate:
    """The law gap at a target scale, with the bootstrap interval of the paired refits."""
    value = law_gap(*point, N_design=N_design, N_baseline=N_baseline, D=D)
    lo, hi = interval([law_gap(d, b, N_design=N_design, N_baseline=N_baseline, D=D) for d, b in boot], level)
    return Estimate(value=value, lo=lo, hi=hi)

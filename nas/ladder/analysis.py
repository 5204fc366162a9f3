"""The analysis behind a ladder's report: per-design law fits with bootstrap intervals,
iso-FLOP optima, paired gaps to the baseline per (size, budget), the trend of the gap in N and
D, the extrapolated gap at the target scale, and the quality against KV-cache memory."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nas.ladder.config import LadderConfig
from nas.ladder.scaling import (
    CellGap, Estimate, Law, LawFit, Trend, bootstrap_laws, cell_gaps, extrapolated_gap, fit_law, gap_trend, interval,
    law_intervals,
)

LEVEL = 0.95


@dataclass(frozen=True, kw_only=True)
class DesignFit:
    design: str
    fit: LawFit | None
    boot: tuple[Law, ...] = ()
    params: dict[str, Estimate] = field(default_factory=dict)
    error: str | None = None  # why there is no fit


@dataclass(frozen=True, kw_only=True)
class GapCell:
    size: str
    tokens_per_param: float
    N_baseline: int
    N_design: int
    tokens: int
    gap: CellGap


@dataclass(frozen=True, kw_only=True)
class DesignGaps:
    design: str
    cells: tuple[GapCell, ...]
    mean_gap: float  # over every paired run: the sign that "widens" refers to
    trend: Trend | None
    trend_error: str | None
    extrapolated_law: Estimate | None
    extrapolated_trend: Estimate | None
    N_ratio: float  # N(design) / N(baseline) at the largest size: the design's N at the target


@dataclass(frozen=True, kw_only=True)
class Analysis:
    config: LadderConfig
    rows: tuple[dict[str, Any], ...]
    designs: tuple[str, ...]  # baseline first
    baseline: str
    fits: dict[str, DesignFit]
    gaps: dict[str, DesignGaps]  # every design but the baseline
    n_boot: int

    def complete(self, design: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["state"] == "complete" and (design is None or r["design"] == design)]

    @property
    def sizes(self) -> list[str]:
        return [s.label for s in self.config.sizes]


def analyse(config: LadderConfig, rows: list[dict[str, Any]], *, n_boot: int = 200, seed: int = 0) -> Analysis:
    designs = _design_order(rows)
    if not designs or not any(r["baseline"] for r in rows):
        raise ValueError(f"ladder {config.name!r} has no finished baseline run yet; run `qkvnas ladder` first")
    baseline = next(r["design"] for r in rows if r["baseline"])
    fits = {d: _fit_design(d, rows, n_boot, seed) for d in designs}
    gaps = {d: _design_gaps(config, rows, d, baseline, fits) for d in designs if d != baseline}
    return Analysis(config=config, rows=tuple(rows), designs=tuple(designs), baseline=baseline, fits=fits,
                    gaps=gaps, n_boot=n_boot)


def _design_order(rows: list[dict[str, Any]]) -> list[str]:
    order: list[str] = []
    for r in sorted(rows, key=lambda r: (not r["baseline"], r["trial"])):
        if r["design"] not in order:
            order.append(r["design"])
    return order


def _arrays(rows: list[dict[str, Any]], design: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    done = [r for r in rows if r["design"] == design and r["state"] == "complete" and math.isfinite(r["val_loss"])]
    return (np.array([r["params_nonembedding"] for r in done], dtype=float),
            np.array([r["tokens"] for r in done], dtype=float), np.array([r["val_loss"] for r in done]))


def _fit_design(design: str, rows: list[dict[str, Any]], n_boot: int, seed: int) -> DesignFit:
    N, D, L = _arrays(rows, design)
    try:
        fit = fit_law(N, D, L)
    except ValueError as err:
        return DesignFit(design=design, fit=None, error=str(err))
    boot = tuple(bootstrap_laws(N, D, L, n_boot=n_boot, seed=seed, point=fit)) if n_boot else ()
    return DesignFit(design=design, fit=fit, boot=boot, params=law_intervals(fit, list(boot), LEVEL) if boot else {})


def paired_gaps(rows: list[dict[str, Any]], design: str,
                baseline: str) -> dict[tuple[str, float], list[tuple[int, float, dict, dict]]]:
    """(size, tokens_per_param) → [(seed, design loss − baseline loss, design row, baseline row)]
    over the seeds where both runs completed."""
    base = {(r["size"], r["tokens_per_param"], r["seed"]): r for r in rows
            if r["design"] == baseline and r["state"] == "complete"}
    out: dict[tuple[str, float], list[tuple[int, float, dict, dict]]] = {}
    for r in rows:
        key = (r["size"], r["tokens_per_param"], r["seed"])
        if r["design"] == design and r["state"] == "complete" and key in base:
            out.setdefault(key[:2], []).append((r["seed"], r["val_loss"] - base[key]["val_loss"], r, base[key]))
    return out


def _design_gaps(config: LadderConfig, rows: list[dict[str, Any]], design: str, baseline: str,
                 fits: dict[str, DesignFit]) -> DesignGaps:
    pairs = paired_gaps(rows, design, baseline)
    base_loss = {k: float(np.mean([b["val_loss"] for *_, b in v])) for k, v in pairs.items()}
    # Seed noise depends mostly on the training length: pool it over the sizes at each budget.
    stats = cell_gaps({k: [g for _, g, *_ in v] for k, v in pairs.items()}, base_loss, LEVEL,
                      pool=lambda key: key[1]) if pairs else {}
    cells = tuple(
        GapCell(size=k[0], tokens_per_param=k[1], N_baseline=v[0][3]["params_nonembedding"],
                N_design=v[0][2]["params_nonembedding"], tokens=v[0][2]["tokens"], gap=stats[k])
        for k, v in sorted(pairs.items(), key=lambda kv: (kv[1][0][3]["params_nonembedding"], kv[0][1]))
    )
    flat = [(b["params_nonembedding"], b["tokens"], g) for v in pairs.values() for _, g, _, b in v]
    trend, trend_error = _trend(flat)
    ratio = _n_ratio(cells)
    target = config.target
    law = _extrapolate_law(fits[design], fits[baseline], ratio, target.params, target.tokens)
    return DesignGaps(
        design=design, cells=cells, mean_gap=float(np.mean([g for *_, g in flat])) if flat else math.nan,
        trend=trend, trend_error=trend_error, extrapolated_law=law,
        extrapolated_trend=trend.predict(target.params, target.tokens, LEVEL) if trend else None, N_ratio=ratio,
    )


def _trend(flat: list[tuple[int, int, float]]) -> tuple[Trend | None, str | None]:
    if not flat:
        return None, "no paired runs"
    N, D, g = zip(*flat)
    try:
        return gap_trend(N, D, g, LEVEL), None
    except ValueError as err:
        return None, str(err)


def _n_ratio(cells: tuple[GapCell, ...]) -> float:
    if not cells:
        return math.nan
    largest = max(cells, key=lambda c: c.N_baseline)
    return largest.N_design / largest.N_baseline


def _extrapolate_law(design: DesignFit, baseline: DesignFit, ratio: float, N: float, D: float) -> Estimate | None:
    if design.fit is None or baseline.fit is None or not math.isfinite(ratio):
        return None
    boot = list(zip(design.boot, baseline.boot))
    if not boot:
        return None
    return extrapolated_gap((design.fit.law, baseline.fit.law), boot, N_design=ratio * N, N_baseline=N, D=D, level=LEVEL)


def iso_flop(fit: DesignFit, compute: float) -> dict[str, Estimate] | None:
    """N_opt, D_opt, tokens per parameter and loss at the optimum for this compute."""
    if fit.fit is None:
        return None
    N, D, L = (float(x) for x in fit.fit.law.optimum(compute))
    out: dict[str, tuple[float, list[float]]] = {"N": (N, []), "D": (D, []), "tpp": (D / N, []), "L": (L, [])}
    for law in fit.boot:
        n, d, loss = (float(x) for x in law.optimum(compute))
        out["N"][1].append(n)
        out["D"][1].append(d)
        out["tpp"][1].append(d / n)
        out["L"][1].append(loss)
    return {k: Estimate(value=v, lo=interval(b, LEVEL)[0], hi=interval(b, LEVEL)[1]) for k, (v, b) in out.items()}


def kv_points(a: Analysis, size: str) -> list[tuple[str, int, float, float, float]]:
    """(design, KV bytes/token, mean loss, lo, hi) at the largest token budget of a size."""
    top = max(a.config.tokens_per_param)
    out = []
    for d in a.designs:
        runs = [r for r in a.complete(d) if r["size"] == size and r["tokens_per_param"] == top]
        if not runs:
            continue
        losses = np.array([r["val_loss"] for r in runs])
        half = 1.96 * losses.std(ddof=1) / math.sqrt(len(losses)) if len(losses) > 1 else math.nan
        out.append((d, int(runs[0]["kv_cache_bytes_per_token"]), float(losses.mean()),
                    float(losses.mean() - half), float(losses.mean() + half)))
    return out


def pareto_mask(points: list[tuple[str, int, float, float, float]]) -> list[bool]:
    """Not dominated in (KV bytes, loss), both minimised."""
    return [not any((q[1] <= p[1] and q[2] <= p[2]) and (q[1] < p[1] or q[2] < p[2]) for q in points)
            for p in points]

"""``qkvnas report NAME``: a ladder's Markdown report, readable on its own, with PNG plots.

    ladder storage ──► ladder.parquet (refreshed) ──► analyse(): per-design law fits with
    bootstrap intervals, iso-FLOP optima, paired gaps to the baseline per (size, budget), the
    trend of the gap in N and D, the extrapolated gap at the target scale ──► report.md + plots

Everything written goes into the ladder's folder: ``report.md``, ``loss_vs_compute.png``,
``gap_vs_scale.png``, ``kv_front.png`` (plots are written to a temporary name, then moved).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.ladder import RESULTS_FILE, LadderConfig, grid, load_ladder_study, result_rows, row_key, write_results
from nas.scaling import (
    CellGap, Estimate, Law, LawFit, Trend, bootstrap_laws, cell_gaps, extrapolated_gap, fit_law, gap_trend, interval,
    law_intervals,
)

REPORT_FILE = "report.md"
PLOTS = {"compute": "loss_vs_compute.png", "gap": "gap_vs_scale.png", "kv": "kv_front.png"}
LEVEL = 0.95


# ---- the analysis -----------------------------------------------------------------------
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


def paired_gaps(rows: list[dict[str, Any]], design: str, baseline: str) -> dict[tuple[str, float], list[tuple[int, float, dict, dict]]]:
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
    out = {"N": (N, []), "D": (D, []), "tpp": (D / N, []), "L": (L, [])}
    for law in fit.boot:
        n, d, l = (float(x) for x in law.optimum(compute))
        out["N"][1].append(n)
        out["D"][1].append(d)
        out["tpp"][1].append(d / n)
        out["L"][1].append(l)
    return {k: Estimate(value=v, lo=interval(b, LEVEL)[0], hi=interval(b, LEVEL)[1]) for k, (v, b) in out.items()}


# ---- writing ----------------------------------------------------------------------------
def write_report(config: LadderConfig, *, n_boot: int = 200, seed: int = 0) -> Path:
    """Refresh ``ladder.parquet`` from storage, analyse, and write the report and its plots."""
    study = load_ladder_study(config)
    write_results(study, config)  # every run ever made; the report covers the configured grid
    keys = {p.key for p in grid(config)}
    rows = [r for r in result_rows(study) if row_key(r) in keys]
    analysis = analyse(config, rows, n_boot=n_boot, seed=seed)
    folder = config.ladder_dir
    plots = {
        "compute": plot_loss_vs_compute(analysis, folder / PLOTS["compute"]),
        "gap": plot_gaps(analysis, folder / PLOTS["gap"]),
        "kv": plot_kv_front(analysis, folder / PLOTS["kv"]),
    }
    path = folder / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(markdown(analysis, plots), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def _est(e: Estimate | None, digits: int = 3, signed: bool = False, sig: bool = False) -> str:
    """``value [lo, hi]``: fixed decimals, signed (gaps), or 3 significant digits (counts)."""
    if e is None or not math.isfinite(e.value):
        return "n/a"
    if signed:
        return e.text(digits)
    f = (lambda x: f"{x:.3g}" if math.isfinite(x) else "n/a") if sig else (lambda x: _fmt(x, digits))
    return f"{f(e.value)} [{f(e.lo)}, {f(e.hi)}]"


def markdown(a: Analysis, plots: dict[str, Path]) -> str:
    parts = [
        _header(a), _key_table(a), _trend_table(a), _extrapolation(a), _fits_table(a), _optimum_table(a),
        _kv_table(a), _plots(plots), _runs_table(a), _failures(a), _method(a),
    ]
    return "\n".join(p for p in parts if p)


def _header(a: Analysis) -> str:
    c = a.config
    done, total = len(a.complete()), len(a.rows)
    hw = sorted({f"{r['device']} ({r['device_name']}, {r['threads']} threads, torch {r['torch']})" for r in a.complete()})
    wall = sum(r["train_wall_s"] for r in a.complete() if math.isfinite(r["train_wall_s"]))
    lines = [
        f"# Scaling ladder `{c.name}`", "",
        f"Baseline **{a.baseline}** against {', '.join(f'**{d}**' for d in a.designs if d != a.baseline)}; "
        f"sizes {', '.join(a.sizes)} (d_model, pattern repeats); {len(c.tokens_per_param)} token budgets "
        f"({', '.join(f'{t:g}' for t in c.tokens_per_param)} tokens per baseline parameter); seeds "
        f"{', '.join(str(s) for s in c.seeds)}. Data: {c.data or 'shipped Shakespeare corpus (byte-level)'}; "
        f"batch {c.budget.batch_size}, peak lr {c.budget.lr:g}, cosine schedule.",
        "",
        f"{done} of {total} finished runs completed; training took {wall:.0f} s in all (sum over runs). "
        f"Hardware: {'; '.join(hw) or 'n/a'}.",
        "",
        "Loss is validation cross-entropy in nats/token. **N** = non-embedding parameters, **D** = training "
        "tokens, **C** = 6·N·D. A **gap** is design loss − baseline loss at the same size step, budget and "
        "seed (same batches): negative means the design is better. Intervals are 95%.",
        "",
    ]
    return "\n".join(lines)


def _key_table(a: Analysis) -> str:
    lines = ["## Gap to the baseline per size and budget", "",
             "Mean paired gap over seeds, with a t interval on the seed-to-seed spread pooled over the sizes "
             "at each budget (see Method). Relative gap in % of the baseline loss.", ""]
    for d, g in a.gaps.items():
        lines += [f"**{d}** − **{a.baseline}**", "",
                  "| size | N base | N design | tokens/param | tokens | gap [95% CI] | rel. | seeds |",
                  "|---|---:|---:|---:|---:|---|---:|---:|"]
        for cell in g.cells:
            lines.append(
                f"| {cell.size} | {cell.N_baseline:,} | {cell.N_design:,} | {cell.tokens_per_param:g} | "
                f"{cell.tokens:,} | {cell.gap.gap.text(4)} | {100 * cell.gap.relative:+.2f}% | {cell.gap.n_seeds} |")
        lines.append("")
    return "\n".join(lines)


def _trend_table(a: Analysis) -> str:
    lines = ["## Does the gap widen or shrink with scale?", "",
             "Least squares of every paired gap on log10 N (baseline) and log10 D: the slope is the change "
             "of the gap per decade, with a t interval; \"widens\" means |gap| grows.", "",
             "| design | mean gap | per decade of N | as N grows | per decade of D | as D grows | residual sd | runs |",
             "|---|---:|---|---|---|---|---:|---:|"]
    for d, g in a.gaps.items():
        if g.trend is None:
            lines.append(f"| {d} | {_fmt(g.mean_gap, 4)} | n/a | {g.trend_error} | n/a | | | |")
            continue
        t = g.trend
        lines.append(f"| {d} | {g.mean_gap:+.4f} | {t.slope_N.text(4)} | {t.direction('N', g.mean_gap)} | "
                     f"{t.slope_D.text(4)} | {t.direction('D', g.mean_gap)} | {t.residual_sd:.4f} | {t.n} |")
    return "\n".join(lines) + "\n"


def _extrapolation(a: Analysis) -> str:
    t = a.config.target
    biggest = max((r["params_nonembedding"] for r in a.complete(a.baseline)), default=0)
    most = max((r["tokens"] for r in a.complete(a.baseline)), default=0)
    lines = [f"## Extrapolated gap at N = {t.params:.3g}, D = {t.tokens:.3g}", "",
             f"The target is {t.params / max(biggest, 1):.3g}× the largest N and {t.tokens / max(most, 1):.3g}× the "
             "largest D of the ladder. Two estimates: the difference of the two fitted laws (the design at the "
             "N ratio of the largest size), with a bootstrap interval over seeds; and the linear trend above, "
             "with its t interval. **Both intervals cover seed noise only, not a wrong functional form**; "
             "extrapolating orders of magnitude from tiny models is a hypothesis, and when the two estimates "
             "disagree beyond their intervals, neither is to be trusted.", "",
             "| design | N ratio | gap from the laws | gap from the trend |", "|---|---:|---|---|"]
    for d, g in a.gaps.items():
        weak = sorted({p for name in (d, a.baseline) if a.fits[name].fit for p in a.fits[name].fit.undetermined})
        note = f" (fit leaves {', '.join(weak)} undetermined)" if weak else ""
        lines.append(f"| {d} | {g.N_ratio:.3f} | {_est(g.extrapolated_law, 4, signed=True)}{note} | "
                     f"{_est(g.extrapolated_trend, 4, signed=True)} |")
    return "\n".join(lines) + "\n"


def _fits_table(a: Analysis) -> str:
    lines = ["## Fitted laws L(N, D) = E + A/N^α + B/D^β", "",
             f"Huber fit in log space from a grid of starts; intervals: {a.n_boot} bootstrap refits resampling "
             "the seeds at every point. rmse is the root-mean-square residual of log L.", "",
             "| design | E | α | β | A | B | rmse(log L) | runs | not determined by the ladder |",
             "|---|---|---|---|---|---|---:|---:|---|"]
    for d in a.designs:
        f = a.fits[d]
        if f.fit is None:
            lines.append(f"| {d} | no fit: {f.error} | | | | | | | |")
            continue
        p = f.params
        cell = (lambda k: _est(p[k], sig=k in "AB")) if p else (lambda k: _fmt(getattr(f.fit.law, k)))
        lines.append(f"| {d} | {cell('E')} | {cell('alpha')} | {cell('beta')} | {cell('A')} | {cell('B')} | "
                     f"{f.fit.rmse_log:.4f} | {f.fit.n_points} | {', '.join(f.fit.undetermined) or 'none'} |")
    if any(f.fit is not None and f.fit.undetermined for f in a.fits.values()):
        lines += ["", "A parameter \"not determined\" ended at a bound of the fit, or belongs to a term that is a "
                  "negligible part of every loss: the ladder's sizes and budgets do not constrain it, and figures "
                  "derived from it (optimum, extrapolation) are not findings."]
    return "\n".join(lines) + "\n"


def _compute_budgets(a: Analysis) -> list[tuple[str, float]]:
    top = max((r["compute"] for r in a.complete()), default=math.nan)
    t = a.config.target
    return [("largest run of the ladder", top), ("target scale", 6.0 * t.params * t.tokens)]


def _optimum_table(a: Analysis) -> str:
    lines = ["## Iso-FLOP optimum", "",
             "The N and D that minimise each fitted law at fixed compute C = 6·N·D (closed form), with "
             "bootstrap intervals.", "",
             "| design | C (FLOPs) | N_opt | D_opt | tokens/param | loss |", "|---|---|---|---|---|---|"]
    for label, C in _compute_budgets(a):
        for d in a.designs:
            opt = iso_flop(a.fits[d], C) if math.isfinite(C) else None
            if opt is None:
                continue
            weak = a.fits[d].fit.undetermined if a.fits[d].fit else ()
            name = f"{d} (fit leaves {', '.join(weak)} undetermined)" if weak else d
            lines.append(f"| {name} | {C:.3g} ({label}) | {_est(opt['N'], sig=True)} | {_est(opt['D'], sig=True)} | "
                         f"{_est(opt['tpp'], sig=True)} | {_est(opt['L'])} |")
    return "\n".join(lines) + "\n"


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


def _kv_table(a: Analysis) -> str:
    top = max(a.config.tokens_per_param)
    lines = ["## Quality against KV-cache memory", "",
             f"At each size, the loss at the largest budget ({top:g} tokens/param; mean over seeds, ±1.96 "
             "standard errors) against the analytic KV-cache bytes per token (bf16, whole model). "
             "★ marks the designs on the front.", "",
             "| size | design | KV bytes/token | loss | front |", "|---|---|---:|---|:-:|"]
    for size in a.sizes:
        pts = kv_points(a, size)
        for p, on in zip(pts, pareto_mask(pts)):
            lines.append(f"| {size} | {p[0]} | {p[1]} | {p[2]:.4f} [{_fmt(p[3], 4)}, {_fmt(p[4], 4)}] | {'★' if on else ''} |")
    return "\n".join(lines) + "\n"


def _plots(plots: dict[str, Path]) -> str:
    return "\n".join([
        "## Plots", "",
        f"![loss against compute]({plots['compute'].name})", "",
        "Loss against compute C = 6·N·D per design (log-log). Points are runs (colour: size; marker: budget); "
        "lines are the fitted law at each size's N; the dashed line is the fitted iso-FLOP frontier.", "",
        f"![gap against size and tokens]({plots['gap'].name})", "",
        "Gap to the baseline against N (one line per budget) and against D (one line per size), with 95% intervals.", "",
        f"![quality against KV memory]({plots['kv'].name})", "",
        "Loss at the largest budget against KV-cache bytes per token, one panel per size; the line joins the front.", "",
    ])


def _runs_table(a: Analysis) -> str:
    lines = ["## All runs (mean over seeds)", "",
             f"Train tokens/s is measured during training (median over seeds), with up to "
             f"{a.config.resources.max_concurrent} runs sharing the machine at "
             f"{a.config.resources.cpus_per_trial:g} CPU(s) each: a record of the runs, not a benchmark.", "",
             "| design | size | N | tokens/param | tokens | loss (mean ± sd) | seeds | train tokens/s |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    groups: dict[tuple, list[dict]] = {}
    for r in a.complete():
        groups.setdefault((a.designs.index(r["design"]), r["params_nonembedding"], r["tokens_per_param"]), []).append(r)
    for key in sorted(groups):
        rs = groups[key]
        losses = np.array([r["val_loss"] for r in rs])
        sd = f"{losses.std(ddof=1):.4f}" if len(rs) > 1 else "n/a"
        speed = np.nanmedian([r["train_tokens_per_s"] for r in rs])
        lines.append(f"| {rs[0]['design']} | {rs[0]['size']} | {rs[0]['params_nonembedding']:,} | "
                     f"{rs[0]['tokens_per_param']:g} | {rs[0]['tokens']:,} | {losses.mean():.4f} ± {sd} | {len(rs)} | "
                     f"{speed:,.0f} |")
    return "\n".join(lines) + "\n"


def _failures(a: Analysis) -> str:
    failed = [r for r in a.rows if r["state"] != "complete"]
    if not failed:
        return "No run failed.\n"
    lines = [f"## Failed runs ({len(failed)})", "", "| run | reason |", "|---|---|"]
    lines += [f"| {r['point']} | {r['reason']} |" for r in failed]
    return "\n".join(lines) + "\n"


def _method(a: Analysis) -> str:
    return "\n".join([
        "## Method", "",
        "- **Scaling a design**: depth repeats the design's layer pattern (cross-layer K/V references are "
        "remapped into each copy); width keeps the head dimension, each layer's query-to-K/V-head ratio, and "
        "scales the FFN width, low ranks and latents with d_model.",
        "- **Token budgets**: tokens = tokens/param × N(baseline at that size), in whole steps; every design at a "
        "size trains on the same batches for a given seed, so gaps are paired.",
        "- **Gap intervals**: mean ± t(df)·s/√k, with s the standard deviation of the paired gaps pooled over "
        "the sizes at the same token budget (seed noise depends mostly on the training length; df = Σ(k−1)); "
        "with two seeds a per-cell interval alone would be uninformative.",
        "- **Fits**: log L = logsumexp(log E, log A − α log N, log B − β log D), Huber loss (δ = 0.01) on the "
        "residuals, bounded, best of 18 starts; bootstrap: at each (N, D) the seed runs are resampled with "
        "replacement, then refitted.",
        "- **Extrapolation**: see above; no interval here includes model misspecification.",
        f"- Results table: `{RESULTS_FILE}` in this folder (one row per run, with learning curves and "
        "hardware figures).", "",
    ])



# ---- plots ------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    os.replace(tmp, path)
    return path


MARKERS = "os^Dv<>p*h"


def plot_loss_vs_compute(a: Analysis, path: Path) -> Path:
    plt = _pyplot()
    n = len(a.designs)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), sharey=True, squeeze=False, layout="constrained")
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(a.sizes)))
    tpps = sorted(a.config.tokens_per_param)
    for ax, d in zip(axes[0], a.designs):
        runs = a.complete(d)
        for i, size in enumerate(a.sizes):
            rs = [r for r in runs if r["size"] == size]
            for r in rs:
                ax.scatter(r["compute"], r["val_loss"], color=colours[i], marker=MARKERS[tpps.index(r["tokens_per_param"]) % len(MARKERS)], s=22)
            fit = a.fits[d].fit
            if fit is not None and rs:
                N = rs[0]["params_nonembedding"]
                C = np.geomspace(min(r["compute"] for r in rs) / 2, max(r["compute"] for r in rs) * 2, 60)
                ax.plot(C, fit.law.loss(N, C / (6 * N)), color=colours[i], lw=1, label=size)
        _frontier(ax, a.fits[d].fit, runs)
        ax.set(xscale="log", yscale="log", title=d + (" (baseline)" if d == a.baseline else ""), xlabel="compute C = 6·N·D (FLOPs)")
        _plain_ticks(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("validation loss (nats/token)")
    axes[0][0].legend(title="size", fontsize=7)
    return _save(fig, path)


def _frontier(ax: Any, fit: LawFit | None, runs: list[dict]) -> None:
    if fit is None or not runs:
        return
    C = np.geomspace(min(r["compute"] for r in runs) / 2, max(r["compute"] for r in runs) * 2, 60)
    ax.plot(C, fit.law.optimum(C)[2], "k--", lw=1, label="iso-FLOP optimum")


def _no_minor_labels(axis: Any) -> None:
    from matplotlib.ticker import NullFormatter

    axis.set_minor_formatter(NullFormatter())


def _data_ticks(ax: Any, values: list[float]) -> None:
    """Ticks at the ladder's own values when they span less than a decade (too little for log
    ticks); the log axis's own ticks otherwise."""
    ticks = sorted(set(values))
    if ticks and ticks[-1] < 10 * ticks[0]:
        ax.set_xticks(ticks, [_si(v) for v in ticks], fontsize=7)
    _no_minor_labels(ax.xaxis)


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _plain_ticks(axis: Any) -> None:
    """Log axis labelled 3.5, 4 rather than 3.5×10⁰ (losses span less than a decade)."""
    from matplotlib.ticker import FormatStrFormatter

    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(FormatStrFormatter("%.3g"))


def plot_gaps(a: Analysis, path: Path) -> Path:
    plt = _pyplot()
    rows = max(1, len(a.gaps))
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.6 * rows), squeeze=False, layout="constrained")
    for (d, g), (ax_n, ax_d) in zip(a.gaps.items(), axes):
        for j, tpp in enumerate(sorted({c.tokens_per_param for c in g.cells})):
            cs = sorted((c for c in g.cells if c.tokens_per_param == tpp), key=lambda c: c.N_baseline)
            _errorline(ax_n, [c.N_baseline for c in cs], cs, f"{tpp:g} tok/param", MARKERS[j % len(MARKERS)])
        for j, size in enumerate(a.sizes):
            cs = sorted((c for c in g.cells if c.size == size), key=lambda c: c.tokens)
            _errorline(ax_d, [c.tokens for c in cs], cs, size, MARKERS[j % len(MARKERS)])
        for ax, label in ((ax_n, "N (baseline, non-embedding)"), (ax_d, "D (training tokens)")):
            ax.axhline(0, color="k", lw=0.8)
            ax.set(xscale="log", xlabel=label, title=f"{d} − {a.baseline}")
            _data_ticks(ax, [c.N_baseline if ax is ax_n else c.tokens for c in g.cells])
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        ax_n.set_ylabel("loss gap (nats/token)")
    return _save(fig, path)


def _errorline(ax: Any, x: list[float], cells: list[GapCell], label: str, marker: str) -> None:
    if not cells:
        return
    y = np.array([c.gap.gap.value for c in cells])
    lo = y - np.array([c.gap.gap.lo for c in cells])
    hi = np.array([c.gap.gap.hi for c in cells]) - y
    ax.errorbar(x, y, yerr=np.nan_to_num(np.stack([lo, hi])), marker=marker, capsize=3, lw=1, label=label)


def plot_kv_front(a: Analysis, path: Path) -> Path:
    plt = _pyplot()
    n = len(a.sizes)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.4), squeeze=False, layout="constrained")
    for ax, size in zip(axes[0], a.sizes):
        pts = kv_points(a, size)
        for p in pts:
            err = np.nan_to_num([[p[2] - p[3]], [p[4] - p[2]]])
            ax.errorbar(p[1], p[2], yerr=err, marker="o", capsize=3)
            ax.annotate(p[0], (p[1], p[2]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        front = sorted((p for p, on in zip(pts, pareto_mask(pts)) if on), key=lambda p: p[1])
        if front:
            ax.plot([p[1] for p in front], [p[2] for p in front], color="k", lw=0.8, zorder=0)
        ax.set(title=size, xlabel="KV-cache bytes/token (bf16)", xscale="log")
        ax.set_xticks(sorted({p[1] for p in pts}), [str(v) for v in sorted({p[1] for p in pts})])
        _no_minor_labels(ax.xaxis)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("validation loss at the largest budget")
    return _save(fig, path)

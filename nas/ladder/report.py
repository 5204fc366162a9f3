"""``qkvnas report NAME``: a ladder's Markdown report, readable on its own, with PNG plots.

    ladder storage ──► ladder.parquet (refreshed) ──► analyse(): per-design law fits with
    bootstrap intervals, iso-FLOP optima, paired gaps to the baseline per (size, budget), the
    trend of the gap in N and D, the extrapolated gap at the target scale ──► report.md + plots

Everything written goes into the ladder's folder: ``report.md``, ``loss_vs_compute.png``,
``gap_vs_scale.png``, ``kv_front.png`` (plots are written to a temporary name, then moved).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nas.common import atomic_write_text
from nas.config.data import data_text
from nas.ladder.analysis import Analysis, analyse, iso_flop, kv_points, pareto_mask
from nas.ladder.config import LadderConfig
from nas.ladder.grid import grid
from nas.ladder.plots import plot_gaps, plot_kv_front, plot_loss_vs_compute
from nas.ladder.record import load_ladder_study
from nas.ladder.results import RESULTS_FILE, result_rows, row_key, write_results
from nas.ladder.scaling import Estimate, Law
from nas.ladder.sweep_report import shared_lr_rows, sweep_section

REPORT_FILE = "report.md"
PLOTS = {"compute": "loss_vs_compute.png", "gap": "gap_vs_scale.png", "kv": "kv_front.png"}


# ---- writing ----------------------------------------------------------------------------
def write_report(config: LadderConfig, *, n_boot: int = 200, seed: int = 0) -> Path:
    """Refresh ``ladder.parquet`` from storage, analyse, and write the report and its plots."""
    study = load_ladder_study(config)
    write_results(study, config)  # every run ever made; the report covers the configured grid
    keys = {p.key for p in grid(config)}
    rows = [r for r in result_rows(study) if row_key(r) in keys]
    analysis = analyse(config, shared_lr_rows(config, rows), n_boot=n_boot, seed=seed)
    folder = config.ladder_dir
    plots = {
        "compute": plot_loss_vs_compute(analysis, folder / PLOTS["compute"]),
        "gap": plot_gaps(analysis, folder / PLOTS["gap"]),
        "kv": plot_kv_front(analysis, folder / PLOTS["kv"]),
    }
    path = folder / REPORT_FILE
    return atomic_write_text(path, markdown(analysis, plots, sweep_section(config, rows)))


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


def markdown(a: Analysis, plots: dict[str, Path], sweep: str = "") -> str:
    parts = [
        _header(a), _key_table(a), sweep, _trend_table(a), _extrapolation(a), _fits_table(a), _optimum_table(a),
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
        f"{', '.join(str(s) for s in c.seeds)}. Data: {data_text(c.data)}; "
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
        fits = [fit for name in (d, a.baseline) if (fit := a.fits[name].fit) is not None]
        weak = sorted({p for fit in fits for p in fit.undetermined})
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
        f, fit = a.fits[d], a.fits[d].fit
        if fit is None:
            lines.append(f"| {d} | no fit: {f.error} | | | | | | | |")
            continue
        cells = " | ".join(_law_cell(f.params, fit.law, k) for k in ("E", "alpha", "beta", "A", "B"))
        lines.append(f"| {d} | {cells} | "
                     f"{fit.rmse_log:.4f} | {fit.n_points} | {', '.join(fit.undetermined) or 'none'} |")
    if any(f.fit is not None and f.fit.undetermined for f in a.fits.values()):
        lines += ["", "A parameter \"not determined\" ended at a bound of the fit, or belongs to a term that is a "
                  "negligible part of every loss: the ladder's sizes and budgets do not constrain it, and figures "
                  "derived from it (optimum, extrapolation) are not findings."]
    return "\n".join(lines) + "\n"


def _law_cell(params: dict[str, Estimate], law: Law, key: str) -> str:
    """One fitted parameter: its bootstrap interval when there was a bootstrap, else the point fit."""
    return _est(params[key], sig=key in "AB") if params else _fmt(getattr(law, key))


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
            fit = a.fits[d].fit
            weak = fit.undetermined if fit else ()
            name = f"{d} (fit leaves {', '.join(weak)} undetermined)" if weak else d
            lines.append(f"| {name} | {C:.3g} ({label}) | {_est(opt['N'], sig=True)} | {_est(opt['D'], sig=True)} | "
                         f"{_est(opt['tpp'], sig=True)} | {_est(opt['L'])} |")
    return "\n".join(lines) + "\n"


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

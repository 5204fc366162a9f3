"""The PNG plots of a ladder's report: loss against compute with the fitted laws, the gap to
the baseline against N and D, and loss against KV-cache bytes (written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nas.common import atomic_write
from nas.ladder.analysis import Analysis, GapCell, kv_points, pareto_mask
from nas.ladder.scaling import LawFit


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    # The temporary name ends in .tmp, so the format is named rather than read from it.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _pyplot().close(fig)
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
                marker = MARKERS[tpps.index(r["tokens_per_param"]) % len(MARKERS)]
                ax.scatter(r["compute"], r["val_loss"], color=colours[i], marker=marker, s=22)
            fit = a.fits[d].fit
            if fit is not None and rs:
                N = rs[0]["params_nonembedding"]
                C = np.geomspace(min(r["compute"] for r in rs) / 2, max(r["compute"] for r in rs) * 2, 60)
                ax.plot(C, fit.law.loss(N, C / (6 * N)), color=colours[i], lw=1, label=size)
        _frontier(ax, a.fits[d].fit, runs)
        ax.set(xscale="log", yscale="log", title=d + (" (baseline)" if d == a.baseline else ""),
               xlabel="compute C = 6·N·D (FLOPs)")
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

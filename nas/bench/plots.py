"""How a replay is shown: replay.png, the hypervolume fraction of each run's front against
trials and against training tokens (the median over repeats with its interquartile band,
written atomically), and the summary table for the terminal."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nas.bench.fidelity import fidelity_text
from nas.common import atomic_write

if TYPE_CHECKING:
    from nas.bench.replay import ReplayResult, ReplayRun

GRID_POINTS = 200
# The line and band: the completed designs at their seed means, the measure the thresholds use;
# dashed: the front of the values the study was told (one seed each, can pass 1 by luck).
MEASURES = (("hv_fraction_mean", "-", True), ("hv_fraction", "--", False))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_replay(result: ReplayResult, path: Path) -> Path:
    plt = _pyplot()
    fig, (by_trials, by_tokens) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
    colours = plt.get_cmap("tab10")
    for i, (label, runs) in enumerate(result.runs.items()):
        grid = np.linspace(0, max(run.trials[-1].tokens for run in runs), GRID_POINTS)
        for measure, style, band in MEASURES:
            hv = np.array([[getattr(t, measure) for t in run.trials] for run in runs])  # (repeats, trials)
            name = label if band else None
            _band(by_trials, np.arange(1, hv.shape[1] + 1), hv, colours(i % 10), name, style, band)
            _band(by_tokens, grid, hv_at_tokens(runs, grid, measure), colours(i % 10), name, style, band)
    for ax in (by_trials, by_tokens):
        for threshold in (0.9, 0.95):
            ax.axhline(threshold, color="grey", lw=0.8, ls=":")
        ax.grid(True, alpha=0.3)
    by_trials.set(xlabel="trials", ylabel="hypervolume / true front's",
                  title=f"{len(result.objectives)} objectives, reference point {result.norm.reference[0]} (normalised)")
    by_tokens.set(xlabel="training tokens spent", title=f"median and IQR over {result.repeats} repeats")
    fig.suptitle("line and band: the completed designs at their seed means (the thresholds' measure); "
                 "dashed: the front of the values the study was told", fontsize=9)
    by_trials.legend(fontsize=8, loc="lower right")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def _band(ax: Any, x: np.ndarray, y: np.ndarray, colour: Any, label: str | None, style: str, band: bool) -> None:
    """The median line over the rows of ``y``, and if ``band`` the band between its quartiles."""
    q25, median, q75 = np.percentile(y, [25, 50, 75], axis=0)
    ax.plot(x, median, color=colour, lw=1.6 if band else 0.9, ls=style, label=label)
    if band:
        ax.fill_between(x, q25, q75, color=colour, alpha=0.18, lw=0)


def hv_at_tokens(runs: Sequence[ReplayRun], grid: np.ndarray, measure: str = "hv_fraction_mean") -> np.ndarray:
    """(repeats, grid) hypervolume fraction (``measure``) each run had once it had spent each
    grid's tokens: 0 before its first design, its last value after its last trial (a run that
    spent fewer tokens in its trials had found at least that much by then)."""
    out = np.zeros((len(runs), len(grid)))
    for i, run in enumerate(runs):
        tokens = np.array([t.tokens for t in run.trials])
        hv = np.array([getattr(t, measure) for t in run.trials])
        idx = np.searchsorted(tokens, grid, side="right") - 1
        out[i] = np.where(idx >= 0, hv[np.clip(idx, 0, None)], 0.0)
    return out


# ---- the terminal -----------------------------------------------------------------------------
def replay_text(result: ReplayResult) -> str:
    """The summary as a table for the terminal, then the fidelity correlations."""
    objectives = ", ".join(f"{n} ({d})" for n, d in zip(result.norm.objectives, result.norm.directions))
    head = [f"replay of {result.table}: {result.trials} trials x {result.repeats} repeats per sampler "
            f"(sampler seeds {result.seed}..{result.seed + result.repeats - 1}); objectives {objectives}",
            f"hypervolume normalised over the table's designs, reference point {result.norm.reference[0]} in each; "
            f"fractions of the true front's ({result.true_hv:.4g}), thresholds on the completed designs at their "
            "seed means; median [IQR] over repeats, reached/repeats", *_scheduler_lines(result)]
    columns = ["run", "per trial", "final HV (mean, told)", "trials to 90%", "trials to 95%", "tokens to 95%",
               "x random @95% (trials, tokens)", *(["tokens x full @95%"] if result.scheduler else [])]
    rows, summary = [columns], result.summary()
    for label, s in summary.items():
        r90, r95, ratio = s["reach"]["90%"], s["reach"]["95%"], s["ratio_to_random"]["95%"]
        full = [_fmt_ratio(s["tokens_ratio_vs_full"]["95%"]) if "tokens_ratio_vs_full" in s else ""]
        rows.append([label, f"{s['s_per_trial'] * 1000:.3g} ms",
                     f"{s['final_hv_fraction_mean']['median']:.3f}, {s['final_hv_fraction']['median']:.3f}",
                     _reach_cell(r90, "trials"), _reach_cell(r95, "trials"), _reach_cell(r95, "tokens"),
                     f"{_fmt_ratio(ratio['trials'])}, {_fmt_ratio(ratio['tokens'])}", *(full if result.scheduler else [])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    notes = [f"note: {n}" for n in result.notes]
    return "\n".join([*head, *lines, *_stopped_lines(summary), *notes, fidelity_text(result.fidelity)])


def _scheduler_lines(result: ReplayResult) -> list[str]:
    s = result.scheduler
    if s is None:
        return []
    rungs = ", ".join(f"{_fmt_count(t)} ({f:.3g})" for t, f in zip(s["rung_tokens"], s["rungs"]))
    return [f"scheduler {s['name']}: rungs at {rungs} tokens (of the budget), eta {s['eta']:g}, tie-break "
            f"{s['tie_break']}; ranked on {', '.join(s['ranked_on'])}"]


def _stopped_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Trials stopped at each rung, median [IQR] per repeat, for every scheduled run."""
    out = []
    for label, s in summary.items():
        if "stopped_by_rung" in s:
            cells = [f"rung {r['rung']} ({_fmt_count(r['tokens'])}): {_fmt_count(r['stopped']['median'])} "
                     f"[{_fmt_count(r['stopped']['q25'])}-{_fmt_count(r['stopped']['q75'])}]" for r in s["stopped_by_rung"]]
            out.append(f"{label}: trials stopped per repeat at " + "; ".join(cells))
    return out


def _reach_cell(reach: dict[str, Any], axis: str) -> str:
    q, count = reach[axis], f"{reach['reached']}/{reach['of']}"
    if not reach["reached"]:
        return f"never {count}"
    return f"{_fmt_count(q['median'])} [{_fmt_count(q['q25'])}-{_fmt_count(q['q75'])}] {count}"


def _fmt_count(value: float) -> str:
    if math.isinf(value):
        return "never"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"

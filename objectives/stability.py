"""Training stability from the learning curve: how much the run spiked.

A spike is a step whose value jumps far above the run's recent level:

* the recent level at step t is the median of the previous ``LEVEL_WINDOW`` steps (short, so
  that it follows a falling loss), and the noise is the median absolute deviation (MAD, scaled
  by 1.4826 to match a standard deviation) of the step-to-step differences over the previous
  ``WINDOW`` steps, divided by √2 — a steadily falling loss is a trend, not noise;
* a **loss spike** is a step whose training loss is ``Z_MIN`` robust deviations above the
  recent median *and* at least ``LOSS_REL_MIN`` (5 %) above it; its size is the relative
  excess ``loss / median - 1`` divided by ``LOSS_REL_MIN`` (a spike just at the threshold
  counts 1, one twice as high counts 2);
* a **gradient-norm spike** is the same test on ``log(grad_norm)``, with at least a
  ``GRAD_RATIO_MIN``-fold (2×) jump; its size is ``log2(grad_norm / median)``.

``stability = sum of loss-spike sizes + sum of grad-spike sizes`` (lower is better; a smooth run
scores 0). Both thresholds are needed: the robust z-score ignores ordinary minibatch noise, and
the relative floor ignores "spikes" in a run so smooth that its MAD is tiny.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

WINDOW = 25
LEVEL_WINDOW = 5
MIN_HISTORY = 8  # no verdict before this many earlier steps
Z_MIN = 6.0
LOSS_REL_MIN = 0.05
GRAD_RATIO_MIN = 2.0
_MAD_SCALE = 1.4826


def spikes(series: Sequence[float], *, rel_floor: float, log_scale: bool) -> list[dict[str, float]]:
    """Steps where ``series`` jumps above its recent median: [{"step", "value", "median", "z"}]."""
    x = np.asarray(series, dtype=np.float64)
    if log_scale:
        x = np.log(np.maximum(x, 1e-12))
    found = []
    for t in range(MIN_HISTORY, len(x)):
        recent = x[max(0, t - WINDOW):t]
        recent = recent[np.isfinite(recent)]
        if len(recent) < MIN_HISTORY or not math.isfinite(x[t]):
            continue
        median = float(np.median(recent[-LEVEL_WINDOW:]))
        spread = max(_noise(recent), 1e-12)
        z = (x[t] - median) / spread
        excess = x[t] - median if log_scale else x[t] / max(median, 1e-12) - 1.0
        if z > Z_MIN and excess > rel_floor:
            found.append({"step": float(t), "value": float(x[t]), "median": median, "z": float(z), "excess": float(excess)})
    return found


def _noise(recent: np.ndarray) -> float:
    """Step-to-step noise of a window: MAD of its first differences / √2, blind to a slow trend
    (a falling loss would otherwise count as spread and hide real spikes)."""
    diffs = np.diff(recent)
    return _MAD_SCALE * float(np.median(np.abs(diffs - np.median(diffs)))) / math.sqrt(2.0)


def stability_report(train_losses: Sequence[float], grad_norms: Sequence[float]) -> dict[str, Any]:
    """The score and its parts, kept in the trial record so a reader can see what spiked."""
    loss = spikes(train_losses, rel_floor=LOSS_REL_MIN, log_scale=False)
    grad = spikes(grad_norms, rel_floor=math.log(GRAD_RATIO_MIN), log_scale=True)
    loss_size = sum(s["excess"] / LOSS_REL_MIN for s in loss)
    grad_size = sum(s["excess"] / math.log(2.0) for s in grad)
    return {
        "score": loss_size + grad_size,
        "loss_spikes": len(loss),
        "loss_spike_size": loss_size,
        "grad_spikes": len(grad),
        "grad_spike_size": grad_size,
        "loss_spike_steps": [int(s["step"]) for s in loss],
        "grad_spike_steps": [int(s["step"]) for s in grad],
    }


def stability(train: dict[str, Any]) -> float:
    return float(stability_report(train["train_losses"], train["grad_norms"])["score"])

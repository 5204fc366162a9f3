"""Contention: when a measurement's figures are not the design's but its neighbours'.

On a machine shared with other work a measurement can be dominated by whatever else runs: in
one quick study two near-identical designs measured 1,112 and 33,687 tokens/s, and even the
drift-corrected figures (nas/measure/reference.py) ranged from 4,005 to 64,500, because the
neighbours took the CPU during some repeats and not during the reference samples around them.
Such a measurement shows itself in three ways, each with a limit in ``[measure]``:

- ``max_spread``: a timed throughput's repeats disagree. The spread is fastest / slowest - 1
  (the same whichever way the figure is written, tokens/s or seconds per step, and near
  (max - min) / median when small); checked for every throughput, as measured and corrected.
- ``max_drift``: the machine's speed changed while a figure was timed: the reference kernel's
  rates around its repeats (``machine_speed``) spread by more than this.
- ``min_machine_speed``: the machine ran the reference kernel this far below its calibrated
  speed (the median of ``machine_speed``): most of it was someone else's. Only slowness counts:
  a machine faster than its calibration was calibrated while busy, a common factor of every
  corrected figure that leaves their ranking alone.

`contention()` gives the reasons, figure by figure ("spread 112% > limit 25%"), and how far past
its limit the worst figure is, so that the protocol can measure again and keep the quietest try.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nas.measure.settings import MeasureSettings
from nas.measure.timing import Stat

THROUGHPUTS = ("train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s")
SPEED = "machine_speed"


@dataclass(frozen=True)
class Noise:
    """What was noisy in one try: figure → why; and the worst figure's value over its limit
    (<= 1: every figure within its limit)."""

    reasons: dict[str, str] = field(default_factory=dict)
    worst: float = 0.0

    @property
    def noisy(self) -> bool:
        return bool(self.reasons)


def spread(samples: Sequence[float]) -> float:
    """Fastest over slowest repeat, minus one: 0 for one repeat or identical ones."""
    low, high = min(samples), max(samples)
    if len(samples) < 2 or high == low:
        return 0.0
    return high / low - 1 if low > 0 else float("inf")


def contention(stats: Mapping[str, Stat], kernel_speed: Mapping[str, Sequence[Sequence[float]]], s: MeasureSettings,
               first_context: int) -> Noise:
    """The noisy figures of one measurement, under ``s``'s limits (a limit of None is not checked).
    ``kernel_speed``: for each reference kernel and each timed phase it corrected, its rates around
    the repeats over its calibrated rate."""
    found: list[tuple[str, str, float]] = []  # (figure, reason, value over limit)
    if s.max_spread is not None:
        for name, stat in stats.items():
            if name.split("_ctx")[0].removesuffix("_corrected") not in THROUGHPUTS:
                continue
            if name.endswith(f"_ctx{first_context}"):  # the same repeats as the unsuffixed figure
                continue
            x = spread(stat.samples)
            if x > s.max_spread:
                found.append((name, f"spread {x:.0%} > limit {s.max_spread:.0%}", x / s.max_spread))
    for kernel, phases in kernel_speed.items():
        speeds = [x for phase in phases for x in phase]
        if not speeds:
            continue
        drift, median = max(spread(phase) for phase in phases if phase), statistics.median(speeds)
        if s.max_drift is not None and drift > s.max_drift:
            found.append((SPEED, f"{kernel} reference drifted {drift:.0%} > limit {s.max_drift:.0%}", drift / s.max_drift))
        if s.min_machine_speed is not None and median < s.min_machine_speed:
            found.append((SPEED, f"{kernel} reference ran at {median:.2f}x its calibrated speed < limit "
                                 f"{s.min_machine_speed:.2f}x", s.min_machine_speed / max(median, 1e-9)))
    reasons: dict[str, str] = {}
    for name, reason, _ in found:
        reasons[name] = f"{reasons[name]}; {reason}" if name in reasons else reason
    return Noise(reasons=reasons, worst=max((over for *_, over in found), default=0.0))

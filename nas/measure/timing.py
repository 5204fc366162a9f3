"""The timing protocol: warm-up, repeats long enough to time, the median and its spread.

CUDA is timed with events and synchronisation, the CPU with `perf_counter`; a reference kernel
(nas/measure/reference.py) can be timed around every repeat to sample the machine's speed.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class Stat:
    """A measured figure: the median over repeats, its spread, and the repeats themselves."""

    median: float
    cv: float | None  # sample standard deviation / mean; None with a single repeat
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float] | tuple[float, ...]) -> Stat:
        if not samples:
            raise ValueError("a figure needs at least one sample")
        return cls(median=statistics.median(samples), cv=coefficient_of_variation(samples), samples=tuple(samples))


def coefficient_of_variation(samples: list[float] | tuple[float, ...]) -> float | None:
    if len(samples) < 2:
        return None
    mean = statistics.fmean(samples)
    return statistics.stdev(samples) / mean if mean else None


@dataclass(frozen=True, kw_only=True)
class Timing:
    seconds: tuple[float, ...]  # per call, one entry per repeat
    calls_per_repeat: int
    energy_j: float | None  # over all timed calls; None without an energy counter
    reference_seconds: tuple[float, ...] | None = None  # per repeat: a reference call around it

    @property
    def calls(self) -> int:
        return self.calls_per_repeat * len(self.seconds)

    def rate(self, units_per_call: float) -> Stat:
        """Units (tokens, FLOPs) per second, one sample per repeat."""
        return Stat.of([units_per_call / s for s in self.seconds])

    def reference_rate(self, reference_units: float) -> Stat:
        """The reference kernel's units per second, one sample per repeat: the machine's speed."""
        if self.reference_seconds is None:
            raise ValueError("this timing has no reference: pass reference= to time_calls")
        return Stat.of([reference_units / r for r in self.reference_seconds])

    def corrected_rate(self, units_per_call: float, reference_units: float, calibrated_rate: float) -> Stat:
        """Units per second as if the machine ran the reference at `calibrated_rate`: each repeat's
        rate scaled by calibrated / (the reference's rate around that repeat)."""
        speeds = self.reference_rate(reference_units).samples
        return Stat.of([units_per_call / s * calibrated_rate / r for s, r in zip(self.seconds, speeds)])


class _Clock:
    """Times one callable on a device, and adds up the energy counter over the timed windows."""

    def __init__(self, device: torch.device, energy_mj: Callable[[], int | None] | None = None) -> None:
        self.device, self.energy_mj = device, energy_mj
        self.energy_j: float | None = 0.0 if energy_mj is not None else None

    def time(self, fn: Callable[[], object]) -> float:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)  # earlier, untimed work must not leak into this window
        e0 = self.energy_mj() if self.energy_mj else None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        if e0 is not None and self.energy_mj is not None:
            e1 = self.energy_mj()
            self.energy_j = None if e1 is None or self.energy_j is None else self.energy_j + (e1 - e0) / 1000
        return seconds


def time_calls(
    step: Callable[[], object],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    min_repeat_s: float = 0.0,
    prepare: Callable[[], object] | None = None,
    energy_mj: Callable[[], int | None] | None = None,
    reference: Callable[[], float] | None = None,
) -> Timing:
    """Warm up, then time `repeats` repeats of `step`.

    A repeat runs `step` enough times to last `min_repeat_s` (calibrated on the last warm-up
    call). `prepare` runs untimed before every call (a fresh cache and its prefill, say); without
    it the calls of a repeat run back to back under one timer, as a training loop does.
    `reference` (seconds of one reference-kernel sample, see nas/measure/reference.py) runs before the
    first repeat and after each one; a repeat's reference time is the mean of the two around it,
    so the machine's speed is sampled where the repeat ran. It is outside the timed windows.
    """
    clock = _Clock(device)
    last = 0.0
    for _ in range(warmup):
        if prepare is not None:
            prepare()
        last = clock.time(step)
    calls = max(1, math.ceil(min_repeat_s / last)) if warmup and last > 0 else 1
    clock = _Clock(device, energy_mj)
    seconds, around = [], []
    before = reference() if reference is not None else 0.0
    for _ in range(repeats):
        if prepare is None:
            seconds.append(clock.time(lambda: [step() for _ in range(calls)]) / calls)
        else:
            total = 0.0
            for _ in range(calls):
                prepare()
                total += clock.time(step)
            seconds.append(total / calls)
        if reference is not None:
            after = reference()
            around.append((before + after) / 2)
            before = after
    return Timing(seconds=tuple(seconds), calls_per_repeat=calls, energy_j=clock.energy_j,
                  reference_seconds=tuple(around) if reference is not None else None)

"""How one design is measured: `MeasureSettings`, validated where it enters."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field

from search_spaces.spec import ArchSpec

PHASES: tuple[str, ...] = ("train", "prefill", "decode", "memory")
AUTOCAST: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
SDPA_BACKENDS: tuple[str, ...] = ("math", "flash", "efficient", "cudnn")
# The contention limits' defaults (nas/measure/noise.py; README, "noisy"): a quiet 2-core VM stays
# inside them (its matmul drifts by about ±10% between windows, repeats agree to a few per cent);
# neighbours that take a core push every one of them past.
MAX_SPREAD = 0.25  # fastest repeat / slowest - 1
MAX_DRIFT = 0.25  # the same, of the reference kernel's rates around the repeats
MIN_MACHINE_SPEED = 0.7  # the reference's median rate over its calibrated rate
MAX_REMEASURES = 2


@dataclass(frozen=True, kw_only=True)
class MeasureSettings:
    """How one design is measured. The settings are stored in the fingerprint beside the figures."""

    batch_size: int = 8  # training throughput and peak memory
    seq_len: int | None = None  # None → spec.context
    decode_contexts: tuple[int, ...] | None = None  # tokens in the cache at the end; None → (spec.context,)
    decode_batch: int = 1  # batch of prefill and decode
    decode_tokens: int = 32  # tokens decoded per timed call (at most half the context)
    warmup: int = 2
    repeats: int = 5
    min_repeat_s: float = 0.2  # a repeat runs the step enough times to last this long
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"  # autocast dtype; "float32" runs without autocast
    compile: bool = False  # torch.compile the model
    sdpa_backend: str | None = None  # torch.nn.attention.sdpa_kernel: math | flash | efficient | cudnn
    threads: int | None = None  # torch intra-op threads while measuring; None leaves them
    include: tuple[str, ...] = PHASES
    seed: int = 0
    lock: bool = True  # hold measurement_lock(); off only for callers that hold it themselves
    # Contention (nas/measure/noise.py): a measurement past one of these limits is measured again,
    # up to max_remeasures times, and the quietest try is kept, flagged `noisy` if still past one.
    # inf (0 for min_machine_speed; None from Python) turns a check off. Left out of a stored
    # config at their defaults, so that studies stored before them keep their config and resume.
    max_spread: Annotated[float | None, Field(exclude_if=lambda v: v == MAX_SPREAD)] = MAX_SPREAD
    max_drift: Annotated[float | None, Field(exclude_if=lambda v: v == MAX_DRIFT)] = MAX_DRIFT
    min_machine_speed: Annotated[float | None, Field(exclude_if=lambda v: v == MIN_MACHINE_SPEED)] = MIN_MACHINE_SPEED
    max_remeasures: Annotated[int, Field(exclude_if=lambda v: v == MAX_REMEASURES)] = MAX_REMEASURES

    def __post_init__(self) -> None:
        # JSON and the command line give lists; the frozen record keeps tuples.
        for name in ("decode_contexts", "include"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("batch_size", "decode_batch", "decode_tokens", "repeats"):
            _check_int(name, getattr(self, name), 1)
        _check_int("warmup", self.warmup, 0)
        _check_int("max_remeasures", self.max_remeasures, 0)
        for name in ("max_spread", "max_drift"):
            _check_limit(name, getattr(self, name), "> 0", lambda v: v > 0, "0.25, or inf for no check")
        _check_limit("min_machine_speed", self.min_machine_speed, "in [0, 1]", lambda v: 0 <= v <= 1,
                     "0.7, or 0 for no check")
        for name in ("seq_len", "threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.decode_contexts is not None:
            if not self.decode_contexts:
                raise ValueError("decode_contexts is empty; give at least one context, e.g. [512, 2048], or null")
            for c in self.decode_contexts:
                _check_int("decode_contexts", c, 2)
        if not isinstance(self.min_repeat_s, (int, float)) or self.min_repeat_s < 0:
            raise ValueError(f"min_repeat_s={self.min_repeat_s!r} must be a number >= 0 (seconds)")
        if self.dtype not in AUTOCAST:
            raise ValueError(f"dtype={self.dtype!r} is not known; use one of {list(AUTOCAST)}")
        if self.sdpa_backend is not None and self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(
                f"sdpa_backend={self.sdpa_backend!r} is not known; use one of {list(SDPA_BACKENDS)} or null")
        unknown = sorted(set(self.include) - set(PHASES))
        if unknown or not self.include:
            raise ValueError(f"include={list(self.include)} must be a non-empty subset of {list(PHASES)}")
        if self.compile and self.warmup < 1:
            raise ValueError("compile=true needs warmup >= 1, so that compilation is not timed")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def seq_len_for(self, spec: ArchSpec) -> int:
        T = spec.context if self.seq_len is None else self.seq_len
        if T > spec.context:
            raise ValueError(f"seq_len={T} exceeds the design's context={spec.context}; use at most {spec.context}")
        return T

    def contexts_for(self, spec: ArchSpec) -> tuple[int, ...]:
        contexts = (spec.context,) if self.decode_contexts is None else self.decode_contexts
        fixed = spec.pos == "learned" or any(layer.attn == "mixer" for layer in spec.layers)
        if fixed and max(contexts) > spec.context:  # found before the training phase, not after it
            raise ValueError(f"decode_contexts={list(contexts)} exceed the design's context={spec.context}, the most "
                             "that learned positions or a mixer layer can take; use contexts up to it")
        return contexts


def _check_limit(name: str, value: object, rule: str, ok: Callable[[float], bool], example: str) -> None:
    if value is None:  # no check (the Python API; a file says inf, or 0 for min_machine_speed)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
        raise ValueError(f"{name}={value!r} must be a number {rule}, e.g. {example}")


def _check_int(name: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer >= {least}")

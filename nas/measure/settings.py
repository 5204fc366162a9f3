"""How one design is measured: `MeasureSettings`, validated where it enters."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from search_spaces.spec import ArchSpec

PHASES: tuple[str, ...] = ("train", "prefill", "decode", "memory")
AUTOCAST: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
SDPA_BACKENDS: tuple[str, ...] = ("math", "flash", "efficient", "cudnn")


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

    def __post_init__(self) -> None:
        # JSON and the command line give lists; the frozen record keeps tuples.
        for name in ("decode_contexts", "include"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("batch_size", "decode_batch", "decode_tokens", "repeats"):
            _check_int(name, getattr(self, name), 1)
        _check_int("warmup", self.warmup, 0)
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
        return (spec.context,) if self.decode_contexts is None else self.decode_contexts


def _check_int(name: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer >= {least}")

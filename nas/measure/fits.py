"""Does a measurement, or a training run, fit in memory? Checked before anything is built.

A design whose context does not fit otherwise gets as far as the allocator, which fails with
a raw ``RuntimeError`` asking for tens of GB (or, on a CPU with overcommit, the kernel kills the
process). The need here is a lower bound from the exact costs (``nas.costs``): the tensors
such a run cannot do without, nothing for the allocator's slack or the activations a kernel
keeps. Refusing only when even that exceeds the free memory never refuses a run that fits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nas.costs import dtype_bytes, kv_cache_bytes, param_count
from search_spaces.spec import ArchSpec

FP32 = 4


@dataclass(frozen=True)
class Part:
    """One tensor (or group of tensors) a run must hold, and the setting that shrinks it."""

    what: str
    bytes: int
    fix: str


def training_parts(spec: ArchSpec, batch: int, seq_len: int) -> list[Part]:
    """Held at once by a training step (forward, backward, AdamW) on ``batch`` x ``seq_len`` tokens."""
    tokens = batch * seq_len
    design = "a smaller design (d_model, ffn_dim, layers, vocab_size; a mixer layer holds n_heads x context^2)"
    return [
        Part("fp32 weights, gradients and AdamW state", 4 * FP32 * param_count(spec), design),
        # The logits and the log-softmax cross-entropy keeps for backward: two (B, T, vocab) tensors.
        Part(f"logits at batch {batch} x seq_len {seq_len} x vocab {spec.vocab_size}",
             2 * FP32 * tokens * spec.vocab_size, "lower batch_size or seq_len (or the spec's context)"),
        # Every block keeps at least its input for the backward pass.
        Part(f"the inputs {spec.n_layers} layer(s) keep for backward", FP32 * tokens * spec.d_model * spec.n_layers,
             "lower batch_size or seq_len (or the spec's context)"),
        _mask(spec, seq_len, "lower seq_len (or the spec's context)"),
    ]


def inference_parts(spec: ArchSpec, batch: int, context: int, dtype: str) -> list[Part]:
    """Held by a prefill of ``batch`` x ``context`` tokens into a cache of that size."""
    return [
        Part("fp32 weights", FP32 * param_count(spec), "a smaller design (d_model, ffn_dim, layers, vocab_size)"),
        Part(f"the KV cache at decode context {context} x batch {batch}",
             kv_cache_bytes(spec, context, batch=batch, dtype=dtype), "lower decode_contexts or decode_batch"),
        Part(f"prefill logits at decode context {context} x batch {batch}",
             dtype_bytes(dtype) * batch * context * spec.vocab_size, "lower decode_contexts or decode_batch"),
        _mask(spec, context, "lower decode_contexts (or the spec's context)"),
    ]


def _mask(spec: ArchSpec, T: int, fix: str) -> Part:
    """A causal attention layer's forward over T > 1 tokens builds a (T, T) mask of int64 query-key
    distances and its bool result (`allowed` in nas/model.py), 9 bytes per entry, layer by layer."""
    attends = spec.causal and T > 1 and any(layer.attn == "attention" for layer in spec.layers)
    return Part(f"the {T} x {T} causal mask", 9 * T * T if attends else 0, fix)


def free_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes this process can still allocate on ``device``, where the figure comes from), or None
    when the platform does not say."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"{device} (torch.cuda.mem_get_info)"
    limits = [(b, src) for b, src in (_meminfo_available(), _cgroup_room()) if b is not None]
    return min(limits) if limits else None


def check_fits(parts: list[Part], device: torch.device, doing: str) -> None:
    """ValueError naming the need, the free memory and the setting to change, when even the lower
    bound ``parts`` does not fit on ``device``."""
    need = sum(p.bytes for p in parts)
    room = free_bytes(device)
    if room is None or need <= room[0]:
        return
    top = sorted(parts, key=lambda p: p.bytes, reverse=True)
    detail = ", ".join(f"{p.what} {_gb(p.bytes)}" for p in top if p.bytes)
    raise ValueError(f"{doing} needs at least {_gb(need)} of memory ({detail}), but only {_gb(room[0])} is free "
                     f"on {room[1]}; {top[0].fix}")


def check_measure_fits(spec: ArchSpec, *, batch: int, seq_len: int, phases: tuple[str, ...], decode_batch: int,
                       contexts: tuple[int, ...], cache_dtype: str, device: torch.device) -> None:
    """The larger of the training and the inference phase of a measurement must fit (they run one
    after the other, each on a fresh model)."""
    candidates = []
    if {"train", "memory"} & set(phases):
        candidates.append(training_parts(spec, batch, seq_len))
    if {"prefill", "decode", "memory"} & set(phases):
        candidates.append(inference_parts(spec, decode_batch, max(contexts), cache_dtype))
    if candidates:
        check_fits(max(candidates, key=lambda parts: sum(p.bytes for p in parts)), device,
                   f"measuring design {spec.hash}")


def check_train_fits(spec: ArchSpec, *, batch: int, seq_len: int | None, device: torch.device) -> None:
    """A training run of ``batch`` x ``seq_len`` (None: the context) tokens a step must fit."""
    T = min(spec.context, seq_len or spec.context)  # a longer seq_len is train()'s own error
    check_fits(training_parts(spec, batch, T), device, f"training design {spec.hash}")


def _gb(n: int) -> str:
    if n >= 1e12:
        return f"{n / 1e12:,.1f} TB"
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _meminfo_available() -> tuple[int | None, str]:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "the CPU (MemAvailable in /proc/meminfo)"
    except OSError:
        pass
    return None, ""


def _cgroup_room() -> tuple[int | None, str]:
    """What this container's memory limit leaves (cgroup v2, else v1), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as fh:
                limit = fh.read().strip()
            with open(usage_file, encoding="ascii") as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(limit) - usage, f"the CPU (the container's memory limit, {limit_file})"
    return None, ""

"""Every objective by name. ``get_objective("probe:mqar")`` builds a probe-accuracy objective
for any probe task; the others are fixed entries of ``OBJECTIVES``."""
from __future__ import annotations

from typing import Any

from objectives.base import Direction, Objective
from objectives.stability import stability

PROBE_PREFIX = "probe:"


def _cost(name: str, unit: str, description: str) -> Objective:
    return Objective(name=name, direction="minimize", needs=frozenset({"costs"}), unit=unit,
                     description=description, read=lambda r: r["costs"][name])


def _measured(name: str, direction: Direction, unit: str, description: str) -> Objective:
    return Objective(name=name, direction=direction, needs=frozenset({"measure"}), unit=unit,
                     description=description, read=lambda r: r["measure"][name])


def _trained(name: str, unit: str, description: str) -> Objective:
    return Objective(name=name, direction="minimize", needs=frozenset({"train"}), unit=unit,
                     description=description, read=lambda r: r["train"][name])


_ALL = [
    _trained("val_loss", "nats/token", "validation cross-entropy after the trial's token budget"),
    _trained("bits_per_byte", "bits/byte", "validation loss in bits per byte of text (byte-level corpora)"),
    Objective(name="stability", direction="minimize", needs=frozenset({"train"}), unit="spike units",
              description="loss and gradient-norm spikes over the learning curve (objectives/stability.py)",
              read=lambda r: stability(r["train"])),
    _cost("params", "parameters", "trainable parameters"),
    _cost("attention_params", "parameters", "parameters of the token mixers (projections, output)"),
    _cost("kv_cache_bytes_per_token", "bytes/token", "KV-cache bytes per generated token (bf16, whole model)"),
    _cost("flops_per_token", "FLOPs/token", "training FLOPs per token (forward + backward)"),
    _cost("flops_per_token_decode", "FLOPs/token", "FLOPs to decode one token at full context"),
    _measured("train_tokens_per_s", "maximize", "tokens/s", "measured training throughput (median of repeats)"),
    _measured("prefill_tokens_per_s", "maximize", "tokens/s", "measured prefill throughput"),
    _measured("decode_tokens_per_s", "maximize", "tokens/s", "measured decoding throughput with the KV cache"),
    # The same repeats corrected for the machine's drift (nas/measure/reference.py): on a shared or
    # virtual machine these rank designs measured minutes apart fairly.
    _measured("train_tokens_per_s_corrected", "maximize", "tokens/s",
              "training throughput at the node's calibrated speed (drift-corrected)"),
    _measured("prefill_tokens_per_s_corrected", "maximize", "tokens/s",
              "prefill throughput at the node's calibrated speed (drift-corrected)"),
    _measured("decode_tokens_per_s_corrected", "maximize", "tokens/s",
              "decoding throughput at the node's calibrated speed (drift-corrected)"),
    _measured("mfu", "maximize", "fraction", "model FLOP utilisation: analytic FLOP/s over a matmul's, per repeat"),
    _measured("peak_memory_mb", "minimize", "MB", "peak memory of a training step"),
    _measured("decode_memory_mb", "minimize", "MB", "peak memory while decoding"),
    _measured("energy_j_per_token", "minimize", "J/token", "training energy per token (NVML; GPUs only)"),
]
OBJECTIVES: dict[str, Objective] = {o.name: o for o in _ALL}


def probe_objective(task: str) -> Objective:
    """Accuracy on a probe task's held-out queries; the task name is checked against the probes."""
    from objectives.probes import PROBE_TASKS  # lazily: the probe generators need numpy only

    if task not in PROBE_TASKS:
        raise ValueError(f"objective 'probe:{task}': unknown probe task; use probe:<task> with a task in {list(PROBE_TASKS)}")

    def read(record: dict[str, Any]) -> Any:
        return record["probes"][task]["accuracy"]

    return Objective(name=PROBE_PREFIX + task, direction="maximize", needs=frozenset({"probe"}), unit="accuracy",
                     description=f"accuracy on the {task} probe's queried test positions", read=read)


def get_objective(name: str) -> Objective:
    if name.startswith(PROBE_PREFIX):
        return probe_objective(name[len(PROBE_PREFIX):])
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is not known; use one of {sorted(OBJECTIVES)} or probe:<task>")
    return OBJECTIVES[name]


def probe_task(name: str) -> str | None:
    """The probe task an objective name refers to, or None."""
    return name[len(PROBE_PREFIX):] if name.startswith(PROBE_PREFIX) else None

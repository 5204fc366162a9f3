"""Every objective by name. ``get_objective("probe:mqar")`` builds a probe-accuracy objective
for any probe task; the others are fixed entries of ``OBJECTIVES``."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from objectives.base import Direction, Objective
from objectives.plugins import installed_objectives, plugin_objective
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
BUILTIN_OBJECTIVES: Mapping[str, Objective] = MappingProxyType({o.name: o for o in _ALL})
# An objective added here at run time exists in this process only: a user's objective is named
# by import path or entry point instead (objectives/plugins.py).
OBJECTIVES: dict[str, Objective] = dict(BUILTIN_OBJECTIVES)

# The phase of a measurement (``MeasureSettings.include`` in nas/measure) each measured objective
# comes from: a study that leaves the phase out would fail every trial.
MEASURE_PHASE: dict[str, str] = {
    "train_tokens_per_s": "train", "train_tokens_per_s_corrected": "train", "mfu": "train",
    "energy_j_per_token": "train", "prefill_tokens_per_s": "prefill", "prefill_tokens_per_s_corrected": "prefill",
    "decode_tokens_per_s": "decode", "decode_tokens_per_s_corrected": "decode",
    "peak_memory_mb": "memory", "decode_memory_mb": "memory",
}
# Incremental decoding: an encoder (causal=false) has none, so these are never measured for it.
DECODING: frozenset[str] = frozenset({"decode_tokens_per_s", "decode_tokens_per_s_corrected", "decode_memory_mb"})
# Read from NVML's total-energy counter of an NVIDIA GPU: nothing else measures them.
NVML_ENERGY: frozenset[str] = frozenset({"energy_j_per_token"})


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
    """A built-in objective, ``probe:<task>``, ``"package.module:attr"`` or an installed entry point
    of ``qkvnas.objectives`` (objectives/plugins.py)."""
    if name.startswith(PROBE_PREFIX):
        return probe_objective(name[len(PROBE_PREFIX):])
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    objective = plugin_objective(name)
    if objective is None:
        installed = installed_objectives()
        raise ValueError(f"objective {name!r} is not known; use one of {sorted(BUILTIN_OBJECTIVES)}, probe:<task>"
                         f"{', an installed one ' + str(installed) if installed else ''} or an import path "
                         "'package.module:objective'")
    return objective


def probe_task(name: str) -> str | None:
    """The probe task an objective name refers to, or None."""
    return name[len(PROBE_PREFIX):] if name.startswith(PROBE_PREFIX) else None

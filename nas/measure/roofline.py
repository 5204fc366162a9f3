"""The decode roofline: the tokens/s this machine allows a design's decoding, from its exact costs.

A decode step must read its weights once and, for each sequence, the cached entries of every key
it attends to (`nas.costs.decode_step_bytes`), and do its FLOPs (`nas.costs.decode_flops_per_token`
per sequence). On a machine that reads `bandwidth` bytes/s and multiplies at `peak_flops` FLOP/s
it cannot take less than the longer of the two:

    step_s = max(bytes / bandwidth, flops / peak_flops)

The measured decode steps end with `context` tokens in the cache, so step i of n runs with
context - n + i cached tokens; the roofline is their tokens over the sum of their step_s, and
`decode_roofline_frac` is the measured tokens/s over it: how close the implementation comes to the
hardware's limit. Both rates are the node's calibrations (nas/measure/reference.py): a large copy
and a large matmul in the measured dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

from nas.costs import decode_flops_per_token, decode_step_bytes
from search_spaces.spec import ArchSpec


@dataclass(frozen=True, kw_only=True)
class Machine:
    """What bounds a decode step: memory bandwidth and matmul peak."""

    bandwidth: float  # bytes/s of a large copy
    peak_flops: float  # FLOP/s of a large matmul in the measured dtype


def decode_step_s(spec: ArchSpec, n_cached: int, *, batch: int, dtype: str, machine: Machine) -> float:
    """The least time one decode step of `batch` sequences can take with `n_cached` tokens cached."""
    read = decode_step_bytes(spec, n_cached, batch=batch, dtype=dtype)
    flops = batch * decode_flops_per_token(spec, n_cached)
    return max(read / machine.bandwidth, flops / machine.peak_flops)


def decode_roofline_tokens_per_s(spec: ArchSpec, *, context: int, steps: int, batch: int, dtype: str,
                                 machine: Machine) -> float:
    """Tokens/s the machine allows for `steps` greedy steps that end with `context` tokens cached."""
    if not 1 <= steps < context:
        raise ValueError(f"steps={steps} must be in 1..context-1 (context={context})")
    seconds = sum(decode_step_s(spec, context - steps + i, batch=batch, dtype=dtype, machine=machine)
                  for i in range(steps))
    return batch * steps / seconds

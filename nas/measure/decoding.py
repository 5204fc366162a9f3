"""Greedy decoding with and without the KV cache, and its timed measurement at one context."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nas.measure.timing import Stat, Timing, time_calls

if TYPE_CHECKING:  # nas.model is imported where a model is built, not with this module
    from nas.kv_cache import CacheLayout
    from nas.model import Transformer


@dataclass
class DecodeState:
    cache: Any  # nas.kv_cache.KVCache, or None when every step recomputes the prefix
    tokens: Tensor  # (B, S) tokens so far (only grown without a cache)
    nxt: Tensor  # (B, 1) the token to feed next


def start_decode(model: Transformer, prefix: Tensor, *, use_cache: bool, max_tokens: int | None = None,
                 layout: CacheLayout = "static") -> DecodeState:
    """Run the prefix once (the prefill) and pick the first token greedily. The cache is made for
    `max_tokens` tokens (default: the model's context) in `layout` (nas/kv_cache.py)."""
    cache = model.new_cache(prefix.shape[0], max_tokens, layout=layout) if use_cache else None
    logits = model(prefix, cache)  # (B, P, V)
    return DecodeState(cache=cache, tokens=prefix, nxt=logits[:, -1].argmax(-1, keepdim=True))


def decode(model: Transformer, state: DecodeState, n_tokens: int) -> None:
    """Greedy decoding of `n_tokens`: one token per step with the cache, else the whole sequence."""
    for _ in range(n_tokens):
        if state.cache is not None:
            logits = model(state.nxt, state.cache)  # (B, 1, V)
        else:
            state.tokens = torch.cat([state.tokens, state.nxt], dim=1)
            logits = model(state.tokens)  # (B, S, V): the prefix is recomputed every step
        state.nxt = logits[:, -1].argmax(-1, keepdim=True)


def decode_steps_for(context: int, decode_tokens: int) -> int:
    """Tokens decoded at `context`: at most half of it, so the steps run near that context."""
    return max(1, min(decode_tokens, context // 2))


def measure_decode(
    model: Transformer,
    *,
    context: int,
    batch: int = 1,
    decode_tokens: int = 32,
    use_cache: bool = True,
    layout: CacheLayout = "static",
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    min_repeat_s: float = 0.0,
    seed: int = 0,
    energy_mj: Callable[[], int | None] | None = None,
    reference: Callable[[], float] | None = None,
) -> tuple[Stat, Timing, DecodeState]:
    """Decode tokens/s at `context`: the prefix (context - n tokens) runs untimed, then n greedy
    steps are timed, so the cache (made for `context` tokens, in `layout`) holds `context` tokens
    at the end. Returns the last state."""
    device = torch.device(device)
    n = decode_steps_for(context, decode_tokens)
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, model.spec.vocab_size, (batch, context - n), generator=gen).to(device)
    box: dict[str, DecodeState] = {}

    def prepare() -> None:
        box.pop("state", None)  # free the last cache before the next prefill
        box["state"] = start_decode(model, prefix, use_cache=use_cache, max_tokens=context, layout=layout)

    with torch.no_grad():
        timing = time_calls(lambda: decode(model, box["state"], n), device=device, warmup=warmup, repeats=repeats,
                            min_repeat_s=min_repeat_s, prepare=prepare, energy_mj=energy_mj, reference=reference)
    return timing.rate(batch * n), timing, box["state"]

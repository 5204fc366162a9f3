"""Scaling a design: ``scale_spec(spec, d_model=64, repeats=2)`` is the same design at another
width and depth, for scaling ladders.

Scaling keeps a design's per-layer pattern: depth repeats the pattern (``kv_from`` indices are
remapped into each copy), width keeps the head dimension (heads proportional to d_model), keeps
each layer's query-to-K/V-head ratio (GQA groups grow with the heads; MQA keeps its single K/V
head), and scales the FFN width, ranks and latents with d_model.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.spec import ArchSpec, LayerSpec


def scale_spec(spec: ArchSpec, *, d_model: int, repeats: int = 1) -> ArchSpec:
    """The design at width ``d_model`` with its layer pattern repeated ``repeats`` times."""
    if d_model % spec.head_dim:
        raise ValueError(f"d_model={d_model} is not a multiple of the design's head dimension {spec.head_dim} "
                         f"(d_model/n_heads = {spec.d_model}/{spec.n_heads}); use a multiple of {spec.head_dim}")
    n_heads = d_model // spec.head_dim
    factor = d_model / spec.d_model
    layers = [
        _scale_layer(spec, layer, i, n_heads=n_heads, d_model=d_model, factor=factor, offset=copy * spec.n_layers)
        for copy in range(repeats) for i, layer in enumerate(spec.layers)
    ]
    return dataclasses.replace(spec, d_model=d_model, n_heads=n_heads, ffn_dim=max(1, round(spec.ffn_dim * factor)),
                               layers=tuple(layers))


def _scale_layer(spec: ArchSpec, layer: LayerSpec, i: int, *, n_heads: int, d_model: int, factor: float,
                 offset: int) -> LayerSpec:
    if layer.attn != "attention":
        return layer
    assert layer.n_kv_heads is not None
    group = spec.n_heads // layer.n_kv_heads  # query heads per K/V head
    if layer.n_kv_heads == 1 and spec.n_heads > 1:
        kv_heads = 1  # MQA stays MQA: one K/V head at every width
    elif n_heads % group:
        raise ValueError(
            f"layers[{i}] shares one K/V head among {group} query heads, but d_model={d_model} gives {n_heads} "
            f"heads; use a d_model whose head count is a multiple of {group}"
        )
    else:
        kv_heads = n_heads // group
    changes: dict[str, Any] = {"n_kv_heads": kv_heads}
    for name in ("qk_rank", "v_rank", "kv_latent"):
        rank = getattr(layer, name)
        if rank is not None:
            changes[name] = min(d_model - 1, max(1, round(rank * factor)))
    if layer.kv_from is not None:
        changes["kv_from"] = layer.kv_from + offset
    return dataclasses.replace(layer, **changes)

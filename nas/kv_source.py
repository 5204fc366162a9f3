"""Where a layer's K and V come from: the one rule that `nas/model.py` (a module per source)
and `nas/costs.py` (a cost function per source) both dispatch on.

Kept apart from both, and free of torch, so that the costs stay computable from the spec alone
and the two registries cannot disagree on which source a layer has.
"""
from __future__ import annotations

from typing import Literal, get_args

from search_spaces.spec import LayerSpec

KVSourceName = Literal["dense", "tied", "latent", "borrowed"]
KV_SOURCE_NAMES: tuple[KVSourceName, ...] = get_args(KVSourceName)


def kv_source_name(layer: LayerSpec) -> KVSourceName:
    """The K/V source of an attention layer.

    Borrowing (`kv_from`) wins over every other K/V field: such a layer projects no K/V of its
    own. Then a latent (`kv_latent`, with V tied to K or not), then V tied to K, then dense.
    """
    if layer.kv_from is not None:
        return "borrowed"
    if layer.kv_latent is not None:
        return "latent"
    return "tied" if layer.v_is_k else "dense"


def has_q_projection(layer: LayerSpec) -> bool:
    """Q is K only where the layer projects its own K: a borrowing layer keeps a Q projection."""
    return not layer.q_is_k or kv_source_name(layer) == "borrowed"

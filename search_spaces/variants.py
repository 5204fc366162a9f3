"""Named designs: `variant("q_kv+gqa4", base=spec)` applies one design to every layer of a base.

Grammar: a projection mode (`qkv`, `q_kv`, `qk_v`, `qkv_single`) or `mixer`, followed by any of
`+gqa<G>` (G K/V heads), `+mqa`, `+2d` (asymmetric positional term), `+latent<R>`,
`+lowrank<R>` (Q/K and V factorised at rank R), `+cla2` (odd layers reuse the K/V of the layer
before), `+window<W>`, `+dconv`, `+noattn<N>` (layers N-1, 2N-1, ... keep only their FFN).
"""
from __future__ import annotations

import dataclasses
import re

from search_spaces.spec import PROJ_MODES, ArchSpec, LayerSpec

DEFAULT_BASE = ArchSpec(vocab_size=256, context=256, d_model=128, n_heads=4, ffn_dim=512)

_MODIFIER = re.compile(r"^(gqa|latent|lowrank|window|noattn)(\d+)$|^(mqa|2d|cla2|dconv)$")


def variant(name: str, *, base: ArchSpec | None = None) -> ArchSpec:
    base = base or DEFAULT_BASE
    head, *mods = name.strip().split("+")
    if head == "mixer":
        layer = LayerSpec(attn="mixer")
    elif head in PROJ_MODES:
        layer = LayerSpec(proj=head)  # type: ignore[arg-type]
    else:
        raise ValueError(f"variant {name!r}: unknown design {head!r}; start with one of {list(PROJ_MODES) + ['mixer']}")
    changes: dict[str, object] = {}
    cla, noattn_every = False, 0
    for mod in mods:
        m = _MODIFIER.match(mod)
        if not m:
            raise ValueError(
                f"variant {name!r}: unknown modifier {mod!r}; use gqa<G>, mqa, 2d, latent<R>, lowrank<R>, "
                "cla2, window<W>, dconv or noattn<N>"
            )
        key, number = (m.group(1), int(m.group(2))) if m.group(1) else (m.group(3), 0)
        if key == "gqa":
            changes["n_kv_heads"] = number
        elif key == "mqa":
            changes["n_kv_heads"] = 1
        elif key == "2d":
            changes["asym_pos"] = True
        elif key == "latent":
            changes["kv_latent"] = number
        elif key == "lowrank":
            changes["qk_rank"] = number
            if layer.proj in ("qkv", "qk_v"):
                changes["v_rank"] = number
        elif key == "window":
            changes["window"] = number
        elif key == "dconv":
            changes["dconv"] = True
        elif key == "cla2":
            cla = True
        elif key == "noattn":
            noattn_every = number
    if layer.attn == "mixer" and changes:
        raise ValueError(f"variant {name!r}: a mixer layer takes no attention modifiers")
    try:
        one = dataclasses.replace(layer, **changes)  # type: ignore[arg-type]
        layers: list[LayerSpec] = []
        for i in range(base.n_layers):
            this = one
            if noattn_every and i % noattn_every == noattn_every - 1:
                this = LayerSpec(attn="none")
            elif cla and i % 2 == 1 and layers[i - 1].attn == "attention":
                this = dataclasses.replace(
                    one, proj="qkv", kv_from=i - 1, kv_latent=None, v_rank=None, asym_pos=False, dconv=False
                )
            layers.append(this)
        return base.with_layers(layers)
    except ValueError as err:
        raise ValueError(f"variant {name!r} on this base: {err}") from None

"""Every attention design of the search space, in one readable module.

`build_model(spec)` returns a decoder-only LM (or a bidirectional encoder when
`spec.causal` is false). One `Attention` class covers every projection design: tied
projections exist once as parameters and run once as matmuls, so a `q_kv` layer computes
two projections and a `qkv_single` layer one. Where K and V come from is a small module,
a `KVSource` (dense, V tied to K, a latent, borrowed from an earlier layer), and each source
holds its own cache rule: incremental decoding keeps a `KVCache` (nas/kv_cache.py) that stores
only what the design needs (K only when V is K, the latent for `kv_latent`, a ring of `window`
slots, nothing for `kv_from` or attention-free layers), allocated once and written in place.

Shapes: B batch, T new tokens, S cached+new keys, h query heads, g K/V heads, hd head dim.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.kv_cache import CacheLayout, CacheOwner, KVCache, LayerCache, fill_cache, uncached
from nas.kv_source import KVSourceName, has_q_projection, kv_source_name
from search_spaces.spec import ASYM_CHANNELS, DCONV_KERNEL, ArchSpec, LayerSpec

ROPE_BASE = 10000.0


# ---- building blocks ------------------------------------------------------------------
def projection(d_in: int, d_out: int, rank: int | None, bias: bool) -> nn.Module:
    """A dense projection, or W = A·B through an inner dimension `rank`."""
    if rank is None:
        return nn.Linear(d_in, d_out, bias=bias)
    return nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=bias))


def norm(spec: ArchSpec) -> nn.Module:
    if spec.norm == "rmsnorm":
        return nn.RMSNorm(spec.d_model)
    return nn.LayerNorm(spec.d_model, bias=spec.bias)


class CausalDepthwiseConv(nn.Module):
    """Primer-EZ: a depthwise 3x1 convolution over time that sees only the past."""

    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, DCONV_KERNEL, groups=channels, bias=bias)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        # x: (B, T, C); state: (B, K-1, C) inputs before x (zeros at the sequence start)
        if state is None:
            state = x.new_zeros(x.shape[0], DCONV_KERNEL - 1, x.shape[2])
        xx = torch.cat([state, x], dim=1)  # (B, K-1+T, C)
        y = self.conv(xx.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        return y, xx[:, -(DCONV_KERNEL - 1):]


def rope(x: Tensor, positions: Tensor) -> Tensor:
    """Rotary embedding of x (B, n, T, hd) at absolute `positions` (T,)."""
    hd = x.shape[-1]
    inv_freq = ROPE_BASE ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, hd/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def allowed(T: int, k_first: int, S: int, causal: bool, window: int | None, device: torch.device) -> Tensor | None:
    """Boolean (T, S) mask of the keys each of the T newest queries may see; None when all are.

    Keys are the contiguous positions k_first .. k_first+S-1 and the queries are the last T of
    them, so "all allowed" is decided in Python, without a device sync per layer per token.
    """
    k_last = k_first + S - 1
    q_first = k_last - T + 1
    if (not causal or k_last <= q_first) and (window is None or k_last - k_first < window):
        return None
    q_pos = torch.arange(q_first, k_last + 1, device=device)
    k_pos = torch.arange(k_first, k_last + 1, device=device)
    dist = q_pos[:, None] - k_pos[None, :]  # (T, S)
    ok = torch.ones_like(dist, dtype=torch.bool)
    if causal:
        ok &= dist >= 0
    if window is not None:
        ok &= dist < window
    return ok


def _take(conv: nn.ModuleDict, name: str, x: Tensor, lc: LayerCache | None) -> Tensor:
    """Run the dconv named `name` over x if this layer has one, carrying its state in the cache."""
    if name not in conv:
        return x
    y, state = conv[name](x, lc.conv.get(name) if lc is not None else None)
    if lc is not None:
        lc.conv[name] = state
    return y



def _heads(x: Tensor, n: int) -> Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
    return x.view(x.shape[0], x.shape[1], n, -1).transpose(1, 2)


def _rotate(spec: ArchSpec, x: Tensor, positions: Tensor) -> Tensor:
    """RoPE where the design uses it; learned or no positions leave Q and K as they are."""
    return rope(x, positions) if spec.pos == "rope" else x


# ---- where K and V come from: one module per source -----------------------------------
SharedKV = tuple[Tensor, Tensor, Tensor, int]  # (K, V, key positions, first key position)


class KV(NamedTuple):
    """What a K/V source gives the attention for one forward step."""
    k: Tensor  # (B, g, S, hd) every visible key, RoPE applied
    v: Tensor  # (B, g, S, hd)
    k_pos: Tensor  # (S,) absolute key positions
    k_first: int  # absolute position of the first key
    k_new: Tensor | None  # (B, g, T, hd) K of the new tokens (Q when Q is K); None when borrowed


class KVSource(nn.Module):
    """Where one attention layer's K and V come from, and what of them its cache keeps.

    One signature for all, `forward(x, pos, lc, conv, shared) -> KV`: x (B, T, d) the normalised
    inputs at positions `pos`, `lc` the layer's cache or None, `conv` its dconvs by projection
    name, `shared` the K/V of the layer it borrows. A new design is one subclass, one entry in
    `KV_SOURCES` and one cost function in `nas/costs.py`."""

    def __init__(self, spec: ArchSpec, layer: LayerSpec) -> None:
        super().__init__()
        assert layer.n_kv_heads is not None
        self.spec, self.g, self.window = spec, layer.n_kv_heads, layer.window
        self.width = self.g * spec.head_dim  # of each K or V projection

    def conv_widths(self) -> dict[str, int]:
        """Output width of each of its projections that a dconv follows (dconv layers only)."""
        return {}


class ProjectedKV(KVSource):
    """K/V projected from the layer's own input. The cache rule in two steps: `new_entries` is
    what the new tokens add to the cache (`n_entries` tensors along `token_dim`), `expand`
    rebuilds K and V over all keys from the held entries; the cache keeps them (a window: the
    last `window` of them)."""

    token_dim = 2  # the axis of the cached tensors that grows with tokens
    n_entries = 1  # cached tensors per token

    def new_entries(self, x: Tensor, pos: Tensor, lc: LayerCache | None, conv: nn.ModuleDict) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def expand(self, entries: tuple[Tensor, ...], k_pos: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def cache_shapes(self, batch: int, slots: int) -> tuple[tuple[int, ...], ...]:
        """The shape of each cached tensor for `slots` tokens."""
        return ((batch, self.g, slots, self.spec.head_dim),) * self.n_entries

    def forward(self, x: Tensor, pos: Tensor, lc: LayerCache | None, conv: nn.ModuleDict, shared: SharedKV | None) -> KV:
        new = self.new_entries(x, pos, lc, conv)
        held = lc.add(new, pos) if lc is not None else uncached(new, pos)
        k, v = self.expand(held.entries, held.k_pos)
        return KV(k, v, held.k_pos, held.k_first, k.narrow(2, held.new_at, x.shape[1]))


class DenseKV(ProjectedKV):
    """K and V each projected (low-rank where the layer says); the cache keeps K after RoPE, and V."""

    n_entries = 2

    def __init__(self, spec: ArchSpec, layer: LayerSpec) -> None:
        super().__init__(spec, layer)
        self.k = projection(spec.d_model, self.width, layer.qk_rank, spec.bias)
        self.v = projection(spec.d_model, self.width, layer.v_rank, spec.bias)

    def conv_widths(self) -> dict[str, int]:
        return {"k": self.width, "v": self.width}

    def new_entries(self, x: Tensor, pos: Tensor, lc: LayerCache | None, conv: nn.ModuleDict) -> tuple[Tensor, ...]:
        k = _rotate(self.spec, _heads(_take(conv, "k", self.k(x), lc), self.g), pos)  # (B, g, T, hd)
        v = _heads(_take(conv, "v", self.v(x), lc), self.g)
        return k, v

    def expand(self, entries: tuple[Tensor, ...], k_pos: Tensor) -> tuple[Tensor, Tensor]:
        return entries[0], entries[1]


class TiedKV(ProjectedKV):
    """V is K: one projection, one cached tensor. With RoPE, V is either the projection itself
    (the default): the cache holds K before RoPE and rotates every cached K for the scores at each
    step, an extra pass over the cache; or, with the layer's `v_rotated`, the rotated K: the cache
    holds K after RoPE and serves scores and values as they are."""

    def __init__(self, spec: ArchSpec, layer: LayerSpec) -> None:
        super().__init__(spec, layer)
        self.k = projection(spec.d_model, self.width, layer.qk_rank, spec.bias)
        self.v_rotated = layer.v_rotated

    def conv_widths(self) -> dict[str, int]:
        return {"k": self.width}

    def new_entries(self, x: Tensor, pos: Tensor, lc: LayerCache | None, conv: nn.ModuleDict) -> tuple[Tensor, ...]:
        k = _heads(_take(conv, "k", self.k(x), lc), self.g)  # (B, g, T, hd)
        return (_rotate(self.spec, k, pos) if self.v_rotated else k,)

    def expand(self, entries: tuple[Tensor, ...], k_pos: Tensor) -> tuple[Tensor, Tensor]:
        (k,) = entries
        return (k, k) if self.v_rotated else (_rotate(self.spec, k, k_pos), k)


class LatentKV(ProjectedKV):
    """MLA-like latent KV: cache one latent (B, S, r) per token, expand K (and V, unless V is K)
    from it every step. Where V is K, `v_rotated` picks the rotated or the unrotated K, as for
    TiedKV (the expansion runs every step either way)."""

    token_dim = 1

    def __init__(self, spec: ArchSpec, layer: LayerSpec) -> None:
        super().__init__(spec, layer)
        r = layer.kv_latent
        assert r is not None
        self.kv_down = nn.Linear(spec.d_model, r, bias=spec.bias)
        self.k_up = nn.Linear(r, self.width, bias=spec.bias)
        self.v_up = None if layer.v_is_k else nn.Linear(r, self.width, bias=spec.bias)
        self.v_rotated = layer.v_rotated

    def conv_widths(self) -> dict[str, int]:
        return {"latent": self.kv_down.out_features}

    def cache_shapes(self, batch: int, slots: int) -> tuple[tuple[int, ...], ...]:
        return ((batch, slots, self.kv_down.out_features),)

    def new_entries(self, x: Tensor, pos: Tensor, lc: LayerCache | None, conv: nn.ModuleDict) -> tuple[Tensor, ...]:
        return (_take(conv, "latent", self.kv_down(x), lc),)  # (B, T, r)

    def expand(self, entries: tuple[Tensor, ...], k_pos: Tensor) -> tuple[Tensor, Tensor]:
        (latent,) = entries
        k_raw = _heads(self.k_up(latent), self.g)  # (B, g, S, hd)
        k = _rotate(self.spec, k_raw, k_pos)
        if self.v_up is not None:
            return k, _heads(self.v_up(latent), self.g)
        return k, k if self.v_rotated else k_raw


class BorrowedKV(KVSource):
    """Cross-layer sharing (`kv_from`): the K and V of an earlier layer, as they are; caches nothing."""

    def forward(self, x: Tensor, pos: Tensor, lc: LayerCache | None, conv: nn.ModuleDict, shared: SharedKV | None) -> KV:
        assert shared is not None, "a borrowing layer needs the K/V of its source layer"
        k, v, k_pos, k_first = shared
        return KV(k, v, k_pos, k_first, None)


# Picked by `kv_source_name(layer)`; `nas/costs.py` holds one cost function per entry.
KV_SOURCES: dict[KVSourceName, type[KVSource]] = {"dense": DenseKV, "tied": TiedKV, "latent": LatentKV, "borrowed": BorrowedKV}


# ---- attention: every projection design -----------------------------------------------
class Attention(nn.Module):
    asym_freqs: Tensor  # (m,) buffer of the asym_pos term

    def __init__(self, spec: ArchSpec, layer: LayerSpec) -> None:
        super().__init__()
        d, h, hd = spec.d_model, spec.n_heads, spec.head_dim
        g = layer.n_kv_heads
        assert g is not None and h % g == 0
        self.spec, self.layer, self.h, self.g, self.hd = spec, layer, h, g, hd
        bias = spec.bias
        # Which projections exist: the tying is structural, not a copy of weights.
        self.q = projection(d, h * hd, layer.qk_rank, bias) if has_q_projection(layer) else None
        self.kv = KV_SOURCES[kv_source_name(layer)](spec, layer)
        self.o = nn.Linear(h * hd, d, bias=bias)
        self.conv = nn.ModuleDict()
        if layer.dconv:
            widths = {"q": h * hd} if self.q is not None else {}
            for name, width in {**widths, **self.kv.conv_widths()}.items():
                self.conv[name] = CausalDepthwiseConv(width, bias)
        if layer.asym_pos:
            # S'_ij = S_ij·Σw + Σ_c w_c P_ijc + b, with P_ijc = sin(ω_c (i - j)) so P_ij ≠ P_ji.
            self.asym_w = nn.Parameter(torch.full((h, ASYM_CHANNELS), 1.0 / ASYM_CHANNELS))
            self.asym_b = nn.Parameter(torch.zeros(h))
            freqs = ROPE_BASE ** (-torch.arange(ASYM_CHANNELS, dtype=torch.float32) / ASYM_CHANNELS)
            self.register_buffer("asym_freqs", freqs, persistent=False)

    # The K and V projections where the source has them (None for a latent or a borrowed K/V,
    # and V where V is K), so that a reference can redo a layer's maths from its weights.
    @property
    def k(self) -> nn.Module | None:
        return self.kv.k if isinstance(self.kv, (DenseKV, TiedKV)) else None

    @property
    def v(self) -> nn.Module | None:
        return self.kv.v if isinstance(self.kv, DenseKV) else None

    def forward(self, x: Tensor, pos: Tensor, lc: LayerCache | None, shared: SharedKV | None) -> tuple[Tensor, SharedKV]:
        B, T, _ = x.shape
        k, v, k_pos, k_first, k_new = self.kv(x, pos, lc, self.conv, shared)
        if self.q is not None:
            q = _rotate(self.spec, _heads(_take(self.conv, "q", self.q(x), lc), self.h), pos)  # (B, h, T, hd)
        else:  # Q is K: the same tensor, repeated over the heads of each K/V group
            assert k_new is not None
            q = k_new.repeat_interleave(self.h // self.g, dim=1)
        mask = allowed(T, k_first, k.shape[2], self.spec.causal, self.layer.window, x.device)
        is_causal = False
        if self.layer.asym_pos:
            w = self.asym_w  # (h, m)
            q = q * w.sum(-1).view(1, -1, 1, 1).to(q.dtype)
            rel = (pos[:, None] - k_pos[None, :]).to(torch.float32)  # (Tq, S)
            P = torch.sin(rel[..., None] * self.asym_freqs)  # (Tq, S, m)
            bias = torch.einsum("tsm,hm->hts", P, w) + self.asym_b.view(-1, 1, 1)  # (h, Tq, S)
            mask = bias.to(q.dtype) if mask is None else bias.to(q.dtype).masked_fill(~mask, float("-inf"))
        elif mask is not None and k.shape[2] == T and self.layer.window is None and self.spec.causal:
            mask, is_causal = None, True  # all keys are new (no cache yet): SDPA's fused causal kernel
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.g != self.h)
        y = y.transpose(1, 2).reshape(B, T, self.h * self.hd)
        return self.o(y), (k, v, k_pos, k_first)


class Mixer(nn.Module):
    """MLP-Mixer-style token mixing: a learned (context x context) routing per head, no content-
    dependent attention; causal through a lower-triangular mask. Valid for fixed-length inputs."""

    tril: Tensor  # (L, L) buffer, causal mixers only
    token_dim = 1  # of its cached inputs (B, S, d)

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        L = spec.context
        self.spec, self.h, self.hd = spec, spec.n_heads, spec.head_dim
        self.route = nn.Parameter(torch.randn(spec.n_heads, L, L) * 0.02)
        self.o = nn.Linear(spec.d_model, spec.d_model, bias=spec.bias)
        if spec.causal:
            self.register_buffer("tril", torch.tril(torch.ones(L, L, dtype=torch.bool)), persistent=False)

    def forward(self, x: Tensor, pos: Tensor, lc: LayerCache | None) -> Tensor:
        B, T, d = x.shape
        if not self.spec.causal and T != self.spec.context:
            raise ValueError(f"a bidirectional mixer layer needs inputs of exactly context={self.spec.context} tokens, got {T}")
        if torch.is_autocast_enabled(x.device.type):  # cache in the compute dtype, as K/V are
            x = x.to(torch.get_autocast_dtype(x.device.type))
        (xs,) = lc.add((x,), pos).entries if lc is not None else (x,)  # (B, S, d): every earlier input
        S = xs.shape[1]
        start = S - T
        route = self.route[:, start:S, :S]  # (h, T, S)
        if self.spec.causal:
            route = route.masked_fill(~self.tril[start:S, :S], 0.0)
        heads = xs.view(B, S, self.h, self.hd).transpose(1, 2)  # (B, h, S, hd)
        y = torch.matmul(route.to(x.dtype), heads)  # (B, h, T, hd)
        return self.o(y.transpose(1, 2).reshape(B, T, d))

    def cache_shapes(self, batch: int, slots: int) -> tuple[tuple[int, ...], ...]:
        return ((batch, min(slots, self.spec.context), self.spec.d_model),)


class MLP(nn.Module):
    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        d, f, b = spec.d_model, spec.ffn_dim, spec.bias
        self.activation = spec.activation
        self.up = nn.Linear(d, f, bias=b)
        self.gate = nn.Linear(d, f, bias=b) if spec.activation == "swiglu" else None
        self.down = nn.Linear(f, d, bias=b)

    def forward(self, x: Tensor) -> Tensor:
        u = self.up(x)
        if self.gate is not None:
            u = F.silu(self.gate(x)) * u
        elif self.activation == "relu2":
            u = F.relu(u).square()
        else:
            u = F.gelu(u)
        return self.down(u)


class Block(nn.Module):
    def __init__(self, spec: ArchSpec, layer: LayerSpec) -> None:
        super().__init__()
        self.layer = layer
        self.mix: Attention | Mixer | None = None
        if layer.attn == "attention":
            self.mix = Attention(spec, layer)
        elif layer.attn == "mixer":
            self.mix = Mixer(spec)
        self.norm1 = norm(spec) if self.mix is not None else None
        self.norm2 = norm(spec)
        self.mlp = MLP(spec)

    def forward(self, x: Tensor, pos: Tensor, lc: LayerCache | None, shared: SharedKV | None) -> tuple[Tensor, SharedKV | None]:
        out: SharedKV | None = None
        if isinstance(self.mix, Attention) and self.norm1 is not None:
            a, out = self.mix(self.norm1(x), pos, lc, shared)
            x = x + a
        elif isinstance(self.mix, Mixer) and self.norm1 is not None:
            x = x + self.mix(self.norm1(x), pos, lc)
        return x + self.mlp(self.norm2(x)), out


class Transformer(nn.Module):
    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.tok = nn.Embedding(spec.vocab_size, spec.d_model)
        self.pos = nn.Embedding(spec.context, spec.d_model) if spec.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(spec, layer) for layer in spec.layers)
        self.norm_f = norm(spec)
        self.head = None if spec.tie_embeddings else nn.Linear(spec.d_model, spec.vocab_size, bias=spec.head_bias)
        # A tied head has no Linear of its own; its bias, when asked for, lives beside it.
        self.head_b = nn.Parameter(torch.zeros(spec.vocab_size)) if spec.tie_embeddings and spec.head_bias else None
        # Layers whose K/V a later layer reuses: forward hands them on.
        self._sources = {layer.kv_from for layer in spec.layers if layer.kv_from is not None}
        self._fixed_length = spec.pos == "learned" or any(layer.attn == "mixer" for layer in spec.layers)
        if spec.init == "gpt2":  # torch_default: each module's own reset_parameters, as built
            self.apply(self._init)
            for name, p in self.named_parameters():  # GPT-2: scale residual outputs by depth
                if name.endswith(("o.weight", "down.weight")):
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * spec.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def new_cache(self, batch: int | None = None, max_tokens: int | None = None, *,
                  layout: CacheLayout = "static", dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `batch` sequences of up to `max_tokens` tokens (default: the context).
        The static layout allocates each layer's tensors here, once, in `dtype` (default: autocast's
        dtype when on, else the parameters'); without a batch, at the first forward, in the dtype it
        computes in. `layout="concat"` grows it by torch.cat (the old layout, kept for comparison)."""
        if not self.spec.causal:
            raise ValueError("a bidirectional encoder (causal=false) has no incremental decoding")
        cache = KVCache(layers=[], max_tokens=max_tokens or self.spec.context, layout=layout)
        if batch is not None:
            self._fill_cache(cache, batch, dtype)
        return cache

    def _fill_cache(self, cache: KVCache, batch: int, dtype: torch.dtype | None) -> None:
        device = self.tok.weight.device
        if dtype is None:
            on = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if on else self.tok.weight.dtype
        owners = [(_cache_owner(block), layer.window) for block, layer in zip(self.blocks, self.spec.layers, strict=True)]
        fill_cache(cache, owners, batch, device, dtype)

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        T = idx.shape[1]  # idx: (B, T) token ids -> logits (B, T, vocab)
        start = cache.seen if cache is not None else 0
        if cache is not None:
            if not self.spec.causal:
                raise ValueError("a bidirectional encoder (causal=false) cannot decode with a cache")
            cache.check_room(start + T)
            if not cache.layers:
                self._fill_cache(cache, idx.shape[0], None)
        if self._fixed_length and start + T > self.spec.context:
            raise ValueError(
                f"{start + T} tokens exceed context={self.spec.context}, the most that learned positions "
                "or a mixer layer can take; shorten the input or raise context"
            )
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.tok(idx)
        if self.pos is not None:
            x = x + self.pos(pos)
        shared: dict[int, SharedKV] = {}
        for i, (block, layer) in enumerate(zip(self.blocks, self.spec.layers, strict=True)):
            lc = cache.layers[i] if cache is not None else None
            kv_from = layer.kv_from
            x, out = block(x, pos, lc, shared[kv_from] if kv_from is not None else None)
            if i in self._sources and out is not None:
                shared[i] = out
        if cache is not None:
            cache.seen += T
        x = self.norm_f(x)
        return F.linear(x, self.tok.weight, self.head_b) if self.head is None else self.head(x)

    @torch.no_grad()
    def generate(self, idx: Tensor, n_new: int, *, use_cache: bool = True) -> Tensor:
        """Greedy decoding; with `use_cache` the prefix runs once and each step feeds one token."""
        cache = self.new_cache(idx.shape[0], idx.shape[1] + n_new) if use_cache else None
        out, logits = idx, self(idx, cache)
        for step in range(n_new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out = torch.cat([out, nxt], dim=1)
            if step < n_new - 1:
                logits = self(nxt, cache) if cache is not None else self(out)
        return out


def _cache_owner(block: nn.Module) -> CacheOwner | None:
    """The module whose per-token entries a layer caches: its projected K/V source or its mixer."""
    mix = block.mix if isinstance(block, Block) else None
    owner = mix.kv if isinstance(mix, Attention) else mix
    return owner if isinstance(owner, (ProjectedKV, Mixer)) else None


def build_model(spec: ArchSpec) -> Transformer:
    return Transformer(spec)

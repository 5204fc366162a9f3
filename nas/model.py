"""Every attention design of the search space, in one readable module.

`build_model(spec)` returns a decoder-only LM (or a bidirectional encoder when
`spec.causal` is false). One `Attention` class covers every projection design: tied
projections exist once as parameters and run once as matmuls, so a `q_kv` layer computes
two projections and a `qkv_single` layer one. Incremental decoding keeps a `KVCache` that
stores only what the design needs (K only when V is K, the latent for `kv_latent`, at most
`window` tokens, nothing for `kv_from` or attention-free layers).

Shapes: B batch, T new tokens, S cached+new keys, h query heads, g K/V heads, hd head dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces.spec import ASYM_CHANNELS, DCONV_KERNEL, ArchSpec, LayerSpec

ROPE_BASE = 10000.0


# ---- the cache ------------------------------------------------------------------------
@dataclass
class LayerCache:
    """What one layer keeps between decoding steps. Tensors are (B, S, C) or (B, g, S, hd)."""

    k: Tensor | None = None  # (B, g, S, hd), RoPE already applied
    v: Tensor | None = None  # (B, g, S, hd); None when V is K
    latent: Tensor | None = None  # (B, S, r) for kv_latent
    x: Tensor | None = None  # (B, S, d) normalised inputs, for the mixer
    start: int = 0  # absolute position of the first kept entry (a window drops old ones)
    conv: dict[str, Tensor] = field(default_factory=dict)  # last K-1 inputs per dconv

    def per_token_tensors(self) -> list[Tensor]:
        return [t for t in (self.k, self.v, self.latent, self.x) if t is not None]


@dataclass
class KVCache:
    layers: list[LayerCache]
    seen: int = 0  # tokens processed so far = absolute position of the next token

    def nbytes(self) -> int:
        """Bytes of the per-token cache tensors (K, V, latents, mixer inputs)."""
        return sum(t.numel() * t.element_size() for lc in self.layers for t in lc.per_token_tensors())

    def state_nbytes(self) -> int:
        """Bytes of the fixed-size convolution state (does not grow with tokens)."""
        return sum(t.numel() * t.element_size() for lc in self.layers for t in lc.conv.values())


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


def _keep(cached: Tensor | None, new: Tensor, dim: int) -> Tensor:
    return new if cached is None else torch.cat([cached, new], dim=dim)


# ---- attention: every projection design -----------------------------------------------
SharedKV = tuple[Tensor, Tensor, Tensor, int]  # (K, V, key positions, first key position)


class Attention(nn.Module):
    def __init__(self, spec: ArchSpec, layer: LayerSpec) -> None:
        super().__init__()
        d, h, hd = spec.d_model, spec.n_heads, spec.head_dim
        g = layer.n_kv_heads
        assert g is not None and h % g == 0
        self.spec, self.layer, self.h, self.g, self.hd = spec, layer, h, g, hd
        bias = spec.bias
        # Which projections exist: the tying is structural, not a copy of weights.
        self.q = None if layer.q_is_k and layer.kv_from is None else projection(d, h * hd, layer.qk_rank, bias)
        self.k = self.v = self.kv_down = self.k_up = self.v_up = None
        if layer.kv_from is None and layer.kv_latent is not None:
            r = layer.kv_latent
            self.kv_down = nn.Linear(d, r, bias=bias)
            self.k_up = nn.Linear(r, g * hd, bias=bias)
            self.v_up = None if layer.v_is_k else nn.Linear(r, g * hd, bias=bias)
        elif layer.kv_from is None:
            self.k = projection(d, g * hd, layer.qk_rank, bias)
            self.v = None if layer.v_is_k else projection(d, g * hd, layer.v_rank, bias)
        self.o = nn.Linear(h * hd, d, bias=bias)
        self.conv = nn.ModuleDict()
        if layer.dconv:
            widths = {"q": None if self.q is None else h * hd, "k": None if self.k is None else g * hd,
                      "v": None if self.v is None else g * hd, "latent": layer.kv_latent}
            for name, width in widths.items():
                if width is not None:
                    self.conv[name] = CausalDepthwiseConv(width, bias)
        if layer.asym_pos:
            # S'_ij = S_ij·Σw + Σ_c w_c P_ijc + b, with P_ijc = sin(ω_c (i - j)) so P_ij ≠ P_ji.
            self.asym_w = nn.Parameter(torch.full((h, ASYM_CHANNELS), 1.0 / ASYM_CHANNELS))
            self.asym_b = nn.Parameter(torch.zeros(h))
            freqs = ROPE_BASE ** (-torch.arange(ASYM_CHANNELS, dtype=torch.float32) / ASYM_CHANNELS)
            self.register_buffer("asym_freqs", freqs, persistent=False)

    def _heads(self, x: Tensor, n: int) -> Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
        return x.view(x.shape[0], x.shape[1], n, self.hd).transpose(1, 2)

    def _new_kv(self, x: Tensor, pos: Tensor, lc: LayerCache | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """K (RoPE applied) and V over all visible keys, their positions, and K of the new tokens.

        When V is K the cache holds K before RoPE and rotates it for the scores each step: V must
        be the projection itself, not a position-rotated copy of it.
        """
        start = lc.start if lc else 0
        if self.kv_down is not None:  # latent KV: cache the latent, expand it every step
            latent = _take(self.conv, "latent", self.kv_down(x), lc)  # (B, T, r)
            latent = _keep(lc.latent if lc else None, latent, dim=1)  # (B, S, r)
            if lc is not None:
                lc.latent = latent
            k_pos = torch.arange(start, start + latent.shape[1], device=x.device)
            k_raw = self._heads(self.k_up(latent), self.g)  # (B, g, S, hd)
            v = k_raw if self.v_up is None else self._heads(self.v_up(latent), self.g)
            k = self._rope(k_raw, k_pos)
            return k, v, k_pos, k[:, :, -x.shape[1]:]
        assert self.k is not None
        k_new = self._heads(_take(self.conv, "k", self.k(x), lc), self.g)  # (B, g, T, hd)
        if self.v is None:  # V is K: keep K unrotated
            k_raw = _keep(lc.k if lc else None, k_new, dim=2)  # (B, g, S, hd)
            if lc is not None:
                lc.k = k_raw
            k_pos = torch.arange(start, start + k_raw.shape[2], device=x.device)
            k = self._rope(k_raw, k_pos)
            return k, k_raw, k_pos, k[:, :, -x.shape[1]:]
        k_new = self._rope(k_new, pos)
        v_new = self._heads(_take(self.conv, "v", self.v(x), lc), self.g)
        k = _keep(lc.k if lc else None, k_new, dim=2)
        v = _keep(lc.v if lc else None, v_new, dim=2)
        if lc is not None:
            lc.k, lc.v = k, v
        k_pos = torch.arange(start, start + k.shape[2], device=x.device)
        return k, v, k_pos, k_new

    def _rope(self, x: Tensor, positions: Tensor) -> Tensor:
        return rope(x, positions) if self.spec.pos == "rope" else x

    def _trim(self, lc: LayerCache | None, total: int) -> None:
        """Keep only the last `window` entries: the window bounds the cache."""
        w = self.layer.window
        if lc is None or w is None or self.layer.kv_from is not None or total <= w:
            return
        drop = total - w
        for name in ("k", "v", "latent"):
            t = getattr(lc, name)
            if t is not None:
                setattr(lc, name, t[:, :, drop:] if t.dim() == 4 else t[:, drop:])
        lc.start += drop

    def forward(self, x: Tensor, pos: Tensor, lc: LayerCache | None, shared: SharedKV | None) -> tuple[Tensor, SharedKV]:
        B, T, _ = x.shape
        if shared is not None:  # cross-layer sharing: K/V come from an earlier layer
            k, v, k_pos, k_first = shared
            k_new = None
        else:
            k_first = lc.start if lc else 0  # before _new_kv: _trim moves it after attention
            k, v, k_pos, k_new = self._new_kv(x, pos, lc)
        if self.q is not None:
            q = self._rope(self._heads(_take(self.conv, "q", self.q(x), lc), self.h), pos)  # (B, h, T, hd)
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
        self._trim(lc, k.shape[2])
        y = y.transpose(1, 2).reshape(B, T, self.h * self.hd)
        return self.o(y), (k, v, k_pos, k_first)


class Mixer(nn.Module):
    """MLP-Mixer-style token mixing: a learned (context x context) routing per head, no content-
    dependent attention; causal through a lower-triangular mask. Valid for fixed-length inputs."""

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
        xs = _keep(lc.x if lc else None, x, dim=1)  # (B, S, d): every earlier input is needed
        if lc is not None:
            lc.x = xs
        S = xs.shape[1]
        start = S - T
        route = self.route[:, start:S, :S]  # (h, T, S)
        if self.spec.causal:
            route = route.masked_fill(~self.tril[start:S, :S], 0.0)
        heads = xs.view(B, S, self.h, self.hd).transpose(1, 2)  # (B, h, S, hd)
        y = torch.matmul(route.to(x.dtype), heads)  # (B, h, T, hd)
        return self.o(y.transpose(1, 2).reshape(B, T, d))


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
        if isinstance(self.mix, Attention):
            a, out = self.mix(self.norm1(x), pos, lc, shared)
            x = x + a
        elif isinstance(self.mix, Mixer):
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
        self.head = None if spec.tie_embeddings else nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        # Layers whose K/V a later layer reuses: forward hands them on.
        self._sources = {layer.kv_from for layer in spec.layers if layer.kv_from is not None}
        self._fixed_length = spec.pos == "learned" or any(layer.attn == "mixer" for layer in spec.layers)
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

    def new_cache(self) -> KVCache:
        if not self.spec.causal:
            raise ValueError("a bidirectional encoder (causal=false) has no incremental decoding")
        return KVCache(layers=[LayerCache() for _ in self.spec.layers])

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T = idx.shape  # idx: (B, T) token ids -> logits (B, T, vocab)
        start = cache.seen if cache is not None else 0
        if cache is not None and not self.spec.causal:
            raise ValueError("a bidirectional encoder (causal=false) cannot decode with a cache")
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
        for i, block in enumerate(self.blocks):
            lc = cache.layers[i] if cache is not None else None
            kv_from = block.layer.kv_from
            x, out = block(x, pos, lc, shared[kv_from] if kv_from is not None else None)
            if i in self._sources and out is not None:
                shared[i] = out
        if cache is not None:
            cache.seen += T
        x = self.norm_f(x)
        return F.linear(x, self.tok.weight) if self.head is None else self.head(x)

    @torch.no_grad()
    def generate(self, idx: Tensor, n_new: int, *, use_cache: bool = True) -> Tensor:
        """Greedy decoding; with `use_cache` the prefix runs once and each step feeds one token."""
        cache = self.new_cache() if use_cache else None
        out, logits = idx, self(idx, cache)
        for step in range(n_new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out = torch.cat([out, nxt], dim=1)
            if step < n_new - 1:
                logits = self(nxt, cache) if cache is not None else self(out)
        return out


def build_model(spec: ArchSpec) -> Transformer:
    return Transformer(spec)

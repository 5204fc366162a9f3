"""Exact costs of a design, from the spec alone: parameters, KV-cache bytes, FLOPs.

Every formula mirrors a module in `nas/model.py` (one cost function per K/V source class there)
and is tested against the built model (parameters against `sum(p.numel())`, KV bytes against
the cache tensors after decoding, matmul FLOPs against torch's FLOP counter), so the search can
reject a design on its costs before building it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from nas.kv_source import KVSourceName, has_q_projection, kv_source_name
from search_spaces.spec import ASYM_CHANNELS, DCONV_KERNEL, ArchSpec, LayerSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not known; use one of {list(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


# ---- parameters -----------------------------------------------------------------------
def _linear(d_in: int, d_out: int, bias: bool, rank: int | None = None) -> int:
    if rank is None:
        return d_in * d_out + (d_out if bias else 0)
    return d_in * rank + rank * d_out + (d_out if bias else 0)


def _norm(spec: ArchSpec) -> int:
    return spec.d_model * (2 if spec.norm == "layernorm" and spec.bias else 1)


# ---- the K/V sources: one cost function per `KVSource` of nas/model.py -----------------
@dataclass(frozen=True, kw_only=True)
class KVSourceCost:
    """What one layer's K/V source costs, from the spec alone."""

    params: int  # of its projections
    conv_widths: tuple[int, ...]  # output width of each of its projections that a dconv follows
    elements_per_token: int  # cached numbers per token (before a window bounds them)
    expand_weights: int  # weights every cached entry passes through again at each decode step


def _kv_width(spec: ArchSpec, layer: LayerSpec) -> int:
    assert layer.n_kv_heads is not None
    return layer.n_kv_heads * spec.head_dim


def dense_kv_cost(spec: ArchSpec, layer: LayerSpec) -> KVSourceCost:
    """`DenseKV`: K and V projections; the cache keeps K and V."""
    w, d, b = _kv_width(spec, layer), spec.d_model, spec.bias
    params = _linear(d, w, b, layer.qk_rank) + _linear(d, w, b, layer.v_rank)
    return KVSourceCost(params=params, conv_widths=(w, w), elements_per_token=2 * w, expand_weights=0)


def tied_kv_cost(spec: ArchSpec, layer: LayerSpec) -> KVSourceCost:
    """`TiedKV`: one projection, V is K; the cache keeps K only."""
    w = _kv_width(spec, layer)
    params = _linear(spec.d_model, w, spec.bias, layer.qk_rank)
    return KVSourceCost(params=params, conv_widths=(w,), elements_per_token=w, expand_weights=0)


def latent_kv_cost(spec: ArchSpec, layer: LayerSpec) -> KVSourceCost:
    """`LatentKV`: the cache keeps one latent, re-expanded into K (and V) at every decode step."""
    r, w, b = layer.kv_latent, _kv_width(spec, layer), spec.bias
    assert r is not None
    ups = 1 if layer.v_is_k else 2  # k_up, and v_up unless V is K
    params = _linear(spec.d_model, r, b) + _linear(r, w, b) * ups
    return KVSourceCost(params=params, conv_widths=(r,), elements_per_token=r, expand_weights=r * w * ups)


def borrowed_kv_cost(spec: ArchSpec, layer: LayerSpec) -> KVSourceCost:
    """`BorrowedKV`: an earlier layer's K/V; no projection, nothing cached."""
    return KVSourceCost(params=0, conv_widths=(), elements_per_token=0, expand_weights=0)


KV_SOURCE_COSTS: dict[KVSourceName, Callable[[ArchSpec, LayerSpec], KVSourceCost]] = {
    "dense": dense_kv_cost, "tied": tied_kv_cost, "latent": latent_kv_cost, "borrowed": borrowed_kv_cost,
}


def kv_source_cost(spec: ArchSpec, layer: LayerSpec) -> KVSourceCost:
    return KV_SOURCE_COSTS[kv_source_name(layer)](spec, layer)


def attention_params(spec: ArchSpec, layer: LayerSpec) -> int:
    """Parameters of one layer's token mixer (projections, dconv, asym term, output)."""
    d, h, hd, b = spec.d_model, spec.n_heads, spec.head_dim, spec.bias
    if layer.attn == "none":
        return 0
    if layer.attn == "mixer":
        return h * spec.context**2 + _linear(d, d, b)
    source = kv_source_cost(spec, layer)
    total = _linear(h * hd, d, b) + source.params  # output projection, K/V source
    widths = source.conv_widths  # output width of each projection that exists (and gets a dconv)
    if has_q_projection(layer):
        total += _linear(d, h * hd, b, layer.qk_rank)
        widths = (h * hd, *widths)
    if layer.dconv:
        total += sum(w * DCONV_KERNEL + (w if b else 0) for w in widths)
    if layer.asym_pos:
        total += h * ASYM_CHANNELS + h
    return total


def mlp_params(spec: ArchSpec) -> int:
    d, f, b = spec.d_model, spec.ffn_dim, spec.bias
    gates = 2 if spec.activation == "swiglu" else 1
    return gates * _linear(d, f, b) + _linear(f, d, b)


def param_count(spec: ArchSpec) -> int:
    d = spec.d_model
    total = spec.vocab_size * d + (spec.context * d if spec.pos == "learned" else 0)
    total += 0 if spec.tie_embeddings else spec.vocab_size * d
    total += _norm(spec)  # final norm
    for layer in spec.layers:
        total += attention_params(spec, layer) + mlp_params(spec) + _norm(spec)
        total += _norm(spec) if layer.attn != "none" else 0
    return total


# ---- KV cache -------------------------------------------------------------------------
def kv_elements_per_token(spec: ArchSpec, layer: LayerSpec) -> int:
    """Cached numbers per token for one layer (before the window bounds them)."""
    if layer.attn == "none":
        return 0
    if layer.attn == "mixer":
        return spec.d_model  # every earlier input is needed to mix the next token
    return kv_source_cost(spec, layer).elements_per_token


def kv_cache_bytes(spec: ArchSpec, n_tokens: int, *, batch: int = 1, dtype: str = "bfloat16") -> int:
    """Bytes the cache holds after `n_tokens` tokens: a window keeps at most `window` of them."""
    per = dtype_bytes(dtype)
    total = 0
    for layer in spec.layers:
        kept = n_tokens if layer.window is None else min(n_tokens, layer.window)
        total += kv_elements_per_token(spec, layer) * kept
    return total * batch * per


# ---- FLOPs ----------------------------------------------------------------------------
def _mean_keys(spec: ArchSpec, layer: LayerSpec, seq_len: int, causal_discount: bool) -> float:
    """Mean number of keys a query scores against over a sequence of `seq_len` tokens."""
    if not causal_discount or not spec.causal:  # dense kernels compute every (query, key) pair
        return float(seq_len)
    w = seq_len if layer.window is None else min(layer.window, seq_len)
    # sum(min(i + 1, w) for i in range(seq_len)) in closed form: 1 + 2 + ... + w, then w for each
    # query after the first w. Exact integers, so the figure is the loop's, at any context.
    return (w * (w + 1) // 2 + (seq_len - w) * w) / seq_len


def matmul_flops_per_token(spec: ArchSpec) -> int:
    """2 FLOPs per multiply-add of every weight matmul a token passes through (incl. the LM head)."""
    total = 2 * spec.vocab_size * spec.d_model  # LM head (tied or not, it is a matmul)
    for layer in spec.layers:
        total += 2 * _matmul_weights(spec, layer) + 2 * (2 if spec.activation == "swiglu" else 1) * spec.d_model * spec.ffn_dim
        total += 2 * spec.ffn_dim * spec.d_model
    return total


def _matmul_weights(spec: ArchSpec, layer: LayerSpec) -> int:
    """Weights of the attention projections that a token multiplies (no biases, convs, routing)."""
    if layer.attn == "none":
        return 0
    d = spec.d_model
    if layer.attn == "mixer":
        return d * d
    bias_free = dataclasses.replace(spec, bias=False)
    plain = dataclasses.replace(layer, dconv=False, asym_pos=False)
    return attention_params(bias_free, plain)


def forward_flops_per_token(spec: ArchSpec, seq_len: int | None = None, *, causal_discount: bool = True) -> float:
    """Forward FLOPs per token over a sequence: matmuls plus scores (Q·Kᵀ) and mixing (A·V).

    With `causal_discount` a query is charged only the keys it can see (causal mask, window);
    without it every query is charged the whole sequence, as dense kernels and torch's FLOP
    counter do.
    """
    T = spec.context if seq_len is None else seq_len
    total = float(matmul_flops_per_token(spec))
    for layer in spec.layers:
        if layer.attn == "attention":
            total += 2 * 2 * spec.d_model * _mean_keys(spec, layer, T, causal_discount)
        elif layer.attn == "mixer":
            total += 2 * spec.d_model * _mean_keys(spec, layer, T, causal_discount)
    return total


def decode_flops_per_token(spec: ArchSpec, n_cached: int | None = None) -> float:
    """FLOPs to decode one token with `n_cached` tokens already in the cache (default: context-1).

    A latent layer re-expands every cached latent into K (and V) each step, as model.py does:
    its source's `expand_weights`, for every key but the new one.
    """
    S = (spec.context - 1 if n_cached is None else n_cached) + 1
    total = float(matmul_flops_per_token(spec))
    for layer in spec.layers:
        keys = S if layer.window is None else min(S, layer.window)
        if layer.attn == "attention":
            total += 2 * 2 * spec.d_model * keys
            total += 2 * kv_source_cost(spec, layer).expand_weights * (keys - 1)
        elif layer.attn == "mixer":
            total += 2 * spec.d_model * keys
    return total


# ---- what one decode step reads ---------------------------------------------------------
def decode_weight_elements(spec: ArchSpec, n_cached: int, *, batch: int = 1) -> int:
    """Weights one decode step of `batch` sequences reads, each once, with `n_cached` tokens in
    the cache: every parameter but the rows of the input tables it does not look up (an untied
    token table: `batch` rows; learned positions: one row) and the routing rows of a mixer beyond
    the one row per head over the keys it mixes. A tied table is read whole as the LM head."""
    d, h, L = spec.d_model, spec.n_heads, spec.context
    total = param_count(spec)
    if not spec.tie_embeddings:
        total -= (spec.vocab_size - min(batch, spec.vocab_size)) * d
    if spec.pos == "learned":
        total -= (L - 1) * d
    mixers = sum(layer.attn == "mixer" for layer in spec.layers)
    return total - mixers * (h * L * L - h * min(n_cached + 1, L))


def decode_step_bytes(spec: ArchSpec, n_cached: int, *, batch: int = 1, dtype: str = "bfloat16") -> int:
    """Bytes one decode step must read with `n_cached` tokens in the cache, in `dtype`: its weights
    once, and for each sequence the cached entries of every key it attends to (the new token's
    included, a window's worth at most). A lower bound: a borrowing layer's second read of its
    source's K/V, a latent's expansion and an unrotated V=K's rotation are traffic beyond it."""
    per = dtype_bytes(dtype)
    return per * decode_weight_elements(spec, n_cached, batch=batch) + kv_cache_bytes(
        spec, n_cached + 1, batch=batch, dtype=dtype)


# ---- the summary ----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Costs:
    params: int
    attention_params: int
    embedding_params: int
    kv_cache_bytes_per_token: int  # at full context; a window makes it an average
    kv_cache_bytes_at_context: int  # one sequence of `context` tokens
    flops_per_token: int  # training: forward + backward ≈ 3 × forward
    flops_per_token_forward: int
    flops_per_token_decode: int  # one token at the end of a full context
    seq_len: int
    dtype: str

    def to_dict(self) -> dict[str, int | str]:
        return dataclasses.asdict(self)


def costs(spec: ArchSpec, *, dtype: str = "bfloat16", seq_len: int | None = None) -> Costs:
    T = spec.context if seq_len is None else seq_len
    if T < 1:
        raise ValueError(f"seq_len={T} must be at least 1")
    at_context = kv_cache_bytes(spec, spec.context, dtype=dtype)
    forward = forward_flops_per_token(spec, T)
    embed = spec.vocab_size * spec.d_model * (1 if spec.tie_embeddings else 2)
    embed += spec.context * spec.d_model if spec.pos == "learned" else 0
    return Costs(
        params=param_count(spec),
        attention_params=sum(attention_params(spec, layer) for layer in spec.layers),
        embedding_params=embed,
        kv_cache_bytes_per_token=round(at_context / spec.context),
        kv_cache_bytes_at_context=at_context,
        flops_per_token=round(3 * forward),
        flops_per_token_forward=round(forward),
        flops_per_token_decode=round(decode_flops_per_token(spec)),
        seq_len=T,
        dtype=dtype,
    )

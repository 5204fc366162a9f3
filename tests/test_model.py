"""Every design's forward pass, its KV cache against full recomputation, and the attention
maths against an explicit fp32 reference."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from nas.costs import kv_cache_bytes, kv_elements_per_token
from nas.model import Attention, build_model
from search_spaces.spec import ArchSpec, LayerSpec
from tests.conftest import TINY, ZOO, zoo_spec

ATOL = 1e-4  # fp32, tiny model: cached and recomputed logits agree to rounding


@pytest.mark.parametrize("pos", ["rope", "learned", "none"])
@pytest.mark.parametrize("name", ZOO)
def test_cache_gives_the_same_logits_as_recomputation(name, pos):
    model = build_model(zoo_spec(name, pos=pos)).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        steps = [model(idx[:, :9], cache)] + [model(idx[:, t:t + 1], cache) for t in range(9, 24)]
    inc = torch.cat(steps, dim=1)
    assert full.shape == (2, 24, TINY.vocab_size) and torch.isfinite(full).all()
    err = (full - inc).abs().max().item()
    assert err < ATOL, f"{name}/{pos}: max |cached - recomputed| = {err:.3e}"
    assert cache.seen == 24


@pytest.mark.parametrize("name", ZOO)
def test_cache_in_chunks_longer_than_the_window_gives_the_same_logits(name):
    model = build_model(zoo_spec(name)).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 24))
    chunks = [5, 1, 7, 3, 8]  # steps of several tokens, some longer than any zoo window
    with torch.no_grad():
        full, cache = model(idx), model.new_cache()
        starts = [sum(chunks[:i]) for i in range(len(chunks))]
        inc = torch.cat([model(idx[:, s:s + c], cache) for s, c in zip(starts, chunks)], dim=1)
    err = (full - inc).abs().max().item()
    assert err < ATOL, f"{name}: max |cached - recomputed| = {err:.3e}"


@pytest.mark.parametrize("name", ["qkv", "q_kv+mqa", "qkv+latent16", "qkv+window5", "qkv+cla2", "mixer", "qkv+dconv"])
def test_greedy_decoding_with_and_without_cache_agree(name):
    model = build_model(zoo_spec(name)).eval()
    prompt = torch.randint(0, TINY.vocab_size, (1, 5))
    assert torch.equal(model.generate(prompt, 12, use_cache=True), model.generate(prompt, 12, use_cache=False))


@pytest.mark.parametrize("name", ZOO)
def test_causal_models_do_not_see_the_future(name):
    model = build_model(zoo_spec(name)).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("name", ["qkv", "qk_v+2d", "qkv_single+2d", "mixer"])
def test_bidirectional_encoder_sees_both_ways(name):
    model = build_model(zoo_spec(name, causal=False)).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, TINY.context))  # a mixer needs the full length
    changed = idx.clone()
    changed[0, -1] = (changed[0, -1] + 1) % TINY.vocab_size
    with torch.no_grad():
        assert not torch.allclose(model(idx)[:, 0], model(changed)[:, 0])
    with pytest.raises(ValueError, match="no incremental decoding"):
        model.new_cache()


def test_tied_projections_exist_once():
    names = lambda spec: {n.split(".")[-2] for n, _ in build_model(spec).named_parameters() if ".mix." in n}
    assert names(zoo_spec("qkv")) == {"q", "k", "v", "o"}
    assert names(zoo_spec("q_kv")) == {"q", "k", "o"}
    assert names(zoo_spec("qk_v")) == {"k", "v", "o"}
    assert names(zoo_spec("qkv_single")) == {"k", "o"}


def _count_linear_calls(model, idx):
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1))
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".mix." in n]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    return len(calls)


def test_tied_modes_run_fewer_matmuls():
    idx = torch.randint(0, 64, (1, 8))
    per_layer = {p: _count_linear_calls(build_model(zoo_spec(p)), idx) // TINY.n_layers
                 for p in ("qkv", "q_kv", "qk_v", "qkv_single")}
    assert per_layer == {"qkv": 4, "q_kv": 3, "qk_v": 3, "qkv_single": 2}  # projections + W_o


def _reference_attention(att: Attention, x, causal, window=None):
    """Explicit fp32 maths of one layer: scores, masks, asym term, softmax, W_o."""
    T, h, g, hd = x.shape[1], att.h, att.g, att.hd
    k = att.k(x).view(1, T, g, hd).transpose(1, 2)
    v = k if att.v is None else att.v(x).view(1, T, g, hd).transpose(1, 2)
    q = k if att.q is None else att.q(x).view(1, T, h, hd).transpose(1, 2)
    q = q.repeat_interleave(h // q.shape[1], 1)
    k, v = k.repeat_interleave(h // g, 1), v.repeat_interleave(h // g, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (1, h, T, T)
    i = torch.arange(T)
    if att.layer.asym_pos:
        w = att.asym_w
        P = torch.sin((i[:, None] - i[None, :]).float()[..., None] * att.asym_freqs)  # (T, T, m)
        s = s * w.sum(-1).view(1, h, 1, 1) + torch.einsum("ijm,hm->hij", P, w) + att.asym_b.view(h, 1, 1)
    ok = torch.ones(T, T, dtype=torch.bool)
    if causal:
        ok &= i[:, None] >= i[None, :]
    if window:
        ok &= (i[:, None] - i[None, :]) < window
    a = F.softmax(s.masked_fill(~ok, float("-inf")), dim=-1) @ v
    return att.o(a.transpose(1, 2).reshape(1, T, h * hd))


@pytest.mark.parametrize("layer, causal", [
    (LayerSpec(), True), (LayerSpec(proj="q_kv", n_kv_heads=2), True), (LayerSpec(proj="qk_v"), True),
    (LayerSpec(proj="qkv_single", n_kv_heads=1), True), (LayerSpec(window=3), True),
    (LayerSpec(proj="qk_v", asym_pos=True), False), (LayerSpec(proj="qkv_single", asym_pos=True), True),
])
def test_attention_matches_explicit_fp32_reference(layer, causal):
    spec = ArchSpec(vocab_size=16, context=16, d_model=32, n_heads=4, ffn_dim=32, pos="none",
                    causal=causal, layers=(layer,))
    att = build_model(spec).blocks[0].mix
    with torch.no_grad():
        att.asym_b.add_(0.3) if layer.asym_pos else None
        x = torch.randn(1, 12, 32)
        got, _ = att(x, torch.arange(12), None, None)
        want = _reference_attention(att, x, causal, layer.window)
    err = (got - want).abs().max().item()
    assert err < 1e-5, f"max |model - reference| = {err:.3e}"


def test_symmetric_score_is_symmetric_and_asym_pos_breaks_it():
    spec = ArchSpec(vocab_size=16, context=16, d_model=32, n_heads=4, ffn_dim=32, pos="none", causal=False,
                    layers=(LayerSpec(proj="qk_v"),))
    att = build_model(spec).blocks[0].mix
    x = torch.randn(1, 6, 32)
    k = att.k(x).view(1, 6, 4, 8).transpose(1, 2)
    s = k @ k.transpose(-1, -2)
    assert torch.allclose(s, s.transpose(-1, -2), atol=1e-6)
    i = torch.arange(6)
    att2 = build_model(ArchSpec(**{**spec.to_dict(), "layers": [{"proj": "qk_v", "asym_pos": True}]})).blocks[0].mix
    P = torch.sin((i[:, None] - i[None, :]).float()[..., None] * att2.asym_freqs)
    bias = torch.einsum("ijm,hm->hij", P, att2.asym_w)
    assert not torch.allclose(bias, bias.transpose(-1, -2))


def test_context_limits_are_errors():
    model = build_model(zoo_spec("qkv", pos="learned")).eval()
    with pytest.raises(ValueError, match="exceed context=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


# ---- the preallocated cache (nas/kv_cache.py) -------------------------------------------
def _decode_steps(model, idx, cache, prefill):
    with torch.no_grad():
        steps = [model(idx[:, :prefill], cache)] + [model(idx[:, t:t + 1], cache) for t in range(prefill, idx.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("name", ZOO)
def test_static_cache_writes_in_place_and_holds_what_the_design_needs(name):
    spec = zoo_spec(name)
    model = build_model(spec).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 20))
    cache = model.new_cache(2, 24)
    storage = [t.data_ptr() for lc in cache.layers for t in lc.allocated()]  # allocated before any step
    with torch.no_grad():
        model(idx[:, :6], cache)
        for t in range(6, 20):
            model(idx[:, t:t + 1], cache)
            assert [t.data_ptr() for lc in cache.layers for t in lc.allocated()] == storage, "a step reallocated"
    # Bytes held: the tokens decoded so far; bytes allocated: the max_tokens it was made for (a window's ring).
    assert cache.nbytes() == kv_cache_bytes(spec, 20, batch=2, dtype="float32")
    assert cache.allocated_nbytes() == kv_cache_bytes(spec, 24, batch=2, dtype="float32")
    for layer, lc in zip(spec.layers, cache.layers):
        n = sum(t.numel() for t in lc.allocated())
        assert n == 2 * (24 if layer.window is None else min(24, layer.window)) * kv_elements_per_token(spec, layer)


@pytest.mark.parametrize("name", ZOO)
def test_static_and_concat_layouts_give_the_same_logits(name):
    model = build_model(zoo_spec(name)).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 20))
    static = _decode_steps(model, idx, model.new_cache(2, 20), 7)
    concat = _decode_steps(model, idx, model.new_cache(2, 20, layout="concat"), 7)
    err = (static - concat).abs().max().item()
    assert err < ATOL, f"{name}: max |static - concat| = {err:.3e}"


def test_window_ring_wraps_around_and_keeps_the_last_window_tokens():
    spec = zoo_spec("qkv+window5", pos="none")
    model = build_model(spec).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 13))
    ring, grown = model.new_cache(1, 13), model.new_cache(1, 13, layout="concat")
    _decode_steps(model, idx, ring, 3)
    _decode_steps(model, idx, grown, 3)
    for lc, old in zip(ring.layers, grown.layers):
        assert lc.capacity == 5 and lc.seen == 13
        # 13 tokens through 5 slots: token p sits in slot p % 5, the last 5 tokens (8..12) are kept
        assert lc.slot_pos.tolist() == [10, 11, 12, 8, 9]
        k = lc.buffers[0]  # (B, g, 5, hd) in slot order; the concat layout keeps them in position order
        assert torch.allclose(k, old.entries[0][:, :, [2, 3, 4, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("chunks", [[12], [3, 9], [6, 1, 1, 4]])
def test_window_ring_takes_chunks_longer_than_the_window(chunks):
    model = build_model(zoo_spec("qkv+window5")).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, sum(chunks)))
    cache = model.new_cache(2, sum(chunks))
    with torch.no_grad():
        full = model(idx)
        starts = [sum(chunks[:i]) for i in range(len(chunks))]
        inc = torch.cat([model(idx[:, s:s + c], cache) for s, c in zip(starts, chunks)], dim=1)
    assert (full - inc).abs().max().item() < ATOL
    assert sorted(cache.layers[0].slot_pos.tolist()) == list(range(sum(chunks) - 5, sum(chunks)))


def test_cache_errors_say_what_to_change():
    model = build_model(zoo_spec("qkv")).eval()
    cache = model.new_cache(2, 8)
    with torch.no_grad(), pytest.raises(ValueError, match="max_tokens=8"):
        model(torch.zeros(2, 9, dtype=torch.long), cache)
    with torch.no_grad(), pytest.raises(ValueError, match="batch 2"):
        model(torch.zeros(1, 3, dtype=torch.long), model.new_cache(2, 8))
    with torch.no_grad(), pytest.raises(ValueError, match="autocast"):
        model(torch.zeros(2, 3, dtype=torch.long), model.new_cache(2, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="layout"):
        model.new_cache(2, 8, layout="paged")
    lazy = model.new_cache()  # no batch: allocated at the first forward, for the context
    with torch.no_grad():
        model(torch.zeros(3, 4, dtype=torch.long), lazy)
    assert lazy.allocated_nbytes() == kv_cache_bytes(model.spec, TINY.context, batch=3, dtype="float32")


# ---- V tied to K under RoPE: the rotated or the unrotated K ------------------------------
ROTATED = ["q_kv", "qkv_single", "q_kv+mqa", "q_kv+latent16+gqa2", "q_kv+window4+cla2"]


def _rotated(name):
    spec = zoo_spec(name)
    return spec.with_layers([dataclasses.replace(la, v_rotated=la.v_is_k and la.kv_from is None) for la in spec.layers])


@pytest.mark.parametrize("name", ROTATED)
def test_rotated_v_decodes_like_recomputation_and_differs_from_unrotated(name):
    spec = _rotated(name)
    model = build_model(spec).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(idx)
    err = (full - _decode_steps(model, idx, model.new_cache(2, 20), 7)).abs().max().item()
    assert err < ATOL, f"{name}+v_rotated: max |cached - recomputed| = {err:.3e}"
    torch.manual_seed(0)
    a = build_model(spec).eval()
    torch.manual_seed(0)
    b = build_model(zoo_spec(name)).eval()
    with torch.no_grad():
        assert not torch.allclose(a(idx), b(idx))  # same weights, another V


def test_v_rotated_is_validated_and_left_out_of_the_json_at_its_default():
    assert "v_rotated" not in zoo_spec("q_kv").to_json()
    spec = _rotated("q_kv")
    assert ArchSpec.from_json(spec.to_json()) == spec and spec.hash != zoo_spec("q_kv").hash
    with pytest.raises(ValueError, match="v_rotated"):
        zoo_spec("qkv").with_layers([LayerSpec(v_rotated=True)])
    with pytest.raises(ValueError, match="pos='rope'"):
        zoo_spec("q_kv", pos="learned").with_layers([LayerSpec(proj="q_kv", v_rotated=True)])
    with pytest.raises(ValueError, match="true or false"):
        LayerSpec(v_rotated=1)

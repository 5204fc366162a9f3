"""Analytic costs against the built module: parameters, KV-cache bytes, FLOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from nas.costs import (
    KV_SOURCE_COSTS,
    costs,
    forward_flops_per_token,
    kv_cache_bytes,
    kv_elements_per_token,
)
from nas.kv_source import KV_SOURCE_NAMES, kv_source_name
from nas.model import KV_SOURCES, build_model
from search_spaces.spec import ArchSpec, uniform
from search_spaces.variants import variant
from tests.conftest import TINY, ZOO, zoo_spec

GLOBALS = [
    {}, {"bias": True}, {"norm": "rmsnorm"}, {"activation": "swiglu", "bias": True},
    {"activation": "relu2"}, {"tie_embeddings": False, "pos": "learned"}, {"causal": False},
]


@pytest.mark.parametrize("changes", GLOBALS, ids=str)
@pytest.mark.parametrize("name", ZOO)
def test_param_count_equals_the_built_module(name, changes):
    if changes.get("causal") is False and "window" in name:
        pytest.skip("windows are causal only")
    spec = zoo_spec(name, **changes)
    model = build_model(spec)
    assert costs(spec).params == sum(p.numel() for p in model.parameters())
    attn = sum(p.numel() for n, p in model.named_parameters() if ".mix." in n)
    assert costs(spec).attention_params == attn


@pytest.mark.parametrize("n_tokens", [3, 20])
@pytest.mark.parametrize("name", ZOO)
def test_kv_bytes_equal_the_cache_tensors_after_decoding(name, n_tokens):
    spec = zoo_spec(name)
    model = build_model(spec).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 64, (3, 2)), cache)
        for _ in range(n_tokens - 2):
            model(torch.randint(0, 64, (3, 1)), cache)
    assert cache.nbytes() == kv_cache_bytes(spec, n_tokens, batch=3, dtype="float32")


def test_paper_kv_reductions_at_16_heads():
    base = ArchSpec(vocab_size=50304, context=2048, d_model=1024, n_heads=16, ffn_dim=4096, layers=uniform(20))
    kv = lambda name: costs(variant(name, base=base)).kv_cache_bytes_per_token
    ref = kv("qkv")
    reductions = {name: 1 - kv(name) / ref for name in ["q_kv", "qkv+gqa4", "qkv+mqa", "q_kv+gqa4", "q_kv+mqa"]}
    assert reductions == pytest.approx(
        {"q_kv": 0.5, "qkv+gqa4": 0.75, "qkv+mqa": 0.9375, "q_kv+gqa4": 0.875, "q_kv+mqa": 0.96875}, abs=1e-12
    )
    assert ref == 20 * 2 * 1024 * 2  # 20 layers x (K + V) x d_model x 2 bytes (bf16)


@pytest.mark.parametrize("name", [n for n in ZOO if "dconv" not in n and "2d" not in n])
def test_forward_flops_match_torch_flop_counter(name):
    spec = zoo_spec(name)
    model = build_model(spec).eval()
    B, T = 2, 24
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randint(0, 64, (B, T)))
    counted = counter.get_total_flops()
    # The counter sees matmuls (projections, LM head, mixer routing) but not CPU SDPA kernels:
    # add torch's own SDPA formula for each attention layer.
    hd = spec.head_dim
    shape = (B, spec.n_heads, T, hd)
    counted += sum(sdpa_flop_count(shape, shape, shape) for layer in spec.layers if layer.attn == "attention")
    counted /= B * T
    # torch charges every query the whole sequence (dense kernels): compare without the causal discount
    want = forward_flops_per_token(spec, T, causal_discount=False)
    assert counted == pytest.approx(want, rel=1e-9), f"counted {counted} vs analytic {want}"


def test_causal_discount_and_training_flops():
    spec = zoo_spec("qkv")
    c = costs(spec, seq_len=32)
    assert c.flops_per_token == pytest.approx(3 * c.flops_per_token_forward, abs=2)
    assert c.flops_per_token_forward < forward_flops_per_token(spec, 32, causal_discount=False)
    assert costs(zoo_spec("qkv+window5")).flops_per_token_decode < costs(spec).flops_per_token_decode


def test_bad_dtype_is_an_error():
    with pytest.raises(ValueError, match="use one of"):
        costs(TINY, dtype="int3")


def test_every_kv_source_has_one_module_and_one_cost_function():
    assert set(KV_SOURCES) == set(KV_SOURCE_COSTS) == set(KV_SOURCE_NAMES)
    zoo_sources = {kv_source_name(layer) for name in ZOO for layer in zoo_spec(name).layers if layer.has_attention}
    assert zoo_sources == set(KV_SOURCE_NAMES)  # the zoo exercises every source


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", ZOO)
def test_each_kv_source_cost_matches_its_module(name, bias):
    spec = zoo_spec(name, bias=bias)
    for layer in spec.layers:
        if layer.has_attention:
            kind = kv_source_name(layer)
            source, cost = KV_SOURCES[kind](spec, layer), KV_SOURCE_COSTS[kind](spec, layer)
            assert cost.params == sum(p.numel() for p in source.parameters())
            assert cost.conv_widths == tuple(source.conv_widths().values())


@pytest.mark.parametrize("name", ZOO)
def test_kv_elements_per_token_equal_each_layers_cache(name):
    spec = zoo_spec(name)
    model = build_model(spec).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 64, (2, 3)), cache)  # 3 tokens: within every zoo window
    for layer, lc in zip(spec.layers, cache.layers):
        assert sum(t.numel() for t in lc.per_token_tensors()) == 2 * 3 * kv_elements_per_token(spec, layer)


@pytest.mark.parametrize("window", [None, 1, 3, 7, 40])
@pytest.mark.parametrize("T", [1, 2, 5, 32])
def test_mean_keys_closed_form_is_the_sum_over_queries(T, window):
    from nas.costs import _mean_keys
    from search_spaces.spec import LayerSpec

    w = T if window is None else window
    assert _mean_keys(TINY, LayerSpec(window=window), T, True) == sum(min(i + 1, w) for i in range(T)) / T

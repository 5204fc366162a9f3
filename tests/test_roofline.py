"""The decode roofline against a hand-worked case (nas/measure/roofline.py, nas.costs), and its
figures in a measurement."""
from __future__ import annotations

import pytest

import nas.measure as M
from nas.costs import decode_step_bytes, decode_weight_elements
from search_spaces.spec import ArchSpec, LayerSpec, uniform

# One qkv layer, d 32, 4 heads, ffn 64, byte vocabulary, tied embeddings, no biases (LayerNorm gains only).
SPEC = ArchSpec(vocab_size=256, context=64, d_model=32, n_heads=4, ffn_dim=64, layers=uniform(1))


def test_decode_step_bytes_and_flops_by_hand():
    # Weights: table 256·32 = 8192 (read whole as the tied head), W_q,k,v,o 4·32·32 = 4096,
    # MLP 2·32·64 = 4096, two block norms and the final one 3·32 = 96: 16480 numbers.
    assert decode_weight_elements(SPEC, 9, batch=2) == 16480
    # 9 cached tokens + the new one = 10 keys, each K and V of 32 numbers, for 2 sequences, fp32:
    # 16480·4 + 10·64·2·4 = 65920 + 5120.
    assert decode_step_bytes(SPEC, 9, batch=2, dtype="float32") == 71040
    # FLOPs per sequence: head 2·256·32 + projections 2·4096 + MLP 2·4096 = 32768, plus scores and
    # mixing 2·2·32·10 = 1280: 34048; 68096 for the two.
    machine = M.Machine(bandwidth=1e6, peak_flops=1e6)
    step = M.decode_step_s(SPEC, 9, batch=2, dtype="float32", machine=machine)
    assert step == pytest.approx(71040 / 1e6)  # memory-bound: 71040 B > 68096 FLOP at equal rates
    compute_bound = M.Machine(bandwidth=1e9, peak_flops=1e6)
    assert M.decode_step_s(SPEC, 9, batch=2, dtype="float32", machine=compute_bound) == pytest.approx(68096 / 1e6)
    # One step ending at context 10 (9 cached before it): 2 tokens per 71.04 ms.
    roof = M.decode_roofline_tokens_per_s(SPEC, context=10, steps=1, batch=2, dtype="float32", machine=machine)
    assert roof == pytest.approx(2 / 0.07104)
    # Two steps ending at context 11 run with 9 and then 10 tokens cached: 71040 and 71040 + 64·2·4 bytes.
    two = M.decode_roofline_tokens_per_s(SPEC, context=11, steps=2, batch=2, dtype="float32", machine=machine)
    assert two == pytest.approx(4 / ((71040 + 71552) / 1e6))
    with pytest.raises(ValueError, match="steps"):
        M.decode_roofline_tokens_per_s(SPEC, context=4, steps=4, batch=1, dtype="float32", machine=machine)


def test_bytes_read_follow_the_design():
    tied = SPEC.with_layers([LayerSpec(proj="q_kv")])
    window = SPEC.with_layers([LayerSpec(window=4)])
    # V = K: one projection fewer (32·32) and half the entries per key.
    assert decode_step_bytes(SPEC, 9, batch=2, dtype="float32") - decode_step_bytes(tied, 9, batch=2, dtype="float32") \
        == 4 * (32 * 32 + 10 * 32 * 2)
    # A window reads at most its own keys, however long the context.
    assert decode_step_bytes(window, 50, dtype="float32") == decode_step_bytes(window, 3, dtype="float32")
    # An untied table is looked up (batch rows) and the head read whole; learned positions: one row.
    untied = ArchSpec(**{**SPEC.to_dict(), "tie_embeddings": False, "pos": "learned"})
    assert decode_weight_elements(untied, 9, batch=2) == 16480 + 2 * 32 + 32  # the head as the tied table was
    mixer = SPEC.with_layers([LayerSpec(attn="mixer")])
    # A mixer reads one routing row per head over the keys it mixes, not its whole (h, L, L) table.
    assert decode_weight_elements(mixer, 9) == decode_weight_elements(mixer, 0) + 4 * 9


def test_every_decode_measurement_reports_its_roofline(tmp_path, monkeypatch):
    monkeypatch.setenv("QKVNAS_LOCK_DIR", str(tmp_path))
    s = M.MeasureSettings(include=("decode",), decode_contexts=(32, 16), decode_batch=2, decode_tokens=4,
                          warmup=1, repeats=2, min_repeat_s=0.0, threads=1)
    m = M.measure(SPEC.with_layers(uniform(2, proj="q_kv")), s).to_dict()
    assert m["memory_bandwidth_bytes_per_s"] > 1e8 and m["roofline_peak_flops_per_s"] > 1e8
    for ctx in (32, 16):
        roof, frac = m[f"decode_roofline_tokens_per_s_ctx{ctx}"], m[f"decode_roofline_frac_ctx{ctx}"]
        assert roof > 0 and frac == pytest.approx(m[f"decode_tokens_per_s_ctx{ctx}"] / roof)
    assert m["decode_roofline_frac"] == m["decode_roofline_frac_ctx32"]
    off = M.measure(SPEC, M.MeasureSettings(include=("prefill",), warmup=0, repeats=1, threads=1)).to_dict()
    for key in ("decode_roofline_frac", "decode_roofline_tokens_per_s", "memory_bandwidth_bytes_per_s"):
        assert off[key] is None and off["unavailable"][key]

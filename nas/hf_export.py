"""A qkvnas design as a Hugging Face Llama model: ``to_llama(spec, state_dict)``.

Llama's architecture expresses the designs that are plain multi-head, grouped-query or
multi-query attention in every layer (one K/V head count for all layers), with RoPE (base 10^4,
the half-split rotation qkvnas uses), RMSNorm, a SwiGLU FFN, no biases, pre-norm blocks and a
causal LM head. Every other design (K=V or Q=K tying, low rank, latent K/V, cross-layer sharing,
windows, the 2D term, convolutions, mixers, learned positions, LayerNorm, GELU) is refused with
the reason: a converted model that computes something else would be worse than none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from search_spaces.spec import ArchSpec

ROPE_THETA = 10000.0  # nas.model.ROPE_BASE


def llama_incompatibility(spec: ArchSpec) -> str | None:
    """Why Llama cannot express ``spec``, or None when it can."""
    for i, layer in enumerate(spec.layers):  # the attention design first: it is what a search varies
        if layer.attn != "attention" or layer.proj != "qkv":
            return f"layers[{i}] is attn={layer.attn!r}, proj={layer.proj!r}; Llama has separate Q, K and V in every layer"
        extras = [name for name in ("qk_rank", "v_rank", "kv_latent", "kv_from", "window") if getattr(layer, name) is not None]
        extras += [name for name in ("asym_pos", "dconv", "v_rotated") if getattr(layer, name)]
        if extras:
            return f"layers[{i}] sets {', '.join(extras)}, which Llama does not have"
    kv_heads = {layer.n_kv_heads for layer in spec.layers}
    if len(kv_heads) > 1:
        return f"the layers have different K/V head counts {sorted(h or 0 for h in kv_heads)}; Llama has one for every layer"
    needs = {"causal": (spec.causal, True), "pos": (spec.pos, "rope"), "norm": (spec.norm, "rmsnorm"),
             "activation": (spec.activation, "swiglu"), "bias": (spec.bias, False), "head_bias": (spec.head_bias, False)}
    for name, (value, wanted) in needs.items():
        if value != wanted:
            return f"{name}={value!r}: Llama has {name}={wanted!r}"
    return None


def llama_config(spec: ArchSpec) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.d_model, intermediate_size=spec.ffn_dim,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads, num_key_value_heads=spec.layers[0].n_kv_heads,
        head_dim=spec.head_dim, hidden_act="silu", max_position_embeddings=spec.context,
        rms_norm_eps=torch.finfo(torch.float32).eps,  # nn.RMSNorm's default eps in float32
        tie_word_embeddings=spec.tie_embeddings, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def llama_state_dict(spec: ArchSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """qkvnas parameter names → Llama's (the tensors are the same: no reshaping is needed)."""
    out = {"model.embed_tokens.weight": state["tok.weight"], "model.norm.weight": state["norm_f.weight"]}
    for i in range(spec.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in (("mix.q", "self_attn.q_proj"), ("mix.kv.k", "self_attn.k_proj"), ("mix.kv.v", "self_attn.v_proj"),
                     ("mix.o", "self_attn.o_proj"), ("mlp.gate", "mlp.gate_proj"), ("mlp.up", "mlp.up_proj"),
                     ("mlp.down", "mlp.down_proj"), ("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")):
            out[f"{theirs}{b}.weight"] = state[f"{ours}{a}.weight"]
    out["lm_head.weight"] = state["tok.weight"] if spec.tie_embeddings else state["head.weight"]
    return out


def to_llama(spec: ArchSpec, state: dict[str, torch.Tensor]) -> Any:
    """A ``LlamaForCausalLM`` computing what the qkvnas model computes; ValueError (one line, with
    the reason) for a design Llama cannot express."""
    reason = llama_incompatibility(spec)
    if reason is not None:
        raise ValueError(f"design {spec.hash} cannot be a Hugging Face Llama model: {reason}")
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(spec))
    missing, unexpected = model.load_state_dict(llama_state_dict(spec, state), strict=False)
    missing = [k for k in missing if not (spec.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"the Llama model does not take these weights: missing {missing}, unexpected {unexpected}")
    return model.eval()


def export_hf(spec: ArchSpec, state: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """``save_pretrained`` of the Llama model into ``folder`` (config.json, model.safetensors),
    with qkvnas's spec beside it (``qkvnas_spec.json``)."""
    from transformers.utils import logging as hf_logging

    out = Path(folder)
    hf_logging.disable_progress_bar()  # one JSON line on stdout is the command's whole output
    to_llama(spec, state).save_pretrained(out)
    (out / "qkvnas_spec.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n", encoding="utf-8")
    return out

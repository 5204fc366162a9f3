"""The architecture spec: one attention design as plain, frozen, hashable data.

Knows nothing of torch, Optuna or Ray. Every field that a user can get wrong is checked
in ``__post_init__`` with an error that names the field and says what to change.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

Proj = Literal["qkv", "q_kv", "qk_v", "qkv_single"]
Attn = Literal["attention", "none", "mixer"]

PROJ_MODES: tuple[str, ...] = ("qkv", "q_kv", "qk_v", "qkv_single")
ATTN_KINDS: tuple[str, ...] = ("attention", "none", "mixer")
POS_KINDS: tuple[str, ...] = ("rope", "learned", "none")
NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm")
ACTIVATIONS: tuple[str, ...] = ("gelu", "relu2", "swiglu")
INIT_SCHEMES: tuple[str, ...] = ("gpt2", "torch_default")
OMITTED_AT_DEFAULT: dict[str, object] = {"init": "gpt2", "head_bias": False}  # see ModelDims
SYMMETRIC_PROJ: tuple[str, ...] = ("qk_v", "qkv_single")  # score map is K·Kᵀ
V_TIED_PROJ: tuple[str, ...] = ("q_kv", "qkv_single")  # V is K: cache holds K only
ASYM_CHANNELS = 10  # m in the paper's (n, n, m) positional tensor
DCONV_KERNEL = 3  # Primer-EZ: depthwise 3x1 causal convolution


def _divisors(n: int, up_to: int = 1024) -> list[int]:
    """The divisors of ``n`` up to ``up_to`` (and ``n`` itself): bounded, so that an absurd
    width in a spec gets its error at once."""
    return [d for d in range(1, min(n, up_to) + 1) if n % d == 0] + ([n] if n > up_to else [])


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """One block's token mixer. ``n_kv_heads=None`` means one K/V head per query head (MHA)."""

    attn: Attn = "attention"
    proj: Proj = "qkv"
    n_kv_heads: int | None = None
    qk_rank: int | None = None  # W_q, W_k = A·B with this inner rank
    v_rank: int | None = None  # W_v = A·B
    kv_latent: int | None = None  # MLA-like: cache one latent of this size per token
    kv_from: int | None = None  # reuse the K/V of this earlier layer; cache nothing
    asym_pos: bool = False  # the paper's 2D positional term for symmetric scores
    dconv: bool = False  # Primer-EZ depthwise causal conv after each projection
    window: int | None = None  # sliding-window attention over this many tokens
    # Where V is K (q_kv, qkv_single) with pos='rope': V is the rotated K (true: one cached tensor
    # serves scores and values, nothing extra per step) or the projection before RoPE (false, the
    # default: every design written before this field keeps its meaning, JSON and hash).
    v_rotated: bool = False

    def __post_init__(self) -> None:
        _check_choice("attn", self.attn, ATTN_KINDS)
        _check_choice("proj", self.proj, PROJ_MODES)
        for name in ("n_kv_heads", "qk_rank", "v_rank", "kv_latent", "kv_from", "window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name}={value!r} must be an integer or null")
        for name in ("asym_pos", "dconv", "v_rotated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")

    @property
    def has_attention(self) -> bool:
        return self.attn == "attention"

    @property
    def symmetric(self) -> bool:
        return self.proj in SYMMETRIC_PROJ

    @property
    def v_is_k(self) -> bool:
        return self.proj in V_TIED_PROJ

    @property
    def q_is_k(self) -> bool:
        return self.proj in SYMMETRIC_PROJ


@dataclass(frozen=True, kw_only=True)
class ModelDims:
    """The global settings of a model: everything but its layers."""

    vocab_size: int = 256
    context: int = 256
    d_model: int = 128
    n_heads: int = 4
    ffn_dim: int = 512
    pos: Literal["rope", "learned", "none"] = "rope"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    activation: Literal["gelu", "relu2", "swiglu"] = "gelu"
    bias: bool = False
    tie_embeddings: bool = True
    causal: bool = True  # False: bidirectional encoder (probe tasks), no decoding
    # The QKV-variants paper's setup needs these two; at their defaults they are left out of the
    # JSON, so every design written before them keeps its JSON and hash.
    init: Literal["gpt2", "torch_default"] = "gpt2"  # gpt2: N(0, 0.02), residual outputs / sqrt(2L)
    head_bias: bool = False  # a bias on the output logits (an untied head's, or beside the tied one)


@dataclass(frozen=True, kw_only=True)
class ArchSpec(ModelDims):
    """A whole model: global settings plus one ``LayerSpec`` per layer."""

    layers: tuple[LayerSpec, ...] = field(default_factory=lambda: (LayerSpec(), LayerSpec()))

    def __post_init__(self) -> None:
        # Accept plain dicts/lists (JSON) and resolve n_kv_heads=None, so that two specs
        # describing the same model compare, serialise and hash the same.
        layers = tuple(_as_layer(i, layer) for i, layer in enumerate(self.layers))
        layers = tuple(
            dataclasses.replace(layer, n_kv_heads=self.n_heads) if layer.n_kv_heads is None else layer
            for layer in layers
        )
        object.__setattr__(self, "layers", layers)
        self._validate()

    # ---- derived -----------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # ---- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"] = [_layer_dict(layer) for layer in self.layers]
        for name, default in OMITTED_AT_DEFAULT.items():
            if out[name] == default:
                del out[name]
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        if not isinstance(data, dict):
            raise ValueError(f"a spec must be a JSON object, got {type(data).__name__}")
        _reject_unknown("spec", data, {f.name for f in dataclasses.fields(cls)})
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"spec is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str) -> ArchSpec:
        text = read_spec_text(path)
        try:
            return cls.from_json(text)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @property
    def hash(self) -> str:
        """Stable 12-hex-digit id of the design (canonical JSON, sorted keys)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def with_layers(self, layers: list[LayerSpec] | tuple[LayerSpec, ...]) -> ArchSpec:
        return dataclasses.replace(self, layers=tuple(layers))

    # ---- validation --------------------------------------------------------------
    def _validate(self) -> None:
        for name in ("vocab_size", "context", "d_model", "n_heads", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        _check_choice("pos", self.pos, POS_KINDS)
        _check_choice("norm", self.norm, NORM_KINDS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("init", self.init, INIT_SCHEMES)
        for name in ("bias", "tie_embeddings", "causal", "head_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if not self.layers:
            raise ValueError("layers is empty; give at least one layer, e.g. [{\"proj\": \"qkv\"}]")
        if self.d_model % self.n_heads:
            ok = [h for h in _divisors(self.d_model, 64) if h <= 64]
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}; use one of {ok}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(
                f"pos='rope' needs an even head dimension, but d_model/n_heads = {self.head_dim}; "
                "change n_heads or d_model, or use pos='learned'"
            )
        for i, layer in enumerate(self.layers):
            self._validate_layer(i, layer)

    def _validate_layer(self, i: int, layer: LayerSpec) -> None:
        where = f"layers[{i}]"
        if layer.attn != "attention":
            extras = [
                name for name in ("qk_rank", "v_rank", "kv_latent", "kv_from", "window")
                if getattr(layer, name) is not None
            ] + [name for name in ("asym_pos", "dconv", "v_rotated") if getattr(layer, name)]
            if extras:
                raise ValueError(
                    f"{where}: attn={layer.attn!r} has no attention, so {', '.join(extras)} do not apply; "
                    "remove them or set attn='attention'"
                )
            return
        h, g = self.n_heads, layer.n_kv_heads
        assert g is not None
        if g < 1 or h % g:
            raise ValueError(f"{where}.n_kv_heads={g} must divide n_heads={h}; use one of {_divisors(h)}")
        for name in ("qk_rank", "v_rank", "kv_latent"):
            rank = getattr(layer, name)
            if rank is not None and not 1 <= rank < self.d_model:
                raise ValueError(
                    f"{where}.{name}={rank} is out of range; use 1..{self.d_model - 1} "
                    "(a rank of d_model or more is no factorisation: use null)"
                )
        if layer.v_rank is not None and layer.v_is_k:
            raise ValueError(f"{where}.v_rank does not apply to proj={layer.proj!r} (V is K); set it to null")
        if layer.kv_latent is not None:
            if layer.proj not in ("qkv", "q_kv"):
                raise ValueError(
                    f"{where}.kv_latent needs separate queries: proj must be 'qkv' or 'q_kv', not {layer.proj!r}"
                )
            if layer.v_rank is not None:
                raise ValueError(f"{where}: kv_latent already factorises V; set v_rank to null")
        if layer.window is not None:
            if layer.window < 1:
                raise ValueError(f"{where}.window={layer.window} must be at least 1, or null for full attention")
            if not self.causal:
                raise ValueError(f"{where}.window is for causal models; set window to null or causal=true")
        if layer.v_rotated and (not layer.v_is_k or self.pos != "rope"):
            raise ValueError(
                f"{where}.v_rotated chooses the rotated K as V, so it needs V tied to K (proj 'q_kv' or "
                f"'qkv_single', not {layer.proj!r}) and pos='rope' (not {self.pos!r}); set it to false"
            )
        if layer.asym_pos and not layer.symmetric:
            raise ValueError(
                f"{where}.asym_pos restores asymmetry to a symmetric score: use it with proj 'qk_v' or "
                f"'qkv_single', not {layer.proj!r}"
            )
        if layer.kv_from is not None:
            self._validate_kv_from(i, layer)

    def _validate_kv_from(self, i: int, layer: LayerSpec) -> None:
        where = f"layers[{i}].kv_from={layer.kv_from}"
        j = layer.kv_from
        assert j is not None
        if not 0 <= j < i:
            earlier = f"an earlier layer (0..{i - 1})" if i else "an earlier layer, and layer 0 has none: remove kv_from"
            raise ValueError(f"{where} must point to {earlier}; a layer cannot read K/V from itself or later")
        src = self.layers[j]
        if not src.has_attention:
            raise ValueError(f"{where}: layer {j} has attn={src.attn!r} and makes no K/V; point to an attention layer")
        if src.kv_from is not None:
            raise ValueError(f"{where}: layer {j} itself reuses layer {src.kv_from}; use kv_from={src.kv_from}")
        if layer.proj != "qkv" or layer.kv_latent is not None or layer.v_rank is not None or layer.asym_pos:
            raise ValueError(
                f"{where}: a layer that reuses K/V computes only its queries; set proj='qkv' and "
                "kv_latent, v_rank null and asym_pos false"
            )
        if layer.n_kv_heads != src.n_kv_heads:
            raise ValueError(
                f"{where}: n_kv_heads={layer.n_kv_heads} must match layer {j}'s n_kv_heads={src.n_kv_heads}"
            )
        if layer.window != src.window:
            raise ValueError(f"{where}: window={layer.window} must match layer {j}'s window={src.window}")
        if layer.dconv:
            raise ValueError(f"{where}: dconv convolves this layer's own K/V, which it does not have; set dconv false")


def read_spec_text(path: str) -> str:
    """The text of a spec file; a path that is no readable UTF-8 file is a one-line error."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ValueError(f"spec file {path!r} does not exist; give the path of a JSON spec") from None
    except IsADirectoryError:
        specs = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".json"))[:1]
        hint = f", e.g. {specs[0]}" if specs else " (an export keeps them in specs/<hash>.json)"
        raise ValueError(f"{path} is a folder; give the path of one JSON spec file{hint}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (not UTF-8); give a JSON spec such as "
                         '{"d_model": 128, "layers": [{"proj": "qkv"}]}') from None
    except OSError as err:
        raise ValueError(f"cannot read spec file {path!r}: {err.strerror}; give a readable JSON spec") from None
    if not text.strip():
        raise ValueError(f"{path} is empty; write a JSON spec such as "
                         '{"d_model": 128, "layers": [{"proj": "qkv"}]}')
    return text


def _layer_dict(layer: LayerSpec) -> dict[str, Any]:
    out = dataclasses.asdict(layer)
    if not out["v_rotated"]:  # left out at its default, so that older designs keep their JSON and hash
        del out["v_rotated"]
    return out


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not known; use one of {list(choices)}")


def _reject_unknown(where: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")


def _as_layer(i: int, layer: LayerSpec | dict[str, Any]) -> LayerSpec:
    if isinstance(layer, LayerSpec):
        return layer
    if not isinstance(layer, dict):
        raise ValueError(f"layers[{i}] must be an object like {{\"proj\": \"qkv\"}}, got {layer!r}")
    _reject_unknown(f"layers[{i}]", layer, {f.name for f in dataclasses.fields(LayerSpec)})
    try:
        return LayerSpec(**layer)
    except ValueError as err:
        raise ValueError(f"layers[{i}].{err}") from None


def uniform(n_layers: int, **layer: Any) -> tuple[LayerSpec, ...]:
    """``n_layers`` identical layers: ``ArchSpec(layers=uniform(4, proj="q_kv", n_kv_heads=1))``."""
    return tuple(LayerSpec(**layer) for _ in range(n_layers))

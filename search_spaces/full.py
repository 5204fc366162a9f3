"""Every knob: width, depth, and per layer the mixer kind, projections, sharing, factorisation,
cross-layer reuse, positional asymmetry, convolution and windowing.

Questions are conditional (a rank is asked only when factorising), and every name always has
the same choices, so any Optuna sampler can model them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from search_spaces.base import BaseDims, Trial, kv_heads_for
from search_spaces.spec import PROJ_MODES, ArchSpec, LayerSpec


@dataclass(frozen=True, kw_only=True)
class FullSpace:
    name = "full"
    base: BaseDims = field(default_factory=BaseDims)
    d_models: tuple[int, ...] = (64, 96, 128)
    n_layers_range: tuple[int, int] = (2, 4)
    n_heads: tuple[int, ...] = (2, 4)
    projs: tuple[str, ...] = PROJ_MODES
    kv_sharing: tuple[str, ...] = ("mha", "gqa2", "mqa")
    mixers: tuple[str, ...] = ("attention", "none", "mixer")
    rank_fractions: tuple[float, ...] = (0.25, 0.5)  # of d_model, for low rank and latent KV
    windows: tuple[int, ...] = (16, 32)

    def grid(self) -> list[dict[str, Any]]:
        raise ValueError("space 'full' is not finite enough to list (depth, ranks, windows and cross-layer reuse "
                         "multiply to millions of designs); tabulate the 'paper' or 'per_layer' space")

    def sample(self, trial: Trial) -> ArchSpec:
        d_model = trial.suggest_categorical("d_model", list(self.d_models))
        n_heads = trial.suggest_categorical("n_heads", list(self.n_heads))
        n_layers = trial.suggest_int("n_layers", *self.n_layers_range)
        layers: list[LayerSpec] = []
        for i in range(n_layers):
            layers.append(self._layer(trial, i, layers, d_model, n_heads))
        return self.base.spec(layers, d_model=d_model, n_heads=n_heads, ffn_dim=4 * d_model)

    def _layer(self, trial: Trial, i: int, before: list[LayerSpec], d_model: int, n_heads: int) -> LayerSpec:
        kind = trial.suggest_categorical(f"l{i}_mixer", list(self.mixers))
        if kind != "attention":
            return LayerSpec(attn=kind)
        prev = before[-1] if before else None
        if prev is not None and prev.has_attention and prev.kv_from is None:
            if trial.suggest_categorical(f"l{i}_reuse_prev_kv", [False, True]):
                return LayerSpec(kv_from=i - 1, n_kv_heads=prev.n_kv_heads, window=prev.window)
        proj = trial.suggest_categorical(f"l{i}_proj", list(self.projs))
        kv = kv_heads_for(n_heads, trial.suggest_categorical(f"l{i}_kv_sharing", list(self.kv_sharing)))
        fields: dict[str, Any] = {"proj": proj, "n_kv_heads": kv}
        factor = trial.suggest_categorical(f"l{i}_factor", ["full", "low_rank", "latent_kv"])
        if factor == "low_rank":
            fields["qk_rank"] = self._rank(trial, f"l{i}_rank_frac", d_model)
            if proj in ("qkv", "qk_v"):
                fields["v_rank"] = fields["qk_rank"]
        elif factor == "latent_kv" and proj in ("qkv", "q_kv"):
            fields["kv_latent"] = self._rank(trial, f"l{i}_latent_frac", d_model)
        if proj in ("qk_v", "qkv_single"):
            fields["asym_pos"] = trial.suggest_categorical(f"l{i}_asym_pos", [False, True])
        fields["dconv"] = trial.suggest_categorical(f"l{i}_dconv", [False, True])
        if self.base.causal and trial.suggest_categorical(f"l{i}_windowed", [False, True]):
            fields["window"] = trial.suggest_categorical(f"l{i}_window", list(self.windows))
        return LayerSpec(**fields)

    def _rank(self, trial: Trial, name: str, d_model: int) -> int:
        """A rank or latent width: a sampled fraction of d_model, at least 1."""
        return max(1, int(d_model * trial.suggest_categorical(name, list(self.rank_fractions))))

    @property
    def options(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["base"] = dataclasses.asdict(self.base)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

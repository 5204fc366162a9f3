"""Each layer picks its own projection mode and K/V sharing."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from search_spaces.base import BaseDims, Trial, kv_heads_for
from search_spaces.spec import PROJ_MODES, ArchSpec, LayerSpec


@dataclass(frozen=True, kw_only=True)
class PerLayerSpace:
    name = "per_layer"
    base: BaseDims = field(default_factory=BaseDims)
    projs: tuple[str, ...] = PROJ_MODES
    kv_sharing: tuple[str, ...] = ("mha", "gqa2", "mqa")

    def sample(self, trial: Trial) -> ArchSpec:
        layers = []
        for i in range(self.base.n_layers):
            proj = trial.suggest_categorical(f"proj_{i}", list(self.projs))
            kv = trial.suggest_categorical(f"kv_sharing_{i}", list(self.kv_sharing))
            layers.append(LayerSpec(proj=proj, n_kv_heads=kv_heads_for(self.base.n_heads, kv)))
        return self.base.spec(layers)

    @property
    def options(self) -> dict[str, Any]:
        return {"base": dataclasses.asdict(self.base), "projs": list(self.projs), "kv_sharing": list(self.kv_sharing)}

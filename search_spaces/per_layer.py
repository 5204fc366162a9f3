"""Each layer picks its own projection mode and K/V sharing."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from search_spaces.base import ProjKVSpace, Trial
from search_spaces.spec import ArchSpec


@dataclass(frozen=True, kw_only=True)
class PerLayerSpace(ProjKVSpace):
    name = "per_layer"

    def sample(self, trial: Trial) -> ArchSpec:
        return self.base.spec([self.sample_layer(trial, f"_{i}") for i in range(self.base.n_layers)])

    def grid(self) -> list[dict[str, Any]]:
        per_layer = [self.layer_choices(f"_{i}") for i in range(self.base.n_layers)]
        return [{k: v for choice in combo for k, v in choice.items()} for combo in itertools.product(*per_layer)]

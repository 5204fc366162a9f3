"""The paper's space: one projection mode and one K/V sharing for every layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search_spaces.base import ProjKVSpace, Trial
from search_spaces.spec import ArchSpec


@dataclass(frozen=True, kw_only=True)
class PaperSpace(ProjKVSpace):
    name = "paper"

    def sample(self, trial: Trial) -> ArchSpec:
        return self.base.spec([self.sample_layer(trial)] * self.base.n_layers)

    def grid(self) -> list[dict[str, Any]]:
        return self.layer_choices()

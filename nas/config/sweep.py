"""``[lr_sweep]``: the learning rates a probe suite, a ladder or a study trains every design at
(the analysis of the results is ``nas.sweep``)."""
from __future__ import annotations

import math

from pydantic import PositiveFloat, field_validator

from nas.config.base import Section


class LRSweep(Section):
    """``[lr_sweep]``: peak learning rates to train every design at, on a log grid."""

    values: tuple[PositiveFloat, ...]

    @field_validator("values")
    @classmethod
    def _log_grid(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if len(values) < 2:
            raise ValueError(f"{list(values)}: give at least two learning rates, e.g. [1e-3, 3e-3, 1e-2]")
        if list(values) != sorted(set(values)):
            raise ValueError(f"{list(values)}: list distinct learning rates in ascending order")
        return values

    def check_shared(self, lr: float, where: str) -> None:
        """The shared learning rate (the budget's) must be one of the sweep's, so the report can
        set each design's best beside it."""
        if not any(math.isclose(lr, v, rel_tol=1e-9) for v in self.values):
            raise ValueError(f"{where} lr={lr:g} is not in lr_sweep.values {list(self.values)}; "
                             "add it, so the shared learning rate is one of the sweep's")

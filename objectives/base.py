"""The objective contract: a name, a direction, what a trial must do to know it, and how to
read its value from the trial's record (plain data, see ``nas.trial``)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["minimize", "maximize"]
NEEDS = frozenset({"costs", "measure", "train", "probe"})


@dataclass(frozen=True, kw_only=True)
class Objective:
    """``value(record)`` reads this objective from a trial record:
    {"spec", "costs", "measure", "train", "probes"} — the parts named in ``needs``."""

    name: str
    direction: Direction
    needs: frozenset[str]
    unit: str
    description: str
    read: Callable[[dict[str, Any]], Any] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"objective {self.name!r}: direction={self.direction!r}; use 'minimize' or 'maximize'")
        if not self.needs or not self.needs <= NEEDS:
            raise ValueError(f"objective {self.name!r}: needs={set(self.needs)} must be a non-empty subset of {set(NEEDS)}")

    @property
    def analytic(self) -> bool:
        """Known from the spec alone, before anything is built or trained."""
        return self.needs == {"costs"}

    @property
    def worst(self) -> float:
        """The value that loses to every other: stands in for one never measured (infeasible)."""
        return math.inf if self.direction == "minimize" else -math.inf

    def value(self, record: dict[str, Any]) -> float:
        """The objective's value; ``ValueError`` says why when the record cannot give one."""
        try:
            raw = self.read(record)
        except (KeyError, TypeError) as err:
            raise ValueError(f"objective {self.name!r}: the trial record has no {err} (needs {sorted(self.needs)})") from None
        if raw is None:
            raise ValueError(f"objective {self.name!r} is unavailable: {_why_missing(self, record)}")
        value = float(raw)
        if math.isnan(value):
            raise ValueError(f"objective {self.name!r} is NaN")
        return value

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


def _why_missing(objective: Objective, record: dict[str, Any]) -> str:
    reasons = (record.get("measure") or {}).get("unavailable") or {}
    return str(reasons.get(objective.name, "the measurement returned no value on this machine"))

"""A study's hypervolume and its history, against the reference point stored in the study.

The reference point is a study user attribute (``ATTR_REFERENCE``), fixed once and never moved
(``nas.study.reference`` says how a search study's is chosen), so the hypervolume after trial N
is the same number whenever it is read. The history is Optuna's own
(``nas.engine.compat.hypervolume_history``) over the study's COMPLETE trials without those
measured again (``nas.engine.record.current``): infeasible trials, and trials beyond the
reference in any objective, add nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.engine import compat
from nas.engine.record import current

ATTR_REFERENCE = "hypervolume_reference"  # study user attr: {"point": {objective: value}, "rules": {objective: why}}
RECENT = 5  # trials over which status reports the recent gain


@dataclass(frozen=True, kw_only=True)
class History:
    reference: dict[str, float]  # objective → its value in the reference point
    numbers: list[int]  # COMPLETE trials, in number order
    values: list[float]  # the hypervolume after each

    @property
    def value(self) -> float:
        return self.values[-1] if self.values else 0.0

    @property
    def last_improved(self) -> int | None:
        """The trial after which the hypervolume last grew; None while it is 0."""
        previous, at = 0.0, None
        for number, value in zip(self.numbers, self.values):
            if value > previous:
                previous, at = value, number
        return at

    def gain(self, last: int = RECENT) -> float | None:
        """Relative growth over the last ``last`` complete trials; None without that many or from 0."""
        if len(self.values) <= last or self.values[-1 - last] <= 0:
            return None
        return self.values[-1] / self.values[-1 - last] - 1.0


def stored_reference(study: optuna.Study) -> dict[str, float] | None:
    """The study's reference point, objective by objective; None until every objective has one
    (or for a study with one objective, or one made before qkvnas stored it)."""
    names = study.metric_names or []
    stored = study.user_attrs.get(ATTR_REFERENCE)
    point = stored.get("point") if isinstance(stored, dict) else None
    if len(names) < 2 or not isinstance(point, dict) or any(point.get(n) is None for n in names):
        return None
    return {n: float(point[n]) for n in names}


def history(study: optuna.Study, reference: dict[str, float] | None = None) -> History | None:
    """The hypervolume after each COMPLETE trial, or None without a reference point."""
    point = reference or stored_reference(study)
    if point is None:
        return None
    names = study.metric_names or list(point)
    trials = current(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    numbers, values = compat.hypervolume_history(trials, list(study.directions), [point[n] for n in names])
    return History(reference={n: point[n] for n in names}, numbers=numbers, values=values)


def summary(h: History) -> dict[str, Any]:
    """JSON-able: the hypervolume now, its reference point, and the history by trial number."""
    return {"hypervolume": h.value, "reference_point": h.reference, "complete_trials": len(h.numbers),
            "last_improved_at_trial": h.last_improved, f"gain_last_{RECENT}": h.gain(),
            "history": [{"trial": n, "hypervolume": v} for n, v in zip(h.numbers, h.values)]}


def text(h: History) -> str:
    """'hypervolume 1.23e+04 after 6 complete trials (last grew at trial 4; +3.1% over the last 5)'."""
    if not h.numbers:
        return "hypervolume 0 (no completed trial yet)"
    grew = (f"last grew at trial {h.last_improved}" if h.last_improved is not None
            else "no feasible trial inside the reference point")
    gain = h.gain()
    recent = f"; {gain:+.1%} over the last {RECENT}" if gain is not None else ""
    return f"hypervolume {h.value:.4g} after {len(h.numbers)} complete trials ({grew}{recent})"


def study_text(study: optuna.Study) -> str | None:
    """``text`` of the study's history, or None when it has no reference point."""
    h = history(study)
    return text(h) if h is not None else None

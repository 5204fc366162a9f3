"""The reference point of a search study's hypervolume, fixed once per study, and the finite
stand-in an infeasible trial is told for an objective it never reached (nas/engine/record.py).

Each objective's reference value is fixed the first time a trial of the study is told with
what it needs, stored in the study (``nas.engine.hypervolume.ATTR_REFERENCE``, with the rule
that gave it) and never changed: the hypervolume after trial N stays the same number as trials
arrive, and a resumed study goes on with the same point. The rule, by objective:

* qkvnas's own maximised objectives (throughputs, MFU, probe accuracy; none is below 0): **0**,
  a design that ran or answered nothing;
* ``val_loss``: **ln(vocab_size)**, the loss of a uniform guess over the design's vocabulary
  (from the first trial's spec); ``bits_per_byte``: **8**, a uniform guess over bytes;
* an analytic cost (``params``, ``attention_params``, KV bytes, FLOPs: known from the spec):
  **1.1 × the largest value among 1,000 designs drawn from the space** (seeded, so the same for
  every run and worker): no design the space can propose falls outside it, short of a rare one;
* any other objective (peak or decode memory, energy, stability, a plugin's objective):
  **twice the first value a trial measured** (v + |v| in the losing direction).

Why this point: the first three come from the study file alone, not from which designs the
sampler happened to try first, and mean something on their own (a uniform guess, zero
throughput, the space's costliest design); a point taken from the first trials' worst values
would cut off every later design worse than those in one objective, often the front's most
accurate end. Only the fourth depends on the trials, for figures that have no natural bound.
A design no better than the reference point in some objective adds no hypervolume; an
infeasible trial told the reference point's values adds none either.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.config import StudyConfig
from nas.engine import attrs
from nas.engine.hypervolume import ATTR_REFERENCE
from objectives import PROBE_PREFIX, get_objective
from objectives.registry import BUILTIN_OBJECTIVES

COST_DRAWS = 1000  # designs drawn from the space for the cost objectives' reference
COST_MARGIN = 1.1
UNIFORM_BITS_PER_BYTE = 8.0


def stand_ins(study: optuna.Study, config: StudyConfig, record: Mapping[str, Any]) -> dict[str, float]:
    """The reference point as far as it is fixed, fixing (and storing) what this record allows:
    the values an infeasible trial is told for objectives it never reached."""
    stored = study.user_attrs.get(ATTR_REFERENCE)
    point = dict((stored or {}).get("point") or {})
    missing = [n for n in config.objectives if n not in point]
    if not missing:
        return point
    try:
        found = reference_values(missing, config, [record.get("spec_json")], [record.get("values") or {}])
    except Exception as err:  # noqa: BLE001 - a reference point must never stop a trial from being told
        warnings.warn(f"hypervolume reference point not fixed yet: {type(err).__name__}: {err}", stacklevel=2)
        return point
    if found:
        latest = study.user_attrs.get(ATTR_REFERENCE) or {}  # another worker may have fixed some meanwhile
        point = dict(latest.get("point") or {})
        rules = dict(latest.get("rules") or {})
        for name, (value, rule) in found.items():
            if name not in point:
                point[name], rules[name] = value, rule
        study.set_user_attr(ATTR_REFERENCE, {"point": point, "rules": rules})
    return point


def reference_for(study: optuna.Study, config: StudyConfig) -> dict[str, float] | None:
    """The study's reference point: as stored, else (a study made before qkvnas stored one)
    computed by the same rules from its trials in number order, without storing it."""
    stored = (study.user_attrs.get(ATTR_REFERENCE) or {}).get("point") or {}
    point = {n: float(stored[n]) for n in config.objectives if stored.get(n) is not None}
    missing = [n for n in config.objectives if n not in point]
    if missing:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        records = [attrs.read(t) for t in sorted(trials, key=lambda t: t.number)]
        specs = [r.get("spec_json") for r in records]
        measured = [r.get("objective_values") or {} for r in records]
        point |= {n: v for n, (v, _) in reference_values(missing, config, specs, measured).items()}
    return point if len(point) == len(config.objectives) and len(point) > 1 else None


def reference_values(names: list[str], config: StudyConfig, specs: Iterable[str | None],
                     measured: Iterable[Mapping[str, Any]]) -> dict[str, tuple[float, str]]:
    """Objective → (reference value, the rule) for those of ``names`` that these records fix."""
    specs, measured = list(specs), list(measured)
    out: dict[str, tuple[float, str]] = {}
    costs_of = [n for n in names if get_objective(n).analytic and get_objective(n).direction == "minimize"]
    if costs_of:
        out |= _cost_references(costs_of, config)
    for name in names:
        objective = get_objective(name)
        if name in out:
            continue
        if objective.direction == "maximize" and (name in BUILTIN_OBJECTIVES or name.startswith(PROBE_PREFIX)):
            out[name] = (0.0, "0: a design that ran or answered nothing")
        elif name in ("val_loss", "bits_per_byte"):
            vocab = next((json.loads(s)["vocab_size"] for s in specs if s), None)
            if name == "bits_per_byte":
                out[name] = (UNIFORM_BITS_PER_BYTE, "8: a uniform guess over bytes")
            elif vocab:
                out[name] = (math.log(vocab), f"ln({vocab}): a uniform guess over the vocabulary")
        else:
            first = next((float(m[name]) for m in measured if _finite(m.get(name))), None)
            if first is not None:
                pad = abs(first) or 1.0
                value = first + pad if objective.direction == "minimize" else first - pad
                out[name] = (value, f"twice the first value measured ({first:.4g})")
    return out


def _cost_references(names: list[str], config: StudyConfig) -> dict[str, tuple[float, str]]:
    """COST_MARGIN × the largest of each cost among COST_DRAWS seeded draws of the space."""
    from nas.costs import costs
    from search_spaces import get_space

    space = get_space(config.space.name, **config.space.options)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    largest = dict.fromkeys(names, -math.inf)
    for _ in range(COST_DRAWS):
        spec = space.sample(draws.ask())
        try:
            parts = {"spec": spec.to_dict(), "costs": costs(spec, seq_len=config.budget.seq_len).to_dict()}
            values = {name: get_objective(name).value(parts) for name in names}
        except ValueError:  # a design the trials would refuse too (e.g. a sequence longer than its context)
            continue
        for name in names:
            largest[name] = max(largest[name], values[name])
    if not all(math.isfinite(v) for v in largest.values()):
        return {}
    return {n: (COST_MARGIN * v, f"{COST_MARGIN} x the largest of {COST_DRAWS} designs drawn from the space")
            for n, v in largest.items()}


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False

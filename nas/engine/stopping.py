"""Early stopping in the engine: a job's rungs (``job.rung_plan()``) applied to its trials'
reports, the decisions recorded in storage as they are made, and a stopped trial told PRUNED.

Each decision is written to the trial's ``rungs`` attribute at once, so a killed run loses no
decision of a trial that finished; on resume the scheduler is rebuilt from every finished
trial's decisions. A trial killed between rungs is requeued and trains again from the start
(no checkpoints are kept: trials are minutes long, a checkpoint per rung would cost more disk
than it saves time).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.engine import attrs
from nas.engine.record import ATTR_DUPLICATE_OF, ATTR_REASON, current, is_stale
from nas.engine.rungs import Decision, RungPlan, RungScheduler

ATTR_RUNGS = "rungs"  # the trial's decisions, one dict per rung reached
ATTR_STOPPED_AT = "stopped_at_rung"
ATTR_TOKENS_SPENT = "tokens_spent"


def restored_scheduler(plan: RungPlan, study: optuna.Study) -> RungScheduler:
    """The plan's scheduler with every decision already recorded by a trial that finished."""
    scheduler = plan.scheduler()
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for t in current(study.get_trials(deepcopy=False, states=states)):  # a trial measured again decided once
        if is_stale(t):
            continue
        for d in t.user_attrs.get(ATTR_RUNGS) or []:
            if d["rung"] < len(plan.rungs) and plan.rungs[d["rung"]] == d["tokens"]:
                scheduler.restore(t.number, d["rung"], d["point"])
    return scheduler


@dataclass
class TrialRungs:
    """One running trial's reports, ranked at the rungs as they arrive."""

    plan: RungPlan
    scheduler: RungScheduler
    trial: optuna.Trial
    decisions: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0

    def on_report(self, metrics: dict[str, float]) -> Decision | None:
        """The decision this report brings (and records in storage), if it reaches a rung."""
        self.tokens = int(metrics.get("tokens", self.tokens))
        point = self.plan.point(metrics)
        if point is None:
            return None
        decision = self.scheduler.report(self.trial.number, self.tokens, point)
        if decision is not None:
            self.decisions.append(dataclasses.asdict(decision) | {"point": list(decision.point)})
            self.trial.set_user_attr(ATTR_RUNGS, self.decisions)
        return decision


def prune(study: optuna.Study, rungs: TrialRungs, decision: Decision) -> None:
    """Tell a stopped trial PRUNED, with the rung it reached and the tokens it trained."""
    trial = rungs.trial
    trial.set_user_attr(ATTR_STOPPED_AT, decision.rung)
    trial.set_user_attr(ATTR_TOKENS_SPENT, rungs.tokens)
    trial.set_user_attr(ATTR_REASON, f"stopped at rung {decision.rung} ({decision.tokens:,} tokens): ranked "
                                     f"{decision.rank + 1} of {decision.population}, outside the top 1/{rungs.plan.eta:g}")
    study.tell(trial, state=TrialState.PRUNED)


def stopping_summary(study: optuna.Study, budget_tokens: int) -> dict[str, Any]:
    """How many trials stopped at each rung and the share of training tokens that saved."""
    finished = current(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    trained = [t for t in finished if ATTR_DUPLICATE_OF not in t.user_attrs  # a copy trained nothing
               and ("train" in attrs.read(t) or ATTR_TOKENS_SPENT in t.user_attrs)]
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    by_rung = Counter(int(t.user_attrs.get(ATTR_STOPPED_AT, -1)) for t in pruned)
    spent = sum(_tokens(t, budget_tokens) for t in trained)
    full = budget_tokens * len(trained)
    return {"stopped": len(pruned), "stopped_by_rung": dict(sorted(by_rung.items())), "tokens_trained": spent,
            "tokens_full_budget": full, "tokens_saved_frac": 1.0 - spent / full if full else 0.0}


def _tokens(trial: FrozenTrial, budget_tokens: int) -> int:
    if trial.state == TrialState.PRUNED:
        return int(trial.user_attrs.get(ATTR_TOKENS_SPENT, 0))
    return int((attrs.read(trial).get("train") or {}).get("tokens", budget_tokens))

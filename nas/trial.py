"""One trial end to end: ``run_trial(spec, config, seed=...) -> TrialRecord``.

    costs(spec) → analytic constraints (violated: stop, never built)
      → measure(spec)  (only if an objective or constraint needs it; under the node's lock)
      → measured constraints (violated: stop, never trained)
      → train(spec, corpus, budget) → probes → objective values

When the study measures, training holds the measurement lock shared, so that no trial on the
same node measures while another trains.

A design that violates a constraint is *infeasible*: it is recorded with its constraint values
(> 0 for the violated ones, 0 for those not reached) and with the worst value (±inf) for every
objective it never got to. A trial that raises, diverges or runs out of memory is *failed*
with a reason; ``run_trial`` never raises for a trial's own failure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import nas.measure
import nas.probing
import nas.train
from nas.config import StudyConfig, constraint_objective
from nas.costs import costs
from nas.data import Corpus, DataSource, load_corpus
from nas.engine.job import OBJECTIVE_PREFIX, Report, TrialStopped, no_report
from nas.measure.fingerprint import fingerprint
from objectives import get_objective, probe_task, stability_report
from search_spaces.spec import ArchSpec

Status = Literal["complete", "infeasible", "failed"]
PER_STEP_DIGITS = 5  # significant digits kept of per-step losses and gradient norms


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """Everything a study keeps about one trial, as plain JSON-able data."""

    status: Status
    reason: str | None
    spec_json: str
    spec_hash: str
    values: dict[str, float]  # objective → value; ±inf where never measured; {} when failed
    constraints: dict[str, float]  # constraint → violation; > 0 means violated
    costs: dict[str, Any]
    measure: dict[str, Any] | None = None
    train: dict[str, Any] | None = None  # TrainResult.to_dict() without the per-step series
    curve: dict[str, Any] | None = None  # evaluation points and per-step losses / grad norms
    stability: dict[str, Any] | None = None
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # traceback tail of an unexpected exception
    lr_sweep: dict[str, Any] | None = None  # with [lr_sweep]: best_lr and each lr's val loss
    weights: str | None = None  # with [export] weights = true: the folder of the trained weights

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("lr_sweep", "weights"):  # left out when unused: records stay as they were
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(**data)

    @property
    def spec(self) -> ArchSpec:
        return ArchSpec.from_json(self.spec_json)


# ---- the trial --------------------------------------------------------------------------
def run_trial(spec: ArchSpec, config: StudyConfig, *, seed: int, report: Report = no_report) -> TrialRecord:
    """Run one design through the study's pipeline; failures come back as a failed record.
    ``report(step, metrics)`` receives each validation point of the learning curve."""
    trial = _Trial(spec, config, seed, report)
    try:
        return trial.run()
    except TrialStopped:  # the engine's scheduler stopped it at a rung: not a failure
        raise
    except Exception as err:  # a trial's own failure must not stop the study
        return trial.failed(_describe(err), traceback.format_exc(limit=-8))


class _Trial:
    """The state of one trial while it runs: the record so far and the clock."""

    def __init__(self, spec: ArchSpec, config: StudyConfig, seed: int, report: Report) -> None:
        self.spec, self.config, self.seed, self.report = spec, config, seed, report
        self.needs = config.needs
        self.parts: dict[str, Any] = {"spec": spec.to_dict(), "costs": {}, "probes": {}}
        self.fields: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.hardware: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def run(self) -> TrialRecord:
        self._timed("costs", self._costs)
        if self._violations(analytic=True):
            return self.infeasible()
        if "measure" in self.needs:
            self._timed("measure", self._measure)
            if self._violations(analytic=False):
                return self.infeasible()
        with self._no_measurement_meanwhile():
            if "train" in self.needs:
                self._timed("train", self._train)
                if self.parts["train"]["diverged"]:
                    return self.failed(f"diverged: {self.parts['train']['reason']}")
            if "probe" in self.needs:
                self._timed("probe", self._probes)
        if self._violations(analytic=False):
            return self.infeasible()
        values = {name: get_objective(name).value(self.parts) for name in self.config.objectives}
        return self._record("complete", None, values)

    @contextlib.contextmanager
    def _no_measurement_meanwhile(self) -> Iterator[None]:
        """While this trial trains, no trial on this node measures: a shared flock on the file
        that ``measure()`` locks exclusively (concurrent trials on one node would otherwise
        slow each other's timed steps). Only studies that measure pay for it."""
        if "measure" not in self.needs:
            yield
            return
        with nas.measure.node_lock(exclusive=False):
            yield

    # ---- steps ----------------------------------------------------------------------
    def _costs(self) -> None:
        self.parts["costs"] = costs(self.spec, seq_len=self.config.budget.seq_len).to_dict()

    def _measure(self) -> None:
        # measure() holds the node's measurement_lock() throughout (its wait is lock_wait_s).
        result = nas.measure.measure(self.spec, self.config.measure).to_dict()
        self.parts["measure"] = result
        self.fields["measure"] = result
        self.hardware = result["fingerprint"]

    def _train(self) -> None:
        budget = dataclasses.replace(self.config.budget, seed=self.seed)
        corpus = corpus_for(self.config.data)
        sweep = self.config.lr_sweep
        models: dict[float, torch.nn.Module] = {}
        keep = self.config.export.weights

        def kept(lr: float) -> Callable[[torch.nn.Module], None] | None:
            return functools.partial(models.__setitem__, lr) if keep else None

        if sweep is None:
            result = nas.train.train(self.spec, corpus, budget, on_eval=self._report, on_trained=kept(budget.lr)).to_dict()
            best = budget.lr
        else:  # every lr of the sweep; the trial is its best run (lowest val loss), the rest recorded
            runs = {lr: nas.train.train(self.spec, corpus, dataclasses.replace(budget, lr=lr),
                                        on_trained=kept(lr)).to_dict() for lr in sweep.values}
            best = min(runs, key=lambda lr: _loss_or_inf(runs[lr]))
            result = runs[best]
            self.fields["lr_sweep"] = {"best_lr": best, "val_loss": {f"{lr:g}": r["val_loss"] for lr, r in runs.items()}}
        if keep and not result["diverged"]:
            self.fields["weights"] = str(self._save_weights(models[best], result))
        self.parts["train"] = result
        self.fields["train"] = {k: v for k, v in result.items() if k not in ("curve", "train_losses", "grad_norms")}
        self.fields["curve"] = {
            "points": result["curve"],
            "train_losses": _rounded(result["train_losses"]),
            "grad_norms": _rounded(result["grad_norms"]),
        }
        if not result["diverged"]:
            self.fields["stability"] = stability_report(result["train_losses"], result["grad_norms"])

    def _save_weights(self, model: torch.nn.Module, result: dict[str, Any]) -> Path:
        from nas.weights import save_model

        record = {k: v for k, v in result.items() if k not in ("curve", "train_losses", "grad_norms")}
        return save_model(model, self.spec, weights_folder(self.config, self.spec, self.seed), record=record)

    def _probes(self) -> None:
        for name in self.config.objectives + tuple(self._constraint_names()):
            task = probe_task(name)
            if task is None or task in self.parts["probes"]:
                continue
            self.parts["probes"][task] = nas.probing.run_probe(
                self.spec, task, seed=self.seed, budget=self.config.probe.budget,
                device=self.config.budget.device, params=self.config.probe.params.get(task),
            )
        self.fields["probes"] = self.parts["probes"]

    def _report(self, point: dict[str, Any]) -> None:
        """A learning-curve point, with the value of every objective already known (costs and
        measurements do not change with the budget: a rung ranks on them and the loss)."""
        metrics = {k: float(v) for k, v in point.items() if k != "step" and isinstance(v, (int, float))}
        have = self._have() - {"train"}
        for name in self.config.objectives:
            objective = get_objective(name)
            if objective.needs <= have:
                metrics[f"{OBJECTIVE_PREFIX}{name}"] = float(objective.value(self.parts))
        self.report(int(point["step"]), metrics)

    # ---- constraints ----------------------------------------------------------------
    def _constraint_names(self) -> list[str]:
        return [constraint_objective(key)[1] for key in self.config.constraints]

    def _violations(self, *, analytic: bool) -> list[str]:
        """Violated constraints among those that can be evaluated now: the analytic ones only,
        or every one whose inputs the trial has by now."""
        violated = []
        for key in self.config.constraints:
            objective = get_objective(constraint_objective(key)[1])
            ready = objective.analytic if analytic else objective.needs <= self._have()
            if ready and self._violation(key) > 0:
                violated.append(key)
        return violated

    def _have(self) -> set[str]:
        have = {"costs"}
        have |= {part for part in ("measure", "train") if part in self.parts}
        if self.parts["probes"]:
            have.add("probe")
        return have

    def _violation(self, key: str) -> float:
        """Relative violation: (value - limit) / |limit| for max_*, (limit - value) / |limit| for min_*."""
        bound, name = constraint_objective(key)
        limit = self.config.constraints[key]
        value = get_objective(name).value(self.parts)
        excess = value - limit if bound == "max" else limit - value
        return excess / abs(limit) if limit else excess

    def _constraint_values(self) -> dict[str, float]:
        """Every constraint, always (samplers need the same set on every trial): 0 for the ones
        this trial never reached."""
        have = self._have()
        out = {}
        for key in self.config.constraints:
            needs = get_objective(constraint_objective(key)[1]).needs
            out[key] = self._violation(key) if needs <= have else 0.0
        return out

    # ---- endings --------------------------------------------------------------------
    def infeasible(self) -> TrialRecord:
        have = self._have()
        values = {}
        for name in self.config.objectives:
            objective = get_objective(name)
            values[name] = objective.value(self.parts) if objective.needs <= have else objective.worst
        violated = sorted(k for k, v in self._constraint_values().items() if v > 0)
        return self._record("infeasible", f"violates {', '.join(violated)}", values)

    def failed(self, reason: str, error: str | None = None) -> TrialRecord:
        return self._record("failed", reason, {}, error=error)

    def _record(self, status: Status, reason: str | None, values: dict[str, float], *,
                error: str | None = None) -> TrialRecord:
        self.timings["total_s"] = time.perf_counter() - self.t0
        try:
            constraints = self._constraint_values() if status != "failed" else {}
        except ValueError:  # a failure before the constrained figure existed
            constraints = {}
        return TrialRecord(
            status=status, reason=reason, spec_json=self.spec.to_json(), spec_hash=self.spec.hash,
            values=values, constraints=constraints, costs=self.parts["costs"],
            hardware=self.hardware or hardware_fingerprint(self.config), timings=dict(self.timings),
            error=error, **self.fields,
        )

    def _timed(self, name: str, step: Callable[[], None]) -> None:
        from nas.engine import live

        live.phase(name)  # the driver's live line (nas/engine/live.py)
        t0 = time.perf_counter()
        try:
            step()
        finally:
            self.timings[f"{name}_s"] = time.perf_counter() - t0


# ---- helpers ----------------------------------------------------------------------------
def weights_folder(config: StudyConfig, spec: ArchSpec, seed: int) -> Path:
    """Where ``[export] weights = true`` keeps a trial's trained weights."""
    return config.study_dir / "weights" / f"{spec.hash}-s{seed}"


def _loss_or_inf(result: dict[str, Any]) -> float:
    loss = result["val_loss"]
    return loss if not result["diverged"] and math.isfinite(loss) else math.inf


@functools.lru_cache(maxsize=2)
def corpus_for(source: DataSource | str | None) -> Corpus:
    """The corpus, loaded once per process (a reused Ray actor runs many trials)."""
    return load_corpus(source)


def hardware_fingerprint(config: StudyConfig) -> dict[str, Any]:
    """Device, CPU/GPU model and library versions of the machine that ran the trial."""
    return fingerprint(nas.train.resolve_device(config.budget.device), {})


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    kind = "out of memory" if is_out_of_memory(err) else type(err).__name__
    return f"{kind}: {text}"[:500] if text else kind


def _rounded(series: list[float] | tuple[float, ...]) -> list[float]:
    return [float(f"{x:.{PER_STEP_DIGITS}g}") if math.isfinite(x) else float(x) for x in series]

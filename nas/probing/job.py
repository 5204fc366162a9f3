"""A probe suite as a job of the engine: every (design, grid point, task, seed) run, and every
LM run, is one trial enqueued in the suite's Optuna storage (``<out>/suite.db``), so a killed
suite continues where it stopped and a finished one is only tabulated again.

The suite's study is named after the suite and a digest of its settings: a changed suite is a
new study beside the old one, never a mix of runs made under different settings.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Hashable
from typing import Any, ClassVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from nas.engine import attrs
from nas.engine.compat import fixed_params, set_metric_names
from nas.engine.job import Payload, Record, Report, Resources
from nas.engine.queue import FixedTrialsJob, is_settled, results_by_key
from nas.engine.record import ATTR_REASON
from nas.probing.suite_config import SuiteConfig
from objectives.probes import get_probe
from search_spaces.variants import variant

DB_FILE = "suite.db"
LM_COLUMN = "lm_val_loss"
ATTR_ROW = "row"
ATTR_SUITE = "suite_config"
RUN_PARAM = "run"  # a trial's Optuna parameter: the index of its run in ``runs(config)``
RUN_MAX = 2**31 - 1


def runs(config: SuiteConfig) -> list[dict[str, Any]]:
    """Every run of the suite, in table order: the probe runs, then the LM runs."""
    out: list[dict[str, Any]] = [
        {"kind": "probe", "variant": name, "point": point, "task": entry.label, "seed": seed, **_lr(lr)}
        for point in sorted(config.run_points(), key=lambda p: (p.get("length", 0), point_cost(p)))
        for lr in config.lrs()
        for name in config.variants for entry in config.tasks for seed in range(config.seeds_at(point))
    ]
    if config.lm is not None:
        out += [{"kind": "lm", "variant": name, "point": size, "task": LM_COLUMN, "seed": seed}
                for size in config.model_points() for name in config.variants for seed in range(config.seeds)]
    return [{"index": i, **run} for i, run in enumerate(out)]


def _lr(lr: float | None) -> dict[str, float]:
    return {} if lr is None else {"lr": lr}


def point_cost(point: dict[str, int]) -> int:
    """A run's cost up to a constant (d² per token per layer): cheap cells run first, so an
    interrupted suite, or sweep, has its cheap cells whole."""
    return point["d_model"] ** 2 * point["n_layers"] * point.get("length", 1)


def point_text(point: dict[str, int]) -> str:
    short = {"d_model": "d", "n_layers": "L", "n_heads": "h", "length": "len"}
    return " ".join(f"{short[k]}{v}" for k, v in point.items())


@dataclass(frozen=True)
class SuiteJob(FixedTrialsJob):
    config: SuiteConfig
    out_dir: str
    device: str = "auto"
    threads: int = 1
    parallel: int = 1  # runs at a time (Ray executor)

    @property
    def name(self) -> str:
        digest = hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:10]
        return f"{self.config.name}-{digest}"

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{(Path(self.out_dir) / DB_FILE).resolve()}"

    @property
    def resources(self) -> Resources:
        return Resources(cpus_per_trial=self.threads, max_concurrent=self.parallel)

    what: ClassVar[str] = "suite"

    @functools.cached_property
    def runs(self) -> list[dict[str, Any]]:
        return runs(self.config)

    @functools.cached_property
    def _wanted(self) -> dict[Hashable, dict[str, Any]]:
        return {run["index"]: {RUN_PARAM: run["index"]} for run in self.runs}

    def wanted(self) -> dict[Hashable, dict[str, Any]]:
        return self._wanted

    def key_of(self, trial: FrozenTrial) -> Hashable | None:
        return run_of(trial)

    # ---- driver -------------------------------------------------------------------------
    def open_study(self, storage: BaseStorage) -> optuna.Study:
        study = optuna.create_study(study_name=self.name, storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
        set_metric_names(study, ["value"])  # accuracy for probe runs, val loss for LM runs
        study.set_user_attr(ATTR_SUITE, self.config.model_dump(mode="json"))
        return study

    def suggest(self, trial: optuna.Trial) -> Payload:
        index = trial.suggest_int(RUN_PARAM, 0, RUN_MAX)
        if index >= len(self.runs):
            raise ValueError(f"trial {trial.number} is for run {index}, which this suite does not have")
        return self.runs[index]

    # ---- worker -------------------------------------------------------------------------
    def execute(self, payload: Payload, report: Report) -> Record:
        row = self._probe_row(payload) if payload["kind"] == "probe" else self._lm_row(payload)
        failed = not math.isfinite(row["value"])
        return {"status": "failed" if failed else "complete", "reason": "no finite result" if failed else None,
                "values": {"value": row["value"]}, "constraints": {}, ATTR_ROW: row}

    def _probe_row(self, run: dict[str, Any]) -> dict[str, Any]:
        from nas.probing.probe import run_probe

        point, entry = run["point"], next(e for e in self.config.tasks if e.label == run["task"])
        size = {k: v for k, v in point.items() if k != "length"}
        params = {**entry.params, **({"length": point["length"]} if "length" in point else {})}
        spec = variant(run["variant"], base=self.config.base_spec(size))
        budget = dataclasses.replace(entry.budget, lr=run["lr"]) if "lr" in run else entry.budget
        result = run_probe(spec, entry.task, seed=run["seed"], budget=budget, device=self.device, params=params)
        return {"variant": run["variant"], "task": entry.label, "probe": entry.task, **point,
                "length": get_probe(entry.task, **params).length, "seed": run["seed"], "lr": budget.lr,
                "metric": "accuracy", "value": float(result["accuracy"]), "train_steps": result["train_steps"],
                "accuracy_by_epoch": result["accuracy_by_epoch"], "mode_baseline": result["mode_baseline"],
                "final_train_loss": result["final_train_loss"], "wall_s": result["wall_s"], "cpu_s": result["cpu_s"]}

    def _lm_row(self, run: dict[str, Any]) -> dict[str, Any]:
        """Validation loss of the design trained as a causal LM on the suite's corpus."""
        from nas.data import load_corpus
        from nas.train import TrainBudget, train

        assert self.config.lm is not None
        lm, size, seed = self.config.lm, run["point"], run["seed"]
        corpus = load_corpus(lm.corpus)
        base = dataclasses.replace(self.config.base_spec(size), vocab_size=corpus.vocab_size, context=lm.context)
        cpu0 = time.process_time()
        result = train(variant(run["variant"], base=base), corpus, TrainBudget(**lm.budget, seed=seed, device=self.device))
        return {"variant": run["variant"], "task": LM_COLUMN, "probe": None, **size, "length": lm.context,
                "seed": seed, "metric": "val_loss", "value": float(result.val_loss), "train_steps": result.steps,
                "final_train_loss": result.train_losses[-1] if result.train_losses else math.nan,
                "wall_s": result.wall_s, "cpu_s": time.process_time() - cpu0}

    # ---- display ------------------------------------------------------------------------
    def outcome(self, study: optuna.Study, trial: FrozenTrial) -> str:
        row = attrs.read(trial).get(ATTR_ROW)
        if not row:
            return f"run {run_of(trial)}: failed ({trial.user_attrs.get(ATTR_REASON, 'no reason recorded')})"
        where = point_text({k: row[k] for k in ("d_model", "n_layers", "n_heads", "length") if k in row})
        return (f"{row['variant']} {row['task']} {where} seed {row['seed']}: {row['metric']} {row['value']:.3f} "
                f"({row['wall_s']:.1f} s, cpu {row['cpu_s']:.1f} s)")

    def finish_line(self, study: optuna.Study) -> str:
        done, target = self.progress(study)
        return f"{done}/{target} runs done"


def run_of(trial: FrozenTrial) -> int | None:
    index = (trial.params or fixed_params(trial)).get(RUN_PARAM)
    return None if index is None else int(index)


def result_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per run that finished, in run order (a failed run's row has its NaN value)."""
    chosen = results_by_key(study, lambda t: run_of(t) if ATTR_ROW in attrs.read(t) and is_settled(t) else None)
    return [_row(chosen[i]) for i in sorted(chosen)]


def _row(trial: FrozenTrial) -> dict[str, Any]:
    row = dict(attrs.read(trial)[ATTR_ROW])  # the bulk of the record (nas/engine/attrs.py)
    row["value"] = float(row["value"])  # stored JSON writes NaN as a string
    return row

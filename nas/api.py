"""The public API of studies: run, resume, export, status. ``nas/cli.py`` is a thin layer over it.

    run_study("study.toml", ["trials=40"])   # or a preset name, or a StudyConfig
    resume_study("quick")                    # a study name, a study directory or a storage URL
    export_study("quick", "out/")
    study_status("quick")
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna

from nas import engine
from nas.config import StudyConfig, load_config
from nas.engine.record import Counts, counts
from nas.engine.storage import SQLiteLock
from nas.export import ExportResult, export_study
from nas.engine.stopping import stopping_summary
from nas.study.display import describe, front_table, stopping_text, summary_line
from nas.study.job import StudyJob
from nas.study.open import config_of, load_existing, resolve_study, storage_url, stored_config

EXPORT_DIR = "export"


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    study: str
    storage: str
    counts: Counts
    target: int
    interrupted: bool
    export: ExportResult | None


def run_study(config: StudyConfig | str | Path, overrides: list[str] | tuple[str, ...] = (), *,
              ray_address: str | None = None, progress: bool = True, export: bool = True,
              out: TextIO | None = None) -> RunSummary:
    """Run (or continue) the study until it has ``config.trials`` finished trials, then export
    its front into ``<study dir>/export``. Ctrl-C stops cleanly; the summary says so."""
    if not isinstance(config, StudyConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a study file or preset; pass the path, not a StudyConfig")
    out = out or sys.stdout
    preflight(config)
    url = storage_url(config)
    with SQLiteLock(url, config.name):  # held through the export, so no second worker writes meanwhile
        done = engine.run(StudyJob(config), address=ray_address, progress=progress, out=out, locked=True)
        if done.interrupted:
            print(f"interrupted: {summary_line(counts(done.study), config.trials)}. "
                  f"Continue with: qkvnas resume {_resume_name(config)}", file=out)
            return RunSummary(study=config.name, storage=url, counts=counts(done.study), target=config.trials,
                              interrupted=True, export=None)
        result = export_study(done.study, config.study_dir / EXPORT_DIR) if export else None
    if result is not None:
        print(f"Pareto front ({result.front_designs} designs) written to {result.pareto} "
              f"(plot {result.plot}, specs in {result.out_dir / 'specs'})", file=out)
    return RunSummary(study=config.name, storage=url, counts=counts(done.study), target=config.trials,
                      interrupted=False, export=result)


def resume_study(name: str, overrides: list[str] | tuple[str, ...] = (), *, ray_address: str | None = None,
                 progress: bool = True, export: bool = True, out: TextIO | None = None) -> RunSummary:
    """Continue a study by name (``studies/<name>``), study directory, or storage URL."""
    config = config_of(name).with_overrides(overrides)
    return run_study(config, ray_address=ray_address, progress=progress, export=export, out=out)


def study_status(name: str, *, study_name: str | None = None) -> dict[str, Any]:
    """A summary of a study read from its storage; it changes nothing, so it is safe while a
    search runs."""
    study = load_existing(name, study_name=study_name)
    stored = stored_config(study) or {}
    summary = describe(study, stored.get("trials"))
    summary["storage"] = resolve_study(name, study_name=study_name)[0]
    if (stored.get("fidelity") or {}).get("scheduler", "none") != "none":
        summary["stopping"] = stopping_summary(study, int(stored["budget"]["tokens"]))
    return summary


def status_text(name: str, *, study_name: str | None = None) -> str:
    study = load_existing(name, study_name=study_name)
    target = (stored_config(study) or {}).get("trials")
    url = resolve_study(name, study_name=study_name)[0]
    lines = [f"study {study.study_name!r} in {url}",
             f"objectives: {', '.join(study.metric_names or [])}",
             summary_line(counts(study), target) if target else str(counts(study))]
    stored = stored_config(study) or {}
    if (stored.get("fidelity") or {}).get("scheduler", "none") != "none":
        lines.append(stopping_text(stopping_summary(study, int(stored["budget"]["tokens"]))))
    lines += ["Pareto front:", front_table(study)]
    return "\n".join(lines)


# ---- helpers ----------------------------------------------------------------------------
def preflight(config: StudyConfig) -> None:
    """Checks that need the data or a sampled design, so a bad study never starts a half-run."""
    if "train" not in config.needs:
        return
    from nas.data import check_vocab, load_corpus
    from search_spaces import get_space

    spec = get_space(config.space.name, **config.space.options).sample(
        optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    corpus = load_corpus(config.data)
    try:
        check_vocab(spec, corpus)
    except ValueError as err:
        raise ValueError(f"space.options.base.vocab_size: {err}") from None
    seq_len = config.budget.seq_len or spec.context
    if seq_len > spec.context:
        raise ValueError(f"budget.seq_len={seq_len} exceeds the designs' context={spec.context}; "
                         "lower it or raise the space's context")
    per_step = config.budget.batch_size * seq_len
    if config.budget.tokens < per_step:
        raise ValueError(f"budget.tokens={config.budget.tokens} is less than one step (batch_size × seq_len = {per_step}); "
                         f"give budget.tokens >= {per_step}")


def _resume_name(config: StudyConfig) -> str:
    default = Path("studies") / config.name
    return config.name if config.study_dir == default else str(config.study_dir)


__all__ = ["ExportResult", "RunSummary", "export_study", "resume_study", "run_study", "status_text", "study_status"]

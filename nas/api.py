"""The public API of studies: run, resume, export, status. ``nas/cli.py`` is a thin layer over it.

    run = run_study("study.toml", ["trials=40"])   # or a preset name, a StudyConfig or a plain dict
    run.front(), run.trials()                     # DataFrames (pyarrow Tables without pandas)
    run.study                                     # the optuna.Study
    resume_study("quick")                         # a study name, a study directory or a storage URL
    export_study("quick", "out/")
    study_status("quick")
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import optuna

from nas import engine
from nas.config import StudyConfig, load_config
from nas.config.study import check_hardware
from nas.engine import hypervolume
from nas.engine.record import Counts, counts
from nas.engine.storage import SQLiteLock, mask_url
from nas.export import ExportResult, export_study, trials_table
from nas.engine.stopping import stopping_summary
from nas.study.display import describe, front_table, noisy_lines, stopping_text, summary_line
from nas.study.job import StudyJob
from nas.study.hypervolume import reference_text, study_history
from nas.study.open import config_of, load_existing, resolve_study, storage_url, stored_config

EXPORT_DIR = "export"
Executor = Literal["ray", "local"]
# What Ray Tune, Ray Train and tensorboardX log in the driver (Ray's core logs at ERROR only, and
# its workers' output stays in their log files: log_to_driver=False).
QUIET_LOGGERS = ("ray.tune", "ray.train", "ray.air", "tensorboardX")


@dataclass(frozen=True, kw_only=True)
class StudyRun:
    """What ``run_study`` / ``resume_study`` did, and the study to read further: ``study`` is the
    ``optuna.Study`` (its storage stays open), ``front()`` and ``trials()`` its Pareto front and
    every trial as tables with the columns of ``pareto.parquet`` and ``trials.parquet``."""

    study: optuna.Study
    config: StudyConfig
    storage: str  # the storage URL, without a password
    counts: Counts
    target: int
    interrupted: bool
    export: ExportResult | None  # where the front was written (pareto, trials, plot, specs), if it was

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def study_dir(self) -> Path:
        return self.config.study_dir

    def front(self) -> Any:
        """The feasible Pareto front now, one row per trial: a pandas DataFrame, or a
        pyarrow Table where pandas is not installed."""
        return _frame(trials_table(self.study, front_only=True))

    def trials(self) -> Any:
        """Every trial in every state now (complete, infeasible, failed with its reason, pruned)."""
        return _frame(trials_table(self.study))

    def final_line(self) -> str | None:
        """What the command line prints at the end: how to continue, or where the front is."""
        if self.interrupted:
            return (f"interrupted: {summary_line(self.counts, self.target)}. "
                    f"Continue with: qkvnas resume {_resume_name(self.config)}")
        if self.export is None:
            return None
        result = self.export
        return (f"Pareto front ({result.front_text}) written to {result.pareto} "
                f"(plot {result.plot}, specs in {result.out_dir / 'specs'})")


RunSummary = StudyRun  # the name of earlier releases


def run_study(config: StudyConfig | dict[str, Any] | str | Path, overrides: list[str] | tuple[str, ...] = (), *,
              ray_address: str | None = None, progress: bool = True, export: bool = True,
              out: TextIO | None = None, executor: Executor = "ray") -> StudyRun:
    """Run (or continue) the study until it has ``config.trials`` finished trials, then export
    its front into ``<study dir>/export``. Ctrl-C stops cleanly; the result says so.

    ``config``: a study file, a preset name, a ``StudyConfig`` or a plain dict of the study file's
    keys. ``progress=False`` prints nothing (what would be printed goes to ``out`` if given).
    ``executor="local"`` runs the trials one by one in this process instead of on Ray."""
    config = _config(config, overrides)
    shown = (out or sys.stdout) if progress else (out or io.StringIO())  # progress=False: nothing on the terminal
    check_hardware(config, ray_address)  # e.g. NVML energy asked of a machine without it
    if executor == "ray":
        check_portable(config)
    preflight(config)
    url = storage_url(config)
    local_ray = executor == "ray" and not (ray_address or config.ray.address)
    with SQLiteLock(url, config.name), _worker_paths(config, local_ray), _quiet(not progress):
        # the lock is held through the export, so that no second worker writes meanwhile
        done = engine.run(StudyJob(config), executor=executor, address=ray_address, progress=progress, out=shown,
                          locked=True)
        result = export_study(done.study, config.study_dir / EXPORT_DIR) if export and not done.interrupted else None
    run = StudyRun(study=done.study, config=config, storage=mask_url(url), counts=counts(done.study),
                   target=config.trials, interrupted=done.interrupted, export=result)
    line = run.final_line()
    if line:
        print(line, file=shown)
    return run


def _config(config: StudyConfig | dict[str, Any] | str | Path, overrides: list[str] | tuple[str, ...]) -> StudyConfig:
    if isinstance(config, StudyConfig):
        if overrides:
            raise ValueError("overrides apply to a study file, preset or dict; pass one of those, not a StudyConfig")
        return config
    if isinstance(config, dict):
        return StudyConfig.from_dict(config, overrides=overrides)
    return load_config(config, overrides)


def resume_study(name: str, overrides: list[str] | tuple[str, ...] = (), *, ray_address: str | None = None,
                 progress: bool = True, export: bool = True, out: TextIO | None = None,
                 executor: Executor = "ray") -> StudyRun:
    """Continue a study by name (``studies/<name>``), study directory, or storage URL."""
    config = config_of(name).with_overrides(overrides)
    return run_study(config, ray_address=ray_address, progress=progress, export=export, out=out, executor=executor)


def study_status(name: str, *, study_name: str | None = None) -> dict[str, Any]:
    """A summary of a study read from its storage; it changes nothing, so it is safe while a
    search runs."""
    study = load_existing(name, study_name=study_name)
    stored = stored_config(study) or {}
    summary = describe(study, stored.get("trials"))
    summary["storage"] = mask_url(resolve_study(name, study_name=study_name)[0])  # never a password
    if (stored.get("fidelity") or {}).get("scheduler", "none") != "none":
        summary["stopping"] = stopping_summary(study, int(stored["budget"]["tokens"]))
    found = study_history(study)
    if found is not None:  # the history by trial number, against the study's fixed reference point
        summary["hypervolume"] = hypervolume.summary(found[0]) | {"reference_stored": found[1]}
    return summary


def status_text(name: str, *, study_name: str | None = None) -> str:
    study = load_existing(name, study_name=study_name)
    target = (stored_config(study) or {}).get("trials")
    url = resolve_study(name, study_name=study_name)[0]
    lines = [f"study {study.study_name!r} in {mask_url(url)}",
             f"objectives: {', '.join(study.metric_names or [])}",
             summary_line(counts(study), target) if target else str(counts(study))]
    stored = stored_config(study) or {}
    if (stored.get("fidelity") or {}).get("scheduler", "none") != "none":
        lines.append(stopping_text(stopping_summary(study, int(stored["budget"]["tokens"]))))
    found = study_history(study)
    if found is not None:
        lines += [hypervolume.text(found[0]), f"  {reference_text(*found)}"]
    lines += [*noisy_lines(study), "Pareto front:", front_table(study)]
    return "\n".join(lines)


# ---- helpers ----------------------------------------------------------------------------
def check_portable(config: StudyConfig) -> None:
    """A space or objective that only this process knows (added to ``SPACES`` or ``OBJECTIVES``
    at run time) would fail every Ray trial: refuse it now, saying how to name it instead."""
    from objectives.plugins import OBJECTIVE_GROUP
    from objectives.registry import BUILTIN_OBJECTIVES, OBJECTIVES
    from search_spaces import BUILTIN_SPACES, SPACES
    from search_spaces.plugins import SPACE_GROUP, runtime_only

    runtime_only(config.space.name, SPACES, BUILTIN_SPACES, kind="space", where="search_spaces.SPACES",
                 group=SPACE_GROUP)
    for name in config.wanted:
        runtime_only(name, OBJECTIVES, BUILTIN_OBJECTIVES, kind="objective", where="objectives.OBJECTIVES",
                     group=OBJECTIVE_GROUP)


@contextlib.contextmanager
def _worker_paths(config: StudyConfig, local_ray: bool) -> Iterator[None]:
    """A local Ray's workers start with this process's environment: the folders this process
    imported the study's own space and objectives from go on their PYTHONPATH, so that what
    imports here imports there. (A cluster's nodes need the package installed.)"""
    from objectives import PROBE_PREFIX
    from search_spaces.plugins import import_roots

    names = [config.space.name, *(n for n in config.wanted if not n.startswith(PROBE_PREFIX))]
    before = os.environ.get("PYTHONPATH")
    have = before.split(os.pathsep) if before else []
    roots = [r for r in import_roots(names) if r not in have] if local_ray else []
    if not roots:
        yield
        return
    os.environ["PYTHONPATH"] = os.pathsep.join(roots + have)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """``progress=False`` prints nothing: Ray Tune logs each errored trial (already recorded in
    storage with its reason) and libraries warn on stderr; both are held back while the study runs."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _frame(table: Any) -> Any:
    """A pyarrow Table as a pandas DataFrame where pandas is installed (it is with ray[tune])."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        return table
    return table.to_pandas()


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
    if "bits_per_byte" in config.wanted and corpus.bytes_per_token is None:
        path = config.data.path if config.data else None
        raise ValueError(f"bits_per_byte needs text (its bytes per token); data {path!r} holds token ids of unknown "
                         "bytes per token: state them in the shards' metadata (qkvnas.bytes_per_token, or "
                         "bytes_per_token in a .bin folder's meta.json), give data.tokenizer (the tokenizer.json the "
                         "ids were made with), or use val_loss")
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


__all__ = ["ExportResult", "RunSummary", "StudyRun", "export_study", "resume_study", "run_study", "status_text",
           "study_status"]

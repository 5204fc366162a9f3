"""Scaling ladders: a set of designs re-trained over model sizes, token budgets and seeds.

    ladder.toml ──► config.py: LadderConfig (validated: every design scaled to every size, every
        │            budget a whole number of steps, before anything runs)
        ▼
    designs.py (baseline first: named variants, spec files, a study's Pareto export)
        │ search_spaces.scaling.scale_spec(spec, d_model, repeats): width and depth steps that
        │ keep the pattern
        ▼
    grid.py: points (design × size × tokens-per-parameter × seed), one Optuna trial each
        │ run.py: the ladder as a job of nas.engine; record.py: the Optuna
        │ storage keeps the record
        ▼
    results.py: ladder.parquet, one row per run ──► scaling.py fits ──► report.py

``nas.ladder.scaling`` and ``nas.ladder.report`` (numpy, scipy, matplotlib) are imported as
submodules, so that a Ray worker running ladder points does not load them.

**N is the non-embedding parameter count** (``costs.params − costs.embedding_params``: token
and position embeddings excluded, the LM head too when it is tied): at the tiny sizes of a CPU
ladder the embeddings are most of the model and would hide the scaling of the blocks (Kaplan
et al. 2020 make the same choice). **D is the number of tokens trained**, whole steps.

At one size step every design trains on the same tokens, ``tokens_per_param × N(baseline)``
rounded to whole steps, and with the same seed it sees the same batches: the gap to the
baseline at a (size, budget, seed) point is a paired comparison that differs only in the
design. A design that saves parameters therefore has a slightly higher tokens-per-parameter
ratio of its own; the fits use each run's own N and D.
"""
from __future__ import annotations

from nas.engine.queue import is_settled
from nas.engine.record import ATTR_ERROR
from nas.ladder.config import (
    CONFIG_FILE, DB_FILE, DEFAULT_PRESET, TPP_RANGE, LadderBudget, LadderConfig, SizeStep, Target, find_ladder, ladder_presets,
    load_ladder_config, save_config_file,
)
from nas.ladder.designs import Design, export_designs, resolve_designs
from nas.ladder.grid import MIN_STEPS, Point, grid, non_embedding_params
from nas.ladder.record import (
    ATTR_LADDER, ATTR_POINT, DESIGN_ID_MAX, OBJECTIVE, PARAM_RANGES, load_ladder_study, open_ladder, point_attrs, queue_pending,
    suggest_point, trial_key, waiting_points,
)
from nas.ladder.results import RESULT_COLUMNS, RESULTS_FILE, result_rows, row_key, write_results
from nas.ladder.run import STEP_OBJECTIVES, LadderJob, LadderRun, point_budget, point_study_config, run_ladder, run_point

__all__ = [
    "ATTR_ERROR", "ATTR_LADDER", "ATTR_POINT", "CONFIG_FILE", "DB_FILE", "DEFAULT_PRESET", "DESIGN_ID_MAX",
    "MIN_STEPS", "OBJECTIVE", "PARAM_RANGES", "RESULTS_FILE", "RESULT_COLUMNS", "STEP_OBJECTIVES", "TPP_RANGE",
    "Design", "LadderBudget", "LadderConfig", "LadderJob", "LadderRun", "Point", "SizeStep", "Target",
    "export_designs", "find_ladder", "grid", "is_settled", "ladder_presets", "load_ladder_config",
    "load_ladder_study", "non_embedding_params", "open_ladder", "point_attrs", "point_budget",
    "point_study_config", "queue_pending", "resolve_designs", "result_rows", "row_key", "run_ladder", "run_point",
    "save_config_file", "suggest_point", "trial_key", "waiting_points", "write_results",
]

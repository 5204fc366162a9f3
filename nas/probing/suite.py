"""Running a probe suite: every (design, grid point, task, seed) is an independent run of
``run_probe``, a trial of the engine (``nas/probing/job.py``); the table holds mean ± std
over grid points and seeds.

Outputs in the chosen folder: ``runs.parquet`` (one row per run), ``table.parquet`` (design,
task, mean, std, n), ``cells.parquet`` (per cell: solved/n, Wilson interval, mean, plateau) and
``table.md`` (``nas/probing/report.py``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nas import engine
from nas.common import atomic_write, atomic_write_text
from nas.engine.lifecycle import Executor
from nas.engine.storage import open_storage
from nas.probing.job import DB_FILE, LM_COLUMN, SuiteJob, result_rows
from nas.probing.outcomes import cells
from nas.probing.report import shared_rows, to_markdown
from nas.probing.suite_config import SuiteConfig

Log = Callable[[str], None]


# ---- running ----------------------------------------------------------------------------------
def run_suite(config: SuiteConfig, out_dir: str | Path, *, device: str = "auto", threads: int | None = 1,
              log: Log | None = None, executor: Executor = "local", report_only: bool = False,
              parallel: int = 1) -> dict[str, Any]:
    """Run every (design, grid point, task, seed), then the LM runs, as trials of the engine in
    ``<out_dir>/suite.db`` (a killed suite continues where it stopped); write runs, table,
    Markdown. ``threads``: torch CPU threads per run (None: as many as torch has now).
    ``report_only``: run nothing; tabulate the runs finished so far (safe while the suite runs).
    ``parallel``: runs at a time, on Ray (the local executor runs one at a time)."""
    if parallel < 1 or (parallel > 1 and executor != "ray"):
        raise ValueError(f"parallel={parallel}: give 1, or more with the Ray executor (--executor ray)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    job = SuiteJob(config, str(out), device=device, threads=threads or torch_threads_now(), parallel=parallel)
    if report_only:
        if not (out / DB_FILE).exists():
            raise ValueError(f"{out} holds no suite storage ({DB_FILE}); run the suite first")
        study = job.open_study(open_storage(job.storage_url, existing=True))
    else:
        done = engine.run(job, executor=executor, out=_LogStream(log or _stderr))
        if done.interrupted:
            raise KeyboardInterrupt
        study = done.study
    rows = result_rows(study)
    table = summarise(shared_rows(config, rows), config)
    wall_s = time.perf_counter() - t0
    markdown = to_markdown(config, table, rows, wall_s, expected=len(job.runs))
    found = [c.to_row() for c in cells(shared_rows(config, rows), config.success_threshold)]
    write_outputs(out, rows, table, markdown, found)
    return {"runs": rows, "table": table, "markdown": markdown, "wall_s": wall_s}


def torch_threads_now() -> int:
    import torch

    return torch.get_num_threads()


class _LogStream:
    """The engine prints to a stream; a suite's caller may give a line callback instead."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line:
                self.log(line)
        return len(text)

    def flush(self) -> None:
        return None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- the table ----------------------------------------------------------------------------------
def summarise(rows: list[dict[str, Any]], config: SuiteConfig) -> list[dict[str, Any]]:
    """Mean ± std (sample std; 0 for one run) per design and column, over grid points and seeds."""
    columns = [e.label for e in config.tasks] + ([LM_COLUMN] if config.lm is not None else [])
    table = []
    for name in config.variants:
        for column in columns:
            values = np.array([r["value"] for r in rows if r["variant"] == name and r["task"] == column], dtype=float)
            if values.size == 0:
                continue
            finite = values[np.isfinite(values)]
            table.append({
                "variant": name, "task": column, "n": int(values.size), "n_failed": int(values.size - finite.size),
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            })
    return table


def write_outputs(out: Path, rows: list[dict[str, Any]], table: list[dict[str, Any]], markdown: str,
                  cell_rows: list[dict[str, Any]] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [{**r, "accuracy_by_epoch": json.dumps(r.get("accuracy_by_epoch") or {})} for r in rows]  # one column type
    atomic_write(out / "runs.parquet", lambda p: pq.write_table(pa.Table.from_pylist(flat), p))
    atomic_write(out / "table.parquet", lambda p: pq.write_table(pa.Table.from_pylist(table), p))
    if cell_rows:
        atomic_write(out / "cells.parquet", lambda p: pq.write_table(pa.Table.from_pylist(cell_rows), p))
    atomic_write_text(out / "table.md", markdown)

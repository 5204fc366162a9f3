"""Running a probe suite: every (design, grid point, task, seed) is an independent run of
``run_probe``, a trial of the engine (``nas/probing/job.py``); the table holds mean ± std
over grid points and seeds.

Outputs in the chosen folder: ``runs.parquet`` (one row per run), ``table.parquet`` (design,
task, mean, std, n) and ``table.md``.
"""
from __future__ import annotations

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
from nas.probing.job import LM_COLUMN, SuiteJob, result_rows
from nas.probing.suite_config import SuiteConfig

Log = Callable[[str], None]


# ---- running ----------------------------------------------------------------------------------
def run_suite(config: SuiteConfig, out_dir: str | Path, *, device: str = "auto", threads: int | None = 1,
              log: Log | None = None, executor: Executor = "local") -> dict[str, Any]:
    """Run every (design, grid point, task, seed), then the LM runs, as trials of the engine in
    ``<out_dir>/suite.db`` (a killed suite continues where it stopped); write runs, table,
    Markdown. ``threads``: torch CPU threads per run (None: as many as torch has now)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    job = SuiteJob(config, str(out), device=device, threads=threads or torch_threads_now())
    done = engine.run(job, executor=executor, out=_LogStream(log or _stderr))
    if done.interrupted:
        raise KeyboardInterrupt
    rows = result_rows(done.study)
    table = summarise(rows, config)
    wall_s = time.perf_counter() - t0
    markdown = to_markdown(config, table, rows, wall_s)
    write_outputs(out, rows, table, markdown)
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


def to_markdown(config: SuiteConfig, table: list[dict[str, Any]], rows: list[dict[str, Any]], wall_s: float) -> str:
    columns = list(dict.fromkeys(r["task"] for r in table))
    cell = {(r["variant"], r["task"]): r for r in table}
    head = ["variant", *columns]
    lines = [f"# {config.name}", "", config.description.strip(), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in config.variants:
        cells = [_cell(cell.get((name, c))) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    grid = f"{config.grid.mode}: " + ", ".join(f"{k} {list(v)}" for k, v in config.grid.axes().items())
    n_probe = sum(r["metric"] == "accuracy" for r in rows)
    lines += ["", f"Probe cells: test accuracy on queried positions, mean ± std over {config.seeds} seed(s) × "
              f"{len(config.grid_points())} grid point(s) ({grid})."]
    if config.lm is not None:
        settings = ", ".join(f"{k} {v}" for k, v in config.lm.budget.items())
        lines.append(f"{LM_COLUMN}: validation loss (nats/token) of the design trained as a causal LM, "
                     f"context {config.lm.context}, {settings}.")
    lines.append(f"{n_probe} probe runs, {len(rows) - n_probe} LM runs, {wall_s:.0f} s wall time.")
    return "\n".join(lines) + "\n"


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    text = f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    return text + (f" ({entry['n_failed']} failed)" if entry["n_failed"] else "")


def write_outputs(out: Path, rows: list[dict[str, Any]], table: list[dict[str, Any]], markdown: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    atomic_write(out / "runs.parquet", lambda p: pq.write_table(pa.Table.from_pylist(rows), p))
    atomic_write(out / "table.parquet", lambda p: pq.write_table(pa.Table.from_pylist(table), p))
    atomic_write_text(out / "table.md", markdown)

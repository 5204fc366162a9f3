"""Searches replayed against a table: real Optuna studies whose objective looks the design up.

    table.parquet ──► ReplayContext (the space rebuilt from the table's metadata, the
        normalisation, the true front) ──► replay_one: sampler ─ ask ─► space.sample(trial) ─►
        spec hash ─► one seed's row ─[rungs]─ tell ─► the front so far as a fraction of the true
        front ──► replay_all: every sampler × seed [× scheduler] ──► ReplayResult ──► replay.json /
        .parquet / .png

The study is define-by-run like a live one, so every sampler sees the same parameters, the same
noise (one seed's row drawn per evaluation) and the same repeated designs a live study would.
With a scheduler (``[fidelity]`` as in a study, e.g. ``mo_asha``), the row's learning curve is
ranked at the rungs by one ``RungScheduler`` per replayed study: a trial stopped there is told
PRUNED and costs the tokens it had trained; only complete trials make the front.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nas.bench.fidelity import rank_fidelity, replay_plan, run_rungs
from nas.bench.hypervolume import Normalisation, design_means, true_front_hypervolume
from nas.bench.schema import Table
from nas.common import atomic_write, atomic_write_json, torch_threads
from nas.common import jsonable
from nas.engine.rungs import RungPlan, RungScheduler
from nas.engine.sampler import SAMPLERS, DistinctDesigns, make_sampler
from search_spaces import enumerate_designs, get_space
from search_spaces.base import SearchSpace

if TYPE_CHECKING:  # the study config imports torch; a replay needs only the section's values
    from nas.config.study import FidelityConfig

THRESHOLDS = (0.9, 0.95)
REPLAY_JSON, REPLAY_PARQUET, REPLAY_PNG = "replay.json", "replay.parquet", "replay.png"
SAMPLERS_ON_TORCH = {"gp"}
FULL_BUDGET = "none"  # the scheduler name of a replay that trains every trial for the full budget
THRESHOLD_NOTE = ("thresholds (trials and tokens to 90%/95%) are read from hv_fraction_mean, the designs the study "
                  "completed at their seed-mean values, which never exceeds 1; hv_fraction, the front of the "
                  "one-seed values the study was told, can pass a threshold by a lucky seed: it is kept in "
                  "replay.parquet and drawn dashed in replay.png, not used for thresholds")


@dataclass(frozen=True, kw_only=True)
class ReplayTrial:
    number: int
    spec_hash: str
    row_seed: int  # the table seed whose row the study was told
    status: str  # the row's: complete | infeasible | failed; or pruned (stopped at a rung)
    reused: bool  # a design the study had evaluated: its first result again, no tokens spent
    values: tuple[float, ...]  # as told to Optuna (the objectives' order; NaN if failed or pruned)
    tokens: int  # training tokens spent so far (a pruned trial's up to its stopping point)
    hv_fraction: float  # the study's front (its told values) / the true front's hypervolume
    hv_fraction_mean: float  # the designs it has completed, at their seed-mean values / the true front's
    stopped_at: int | None = None  # the rung a pruned trial stopped at


@dataclass(frozen=True, kw_only=True)
class ReplayRun:
    sampler: str
    seed: int
    trials: tuple[ReplayTrial, ...]
    wall_s: float
    scheduler: str = FULL_BUDGET

    @property
    def label(self) -> str:
        return run_label(self.sampler, self.scheduler)

    def reach(self, fraction: float) -> tuple[float, float]:
        """Trials and training tokens until the completed designs, at their seed means, first
        hold ``fraction`` of the true front's hypervolume; +inf for both if they never did."""
        for t in self.trials:
            if t.hv_fraction_mean >= fraction:
                return float(t.number + 1), float(t.tokens)
        return math.inf, math.inf

    def stopped_by_rung(self, rungs: int) -> list[int]:
        """Trials stopped at each rung (a repeated design, which trained nothing, not counted)."""
        return [sum(t.stopped_at == i and not t.reused for t in self.trials) for i in range(rungs)]


def run_label(sampler: str, scheduler: str) -> str:
    """A replay's name in the results: the sampler, with ``+<scheduler>`` when it had one."""
    return sampler if scheduler == FULL_BUDGET else f"{sampler}+{scheduler}"


@dataclass(frozen=True, kw_only=True)
class ReplayContext:
    """What every replay of one table shares, computed once."""

    table: Table
    objectives: tuple[str, ...]
    space: SearchSpace
    norm: Normalisation
    true_hv: float
    means: dict[str, tuple[float, ...]]
    plan: RungPlan | None = None  # the rungs of the scheduled replays, if any

    @classmethod
    def of(cls, table: Table, objectives: Sequence[str], plan: RungPlan | None = None) -> ReplayContext:
        if not objectives:
            raise ValueError(f"give one or more objectives to replay, among the table's {table.objectives}")
        norm = Normalisation.of(table, objectives)
        space = get_space(table.meta["space"]["name"], **table.meta["space"]["options"])
        return cls(table=table, objectives=tuple(objectives), space=space, norm=norm,
                   true_hv=true_front_hypervolume(table, norm), means=design_means(table, objectives), plan=plan)

    @property
    def directions(self) -> list[StudyDirection]:
        return [StudyDirection.MINIMIZE if self.table.directions[n] == "minimize" else StudyDirection.MAXIMIZE
                for n in self.objectives]

    def draw(self, spec_hash: str, seed: int, number: int) -> dict[str, Any]:
        """One of the design's rows, drawn from (sampler seed, trial number): a replay is
        deterministic per seed, and every evaluation sees one run's noise."""
        rows = self.table.by_hash.get(spec_hash)
        if not rows:
            raise ValueError(f"design {spec_hash} is not in the table: the table is incomplete; tabulate again "
                             "(or resume the tabulation: run the same `qkvnas tabulate` command) before replaying")
        return rows[int(np.random.default_rng([seed, number]).integers(len(rows)))]

    def told_values(self, row: dict[str, Any]) -> tuple[float, ...]:
        """An objective the run never measured (NaN) is told as its worst value, as a live
        study tells an infeasible design's."""
        worst = {StudyDirection.MINIMIZE: math.inf, StudyDirection.MAXIMIZE: -math.inf}
        values = (float(row[n]) for n in self.objectives)
        return tuple(worst[d] if math.isnan(v) else v for v, d in zip(values, self.directions))

    def evaluate(self, row: dict[str, Any], rungs: RungScheduler | None, number: int) -> _Outcome:
        """What the study is told of a drawn row, and the tokens it costs: a live study trains
        no design that breaks a constraint (nothing), stops one at a rung (the tokens to there)."""
        status, stopped, cost = str(row["status"]), None, int(row["tokens"])
        if status == "infeasible":
            cost = 0
        elif rungs is not None:
            stopped, cost = run_rungs(_plan(self), rungs, number, row)
            status = "pruned" if stopped is not None else status
        told = status in ("complete", "infeasible")
        values = self.told_values(row) if told else (math.nan,) * len(self.objectives)
        return _Outcome(status=status, values=values, row_seed=int(row["seed"]), stopped_at=stopped, cost=cost)


@dataclass(frozen=True, kw_only=True)
class _Outcome:
    status: str
    values: tuple[float, ...]
    row_seed: int
    stopped_at: int | None
    cost: int  # training tokens; 0 for a design already evaluated


class _Front:
    """The points of a front so far, and their hypervolume as a fraction of the true front's."""

    def __init__(self, ctx: ReplayContext) -> None:
        self.ctx = ctx
        self.points: list[tuple[float, ...]] = []
        self.fraction = 0.0

    def add(self, values: tuple[float, ...]) -> None:
        self.points.append(values)
        self.fraction = self.ctx.norm.hypervolume(self.points) / self.ctx.true_hv


def replay_one(table: Table, *, sampler: str, seed: int, trials: int, objectives: Sequence[str],
               options: dict[str, Any] | None = None, scheduler: FidelityConfig | None = None) -> ReplayRun:
    """One study of ``trials`` trials with sampler ``sampler`` (``options``: its keyword
    arguments) seeded ``seed``, against the table; ``scheduler``: a ``[fidelity]`` section whose
    rungs stop trials early (None, or scheduler "none": every trial at the full budget)."""
    ctx = ReplayContext.of(table, objectives, replay_plan(table, objectives, scheduler))
    return _replay(ctx, sampler, seed, trials, options, _scheduler_name(ctx, scheduler))


def _replay(ctx: ReplayContext, sampler: str, seed: int, trials: int, options: dict[str, Any] | None,
            scheduler: str = FULL_BUDGET) -> ReplayRun:
    """``scheduler``: FULL_BUDGET, or the name of the scheduler whose rungs are ``ctx.plan``."""
    start = time.perf_counter()
    with _quiet_optuna(), _one_torch_thread(sampler):
        # As a live study proposes (nas/study/job.py): no design the study has while the space has others.
        study = optuna.create_study(directions=ctx.directions,
                                    sampler=DistinctDesigns(make_sampler(sampler, seed, options), ctx.space, seed=seed))
        rungs = None if scheduler == FULL_BUDGET else _plan(ctx).scheduler()
        first: dict[str, ReplayTrial] = {}
        told, found = _Front(ctx), _Front(ctx)
        tokens, out = 0, []
        for _ in range(trials):
            trial = study.ask()
            h = ctx.space.sample(trial).hash
            seen = first.get(h)
            if seen is None:
                outcome = ctx.evaluate(ctx.draw(h, seed, trial.number), rungs, trial.number)
                tokens += outcome.cost
                if outcome.status == "complete":
                    told.add(outcome.values)
                    found.add(ctx.means.get(h, (math.inf,) * len(outcome.values)))  # no finite mean: beyond the reference
            else:  # its first outcome again, pruned or not: a live study copies it without training
                outcome = _Outcome(status=seen.status, values=seen.values, row_seed=seen.row_seed,
                                   stopped_at=seen.stopped_at, cost=0)
            _tell(study, trial, outcome)
            record = ReplayTrial(number=trial.number, spec_hash=h, row_seed=outcome.row_seed, status=outcome.status,
                                 reused=seen is not None, values=outcome.values, tokens=tokens, hv_fraction=told.fraction,
                                 hv_fraction_mean=found.fraction, stopped_at=outcome.stopped_at)
            first.setdefault(h, record)
            out.append(record)
    return ReplayRun(sampler=sampler, seed=seed, trials=tuple(out), wall_s=time.perf_counter() - start,
                     scheduler=scheduler)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: _Outcome) -> None:
    if outcome.status == "failed":
        study.tell(trial, state=TrialState.FAIL)
    elif outcome.status == "pruned":  # as the engine tells a trial stopped at a rung (nas/engine/stopping.py)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, list(outcome.values))


def _plan(ctx: ReplayContext) -> RungPlan:
    assert ctx.plan is not None, "a scheduled replay's context has the rungs"
    return ctx.plan


def _scheduler_name(ctx: ReplayContext, fidelity: FidelityConfig | None) -> str:
    return fidelity.scheduler if fidelity is not None and ctx.plan is not None else FULL_BUDGET


def _one_torch_thread(sampler: str) -> contextlib.AbstractContextManager[None]:
    """GP fits its model with torch: on a busy 2-core machine two threads spin against each
    other (measured: 1.7 s per trial on two threads, 0.25 s on one, at load 5)."""
    return torch_threads(1) if sampler in SAMPLERS_ON_TORCH else contextlib.nullcontext()


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs a line per trial; hundreds of replayed studies would bury the results."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


# ---- every sampler, repeated ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    table: str
    objectives: tuple[str, ...]
    trials: int
    repeats: int
    seed: int
    samplers: dict[str, dict[str, Any]]  # name → the options it was built with
    norm: Normalisation
    true_hv: float
    runs: dict[str, tuple[ReplayRun, ...]]  # run label ("tpe", "tpe+mo_asha") → its repeats
    fidelity: dict[str, Any]
    scheduler: dict[str, Any] | None = None  # the scheduled replays' [fidelity] section and rung tokens

    @property
    def rung_tokens(self) -> tuple[int, ...]:
        return tuple(self.scheduler["rung_tokens"]) if self.scheduler else ()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per run label: seconds per trial, final fractions, trials and tokens to each threshold
        (median and interquartile range over repeats; +inf where a repeat never reached it), and
        the ratio to random search under the same scheduler (median random / median sampler;
        None where undefined). A scheduled label adds the trials stopped at each rung and
        ``tokens_ratio_vs_full``: the same sampler's median tokens at the full budget / with it."""
        out = {label: sampler_summary(runs, () if runs[0].scheduler == FULL_BUDGET else self.rung_tokens)
               for label, runs in self.runs.items()}
        for label, s in out.items():
            run = self.runs[label][0]
            trials, tokens = (_ratios(out.get(run_label("random", run.scheduler)), s, axis) for axis in ("trials", "tokens"))
            s["ratio_to_random"] = {key: {"trials": trials[key], "tokens": tokens[key]} for key in trials}
            if run.scheduler != FULL_BUDGET:
                s["tokens_ratio_vs_full"] = _ratios(out.get(run.sampler), s, "tokens")
        return out

    def to_dict(self) -> dict[str, Any]:
        """replay.json: infinities written "inf", as the study's records write them."""
        return jsonable({
            "table": self.table, "objectives": list(self.objectives), "trials": self.trials, "repeats": self.repeats,
            "sampler_seeds": [self.seed, self.seed + self.repeats - 1],
            "samplers": {n: {"class": make_sampler(n, 0, o).__class__.__name__, "options": o} for n, o in self.samplers.items()},
            "scheduler": self.scheduler, "normalisation": self.norm.to_dict(), "true_front_hypervolume": self.true_hv,
            "thresholds": [f"{t:.0%}" for t in THRESHOLDS], "threshold_measure": "hv_fraction_mean",
            "summary": self.summary(), "fidelity": self.fidelity, "notes": self.notes,
        })

    def rows(self) -> list[dict[str, Any]]:
        """replay.parquet: one row per run label × repeat × trial."""
        return [{"label": label, "sampler": run.sampler, "scheduler": run.scheduler, "repeat": i, "sampler_seed": run.seed,
                 "trial": t.number, "spec_hash": t.spec_hash, "row_seed": t.row_seed, "status": t.status,
                 "reused": t.reused, "stopped_at_rung": t.stopped_at, "tokens": t.tokens, "hv_fraction": t.hv_fraction,
                 "hv_fraction_mean": t.hv_fraction_mean, **dict(zip(self.objectives, t.values))}
                for label, runs in self.runs.items() for i, run in enumerate(runs) for t in run.trials]

    @property
    def notes(self) -> list[str]:
        scheduled = [SCHEDULER_NOTE] if self.scheduler else []
        return [THRESHOLD_NOTE, *scheduled, *sampler_notes(self.samplers, self.trials)]

    def text(self) -> str:
        from nas.bench.plots import replay_text

        return replay_text(self)


SCHEDULER_NOTE = ("a '+<scheduler>' run ranks each trial's learning curve at the rungs: a stopped trial is told "
                  "PRUNED and costs the tokens it trained up to the curve point where it stopped; only complete "
                  "trials make the front; its ratio_to_random compares it with random search under the same "
                  "scheduler, its tokens_ratio_vs_full with the same sampler at the full budget (above 1: fewer tokens)")


def sampler_notes(samplers: dict[str, dict[str, Any]], trials: int) -> list[str]:
    """What a reader of the curves must know: an evolutionary sampler whose first generation
    holds every trial draws them all at random, exactly as random search with its seed does."""
    notes = []
    for name, options in samplers.items():
        param = inspect.signature(SAMPLERS[name]).parameters.get("population_size")
        size = options.get("population_size", param.default if param is not None else None)
        if size is not None and size >= trials:
            notes.append(f"{name}: population_size {size} >= {trials} trials: every trial is in its first generation, "
                         "drawn at random (its curve is random search's); give it a smaller population_size "
                         f"(--sampler-option {name}.population_size=N)")
    return notes


def sampler_summary(runs: Sequence[ReplayRun], rung_tokens: Sequence[int] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {
        "s_per_trial": float(np.mean([r.wall_s / max(len(r.trials), 1) for r in runs])),
        "final_hv_fraction": quartiles([r.trials[-1].hv_fraction for r in runs]),
        "final_hv_fraction_mean": quartiles([r.trials[-1].hv_fraction_mean for r in runs]),
        "reach": {},
    }
    for fraction in THRESHOLDS:
        reached = [r.reach(fraction) for r in runs]
        out["reach"][f"{fraction:.0%}"] = {
            "reached": sum(math.isfinite(n) for n, _ in reached), "of": len(runs),
            "trials": quartiles([n for n, _ in reached]), "tokens": quartiles([k for _, k in reached]),
        }
    if rung_tokens:
        counts = np.array([r.stopped_by_rung(len(rung_tokens)) for r in runs])  # (repeats, rungs)
        out["stopped_by_rung"] = [{"rung": i, "tokens": t, "stopped": quartiles(counts[:, i].tolist())}
                                  for i, t in enumerate(rung_tokens)]
    return out


def quartiles(values: Sequence[float]) -> dict[str, float]:
    return {"median": quantile(values, 0.5), "q25": quantile(values, 0.25), "q75": quantile(values, 0.75)}


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile that keeps +inf (a repeat that never reached): numpy's
    interpolation between a number and inf gives NaN at some positions."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(xs[hi]):
        return xs[lo] if lo == hi else math.inf
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _ratios(base: dict[str, Any] | None, summary: dict[str, Any], axis: str) -> dict[str, float | None]:
    """Per threshold: ``base``'s median on ``axis`` / ``summary``'s; None where undefined."""
    return {key: _ratio(base["reach"][key][axis]["median"], reach[axis]["median"]) if base else None
            for key, reach in summary["reach"].items()}


def _ratio(random: float, sampler: float) -> float | None:
    return random / sampler if math.isfinite(random) and math.isfinite(sampler) and sampler > 0 else None


def replay_all(table: Table, *, samplers: Sequence[str], trials: int, repeats: int, objectives: Sequence[str],
               seed: int = 0, jobs: int = 1, options: dict[str, dict[str, Any]] | None = None,
               scheduler: FidelityConfig | None = None, report: Callable[[str], None] | None = None) -> ReplayResult:
    """Every sampler replayed ``repeats`` times, with sampler seeds ``seed`` .. ``seed + repeats
    - 1``, in ``jobs`` processes. ``options``: sampler name → its keyword arguments;
    ``scheduler``: a ``[fidelity]`` section: unless None or "none", every sampler is replayed
    both at the full budget (label "tpe") and with its rungs ("tpe+mo_asha"); ``report``:
    called with a line per run label once every replay has finished."""
    if trials < 1 or repeats < 1 or jobs < 1:
        raise ValueError(f"trials={trials}, repeats={repeats}, jobs={jobs}: each must be 1 or more")
    opts = {name: dict((options or {}).get(name) or {}) for name in dict.fromkeys(samplers)}
    for name, o in opts.items():
        make_sampler(name, seed, o)  # a bad name or option fails before any replay
    ctx = ReplayContext.of(table, objectives, replay_plan(table, objectives, scheduler))
    check_complete(ctx)
    modes = dict.fromkeys([FULL_BUDGET, _scheduler_name(ctx, scheduler)])
    tasks = [(name, s, mode) for name in opts for mode in modes for s in range(seed, seed + repeats)]
    done = _run_tasks(ctx, tasks, trials, opts, jobs)
    labels = [run_label(name, mode) for name in opts for mode in modes]
    runs = {label: tuple(r for r in done if r.label == label) for label in labels}
    if report is not None:
        for label, rs in runs.items():
            report(f"{label}: {len(rs)} replays of {trials} trials, {sum(r.wall_s for r in rs) / (len(rs) * trials):.3g} s/trial")
    return ReplayResult(table=str(table.path or table.meta.get("name", "table")), objectives=ctx.objectives, trials=trials,
                        repeats=repeats, seed=seed, samplers=opts, norm=ctx.norm, true_hv=ctx.true_hv, runs=runs,
                        fidelity=rank_fidelity(table), scheduler=_scheduler_dict(scheduler, ctx.plan))


def _scheduler_dict(fidelity: FidelityConfig | None, plan: RungPlan | None) -> dict[str, Any] | None:
    """What replay.json says of the scheduled replays: the section and what it ranked on."""
    if fidelity is None or plan is None:
        return None
    ranked_on = {plan.quality: "minimize", **{n: "minimize" if sign > 0 else "maximize" for n, sign in plan.fixed}}
    return {"name": fidelity.scheduler, "rungs": list(fidelity.rungs), "rung_tokens": list(plan.rungs), "eta": plan.eta,
            "tie_break": plan.tie_break, "ranked_on": ranked_on}


def check_complete(ctx: ReplayContext) -> None:
    """Every design of the space has a row: a replay would stop at the first one missing."""
    missing = [spec.hash for _, spec in enumerate_designs(ctx.space) if spec.hash not in ctx.table.by_hash]
    if missing:
        raise ValueError(f"the table is incomplete: {len(missing)} of the space's designs have no row "
                         f"(e.g. {', '.join(missing[:3])}); resume the tabulation (run the same `qkvnas tabulate` "
                         "command again) before replaying")


def _run_tasks(ctx: ReplayContext, tasks: list[tuple[str, int, str]], trials: int, opts: dict[str, dict[str, Any]],
               jobs: int) -> list[ReplayRun]:
    """``tasks``: (sampler, seed, scheduler name) each."""
    if jobs == 1:
        return [_replay(ctx, name, s, trials, opts[name], mode) for name, s, mode in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker, safe whatever threads the caller runs (fork is not).
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(ctx.table, ctx.objectives, ctx.plan)) as pool:
        return list(pool.map(_worker_replay, [(name, s, trials, opts[name], mode) for name, s, mode in tasks]))


_WORKER: ReplayContext | None = None  # a pool worker's context, built once from the table it is sent


def _init_worker(table: Table, objectives: tuple[str, ...], plan: RungPlan | None) -> None:
    global _WORKER
    _WORKER = ReplayContext.of(table, objectives, plan)


def _worker_replay(task: tuple[str, int, int, dict[str, Any], str]) -> ReplayRun:
    assert _WORKER is not None, "a replay worker runs after _init_worker"
    name, seed, trials, options, scheduler = task
    return _replay(_WORKER, name, seed, trials, options, scheduler)


# ---- output -----------------------------------------------------------------------------------
def write_replay(result: ReplayResult, out_dir: str | Path) -> dict[str, Path]:
    """replay.json (the summary), replay.parquet (every trial), replay.png (the curves)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nas.bench.plots import plot_replay

    out = Path(out_dir)
    table = pa.Table.from_pylist(result.rows())
    return {
        "json": atomic_write_json(out / REPLAY_JSON, result.to_dict()),
        "parquet": atomic_write(out / REPLAY_PARQUET, lambda tmp: pq.write_table(table, tmp)),
        "png": plot_replay(result, out / REPLAY_PNG),
    }

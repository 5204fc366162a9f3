"""Engine overhead: the same trials through the study engine (Ray Tune + Optuna + SQLite) and
through a plain Python loop, and the wall time of the quick preset.

    python benchmarks/bench_engine.py [--trials 8] [--tokens 16384] [--skip-quick] [--out results.json]

(a) Per-trial overhead. The first ``--trials`` designs of the paper space (distinct designs, in
    a fixed order) are trained with the same budget and seed: by ``run_trial`` in a loop (before
    and after the engine, averaged, so a drift in the machine's load shows and cancels), and by
    ``run_study`` with those designs enqueued in that order (1 trial at a time, 2 CPUs per
    trial, so torch uses the same 2 threads). Reported:
    * ``plain_per_trial_s``: the loop's wall time per trial;
    * ``engine_per_trial_s``: the engine's wall time per trial, from the start of its first
      trial to the end of its last (Optuna timestamps): sampling, Ray scheduling, the actor
      round trip, the record written to storage;
    * ``overhead_per_trial_s`` = engine − plain per trial, and the same as a percentage;
    * ``steady_overhead_per_trial_s``: the same from the end of the first trial on, so without
      the reused actor's one-off start (``first_trial_extra_s``: process start, imports);
    * ``engine_bookkeeping_per_trial_s``: engine time per trial outside the trial's own work
      (compare ``engine_compute_per_trial_s`` with ``plain_compute_per_trial_s`` to see how much
      slower the same work runs inside a Ray actor);
    * ``engine_fixed_s``: the rest of ``run_study``'s wall time (Ray start and stop, study
      creation, export).
(b) The quick preset (``qkvnas run --preset quick``) end to end, in a scratch directory: wall
    time, completed trials and distinct designs trained.

Run it alone on the machine: neighbours slow both sides unevenly.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nas.engine import attrs  # noqa: E402
from nas.api import run_study  # noqa: E402
from nas.config import StudyConfig, load_config  # noqa: E402
from nas.study import create_or_load_study  # noqa: E402
from nas.trial import corpus_for, run_trial  # noqa: E402
from search_spaces import get_space  # noqa: E402

BENCH_STUDY = """
name = "bench"
objectives = ["val_loss", "kv_cache_bytes_per_token"]
trials = {trials}
[space]
name = "paper"
[space.options.base]
vocab_size = 256
context = 64
d_model = 64
n_heads = 4
ffn_dim = 256
n_layers = 2
[budget]
tokens = {tokens}
batch_size = 16
eval_batches = 4
[resources]
cpus_per_trial = 2
max_concurrent = 1
"""


def designs(config: StudyConfig, n: int) -> list[dict[str, Any]]:
    """The first n designs of the space's grid, as Optuna parameters."""
    space = get_space(config.space.name, **config.space.options)
    combos = [{"proj": p, "kv_sharing": k} for p in space.projs for k in space.kv_sharing]
    if n > len(combos):
        raise ValueError(f"--trials {n}: the paper space has {len(combos)} distinct designs; use at most that")
    return combos[:n]


def spec_of(config: StudyConfig, params: dict[str, Any]) -> Any:
    space = get_space(config.space.name, **config.space.options)
    trial = optuna.trial.FixedTrial(params)
    return space.sample(trial)


def plain_loop(config: StudyConfig, params: list[dict[str, Any]]) -> dict[str, Any]:
    corpus_for(config.data)  # loaded once, as a reused actor would have it
    t0 = time.perf_counter()
    records = [run_trial(spec_of(config, p), config, seed=config.budget.seed) for p in params]
    wall = time.perf_counter() - t0
    assert all(r.status == "complete" for r in records), [r.reason for r in records]
    first = records[0].timings["total_s"]
    return {"wall_s": wall, "per_trial_s": wall / len(params), "first_trial_s": first,
            "steady_per_trial_s": (wall - first) / (len(params) - 1), "trial_s": [r.timings["total_s"] for r in records]}


def _mean_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {key: (a[key] + b[key]) / 2 for key in ("wall_s", "per_trial_s", "first_trial_s", "steady_per_trial_s")}
    out["trial_s"] = [(x + y) / 2 for x, y in zip(a["trial_s"], b["trial_s"])]
    out["runs_per_trial_s"] = [a["per_trial_s"], b["per_trial_s"]]
    return out


def engine(config: StudyConfig, params: list[dict[str, Any]]) -> dict[str, Any]:
    study = create_or_load_study(config)
    for p in params:
        study.enqueue_trial(p)
    t0 = time.perf_counter()
    summary = run_study(config, progress=False, out=io.StringIO())
    wall = time.perf_counter() - t0
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert summary.counts.complete == len(params) and [t.params for t in trials] == params
    start, ends = trials[0].datetime_start, [t.datetime_complete for t in trials]
    loop = (ends[-1] - start).total_seconds()
    return {"wall_s": wall, "loop_s": loop, "per_trial_s": loop / len(params), "fixed_s": wall - loop,
            "first_trial_s": (ends[0] - start).total_seconds(),
            "steady_per_trial_s": (ends[-1] - ends[0]).total_seconds() / (len(params) - 1),
            "trial_s": [attrs.read(t)["timings"]["total_s"] for t in trials]}


def quick_preset(scratch: Path) -> dict[str, Any]:
    config = load_config("quick", [f"directory={scratch / 'quick'}"])
    t0 = time.perf_counter()
    summary = run_study(config, progress=False, out=io.StringIO())
    wall = time.perf_counter() - t0
    study = create_or_load_study(config)
    trained = {t.user_attrs["spec_hash"] for t in study.trials
               if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs}
    return {"wall_s": wall, "complete": summary.counts.complete, "failed": summary.counts.failed,
            "distinct_designs_trained": len(trained), "front_size": summary.export.front_size if summary.export else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="distinct designs, 2..12")
    parser.add_argument("--tokens", type=int, default=16384, help="training tokens per trial")
    parser.add_argument("--skip-quick", action="store_true", help="do not time the quick preset")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qkvnas-bench-") as tmp:
        scratch = Path(tmp)
        (scratch / "bench.toml").write_text(BENCH_STUDY.format(trials=args.trials, tokens=args.tokens))
        config = load_config(scratch / "bench.toml", [f"directory={scratch / 'bench'}"])
        params = designs(config, args.trials)
        before = plain_loop(config, params)
        ran = engine(config, params)
        after = plain_loop(config, params)  # before and after: a drift in the machine's load shows
        plain = _mean_runs(before, after)
        results: dict[str, Any] = {
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "trials": args.trials, "tokens_per_trial": args.tokens,
            "plain_per_trial_s": plain["per_trial_s"], "engine_per_trial_s": ran["per_trial_s"],
            "overhead_per_trial_s": ran["per_trial_s"] - plain["per_trial_s"],
            "overhead_per_trial_pct": 100 * (ran["per_trial_s"] / plain["per_trial_s"] - 1),
            "steady_overhead_per_trial_s": ran["steady_per_trial_s"] - plain["steady_per_trial_s"],
            # Split of the engine's time per trial: bookkeeping outside the trial's own work
            # (sampling, Ray round trip, storage) and the trial's work itself inside the actor.
            "engine_bookkeeping_per_trial_s": (ran["loop_s"] - sum(ran["trial_s"])) / args.trials,
            "engine_compute_per_trial_s": sum(ran["trial_s"]) / args.trials,
            "plain_compute_per_trial_s": sum(plain["trial_s"]) / args.trials,
            "first_trial_extra_s": ran["first_trial_s"] - plain["first_trial_s"],
            "engine_fixed_s": ran["fixed_s"], "engine_wall_s": ran["wall_s"], "plain_wall_s": plain["wall_s"],
            "plain_trial_s": plain["trial_s"], "engine_trial_s": ran["trial_s"],
            "plain_per_trial_s_before_and_after": plain["runs_per_trial_s"],
        }
        if not args.skip_quick:
            results["quick_preset"] = quick_preset(scratch)
    print(json.dumps(results, indent=2))
    print(f"per trial: plain {results['plain_per_trial_s']:.2f} s, engine {results['engine_per_trial_s']:.2f} s "
          f"(+{results['overhead_per_trial_s']:.2f} s, {results['overhead_per_trial_pct']:+.0f}%; steady "
          f"+{results['steady_overhead_per_trial_s']:.2f} s, first trial +{results['first_trial_extra_s']:.1f} s); "
          f"bookkeeping {results['engine_bookkeeping_per_trial_s']:.2f} s/trial; "
          f"fixed engine cost {results['engine_fixed_s']:.1f} s", file=sys.stderr)
    if "quick_preset" in results:
        q = results["quick_preset"]
        print(f"quick preset: {q['wall_s']:.0f} s, {q['complete']} complete trials, "
              f"{q['distinct_designs_trained']} distinct designs trained", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replaying samplers against a table, without training: synthetic tables of the paper space's
12 designs with made-up values, the hypervolume against a hand-computed case, determinism,
repeated designs, clear errors, and the fidelity correlations."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from nas.bench.fidelity import rank_fidelity
from nas.bench.hypervolume import Normalisation, true_front_hypervolume
from nas.bench.replay import quantile, replay_all, replay_one, write_replay
from nas.bench.schema import SCHEMA_VERSION, Table
from search_spaces import enumerate_designs, get_space

BASE = {"vocab_size": 32, "context": 8, "d_model": 16, "n_heads": 4, "ffn_dim": 32, "n_layers": 2}
OBJECTIVES = ["val_loss", "kv_cache_bytes_per_token", "train_tokens_per_s"]
DIRECTIONS = {"val_loss": "minimize", "kv_cache_bytes_per_token": "minimize", "train_tokens_per_s": "maximize"}
EVAL_TOKENS = [1000 * (k + 1) for k in range(8)]
RUN_TOKENS = 8000


def _meta(space: str, seeds: tuple[int, ...], designs: int) -> dict:
    return {"schema_version": SCHEMA_VERSION, "name": "synthetic", "space": {"name": space, "options": {"base": BASE}},
            "objectives": OBJECTIVES, "directions": DIRECTIONS, "units": {n: "" for n in OBJECTIVES},
            "seeds": list(seeds), "budget_tokens": RUN_TOKENS, "designs": designs, "eval_tokens": EVAL_TOKENS}


def synthetic_table(space: str = "paper", *, seeds: tuple[int, ...] = (0, 1), noise: float = 0.05) -> Table:
    """Every design of ``space`` at every seed; made-up values, val loss jittered by ``noise``
    per seed; each curve a decreasing transform of its run's final loss (so ranks hold)."""
    designs = enumerate_designs(get_space(space, base=BASE))
    rows = []
    for d, (params, spec) in enumerate(designs):
        loss, kv, speed = np.random.default_rng(d).uniform([2.0, 100.0, 1000.0], [3.0, 200.0, 2000.0])
        for s in seeds:
            final = float(loss + noise * np.random.default_rng([d, s]).standard_normal())
            rows.append({
                "design": d, "spec_hash": spec.hash, "spec_json": spec.to_json(), "params_json": json.dumps(params),
                "seed": s, "status": "complete", "reason": None, "tokens": RUN_TOKENS, "curve_tokens": EVAL_TOKENS,
                "curve_val_loss": [final + 2.0 / (k + 1) for k in range(7)] + [final],
                "val_loss": final, "kv_cache_bytes_per_token": float(kv), "train_tokens_per_s": float(speed),
                "train_wall_s": 1.0, "total_s": 1.0,
            })
    return Table(rows=rows, meta=_meta(space, seeds, len(designs)))


def _row(h: str, seed: int, loss: float, speed: float, status: str = "complete") -> dict:
    return {"spec_hash": h, "seed": seed, "status": status, "val_loss": loss, "train_tokens_per_s": speed,
            "kv_cache_bytes_per_token": 1.0}


def test_hypervolume_against_a_hand_computed_two_objective_case() -> None:
    # Seed means: A (loss 1, speed 10), B (3, 30), C (2, 10); the seeds straddle them by ±0.5.
    # The failed and infeasible rows' extreme values must not move the normalisation.
    # loss minimised over [1, 3]: (v - 1) / 2 -> A 0, B 1, C 0.5
    # speed maximised over [10, 30]: (30 - v) / 20 -> A 1, B 0, C 1
    # Against (1.1, 1.1): A dominates [0, 1.1] x [1, 1.1], area 1.1 * 0.1 = 0.11; B dominates
    # [1, 1.1] x [0, 1.1], area 0.11; they overlap in [1, 1.1] x [1, 1.1], area 0.01; C (0.5, 1)
    # is dominated by A and adds nothing: 0.11 + 0.11 - 0.01 = 0.21.
    rows = [_row(h, s, loss + d, speed + 5 * d) for h, loss, speed in (("A", 1, 10), ("B", 3, 30), ("C", 2, 10))
            for s, d in ((0, -0.5), (1, 0.5))]
    rows += [_row("A", 2, -100.0, 1e6, "failed"), _row("D", 0, -50.0, 1e5, "infeasible")]
    table = Table(rows=rows, meta=_meta("paper", (0, 1), 3))
    norm = Normalisation.of(table, ["val_loss", "train_tokens_per_s"])
    assert (norm.low, norm.high, norm.reference) == ((1.0, 10.0), (3.0, 30.0), (1.1, 1.1))
    assert true_front_hypervolume(table, norm) == pytest.approx(0.21)
    assert norm.hypervolume([(1.0, 10.0)]) == pytest.approx(0.11)  # A alone
    # A lucky seed of A (loss 0.5 -> -0.25): [-0.25, 1.1] x [1, 1.1] = 1.35 * 0.1
    assert norm.hypervolume([(0.5, 10.0)]) == pytest.approx(0.135)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_replay_is_deterministic_per_seed(sampler: str) -> None:
    table = synthetic_table()
    a, b = (replay_one(table, sampler=sampler, seed=3, trials=25, objectives=OBJECTIVES) for _ in range(2))
    assert a.trials == b.trials
    other = replay_one(table, sampler=sampler, seed=4, trials=25, objectives=OBJECTIVES)
    assert [t.spec_hash for t in other.trials] != [t.spec_hash for t in a.trials]


def test_a_repeated_design_reuses_its_first_row_and_costs_no_tokens() -> None:
    table = synthetic_table()
    run = replay_one(table, sampler="random", seed=0, trials=40, objectives=OBJECTIVES)
    first, before = {}, 0
    for t in run.trials:
        if t.spec_hash in first:
            assert t.reused and (t.values, t.row_seed) == (first[t.spec_hash].values, first[t.spec_hash].row_seed)
            assert t.tokens == before
        else:
            assert not t.reused and t.tokens == before + RUN_TOKENS
            row = next(r for r in table.by_hash[t.spec_hash] if r["seed"] == t.row_seed)
            assert t.values == tuple(row[n] for n in OBJECTIVES)  # the table's own values, as drawn
            first[t.spec_hash] = t
        before = t.tokens
    assert any(t.reused for t in run.trials)  # 40 trials in 12 designs
    assert run.trials[-1].tokens == len(first) * RUN_TOKENS


def test_objectives_the_table_lacks_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"the table has no \['probe:copy'\]"):
        replay_one(synthetic_table(), sampler="random", seed=0, trials=5, objectives=["val_loss", "probe:copy"])


def test_a_table_missing_designs_is_a_clear_error() -> None:
    table = synthetic_table()
    kept = {r["spec_hash"] for r in table.rows if r["design"] < 2}
    partial = Table(rows=[r for r in table.rows if r["spec_hash"] in kept], meta=table.meta)
    with pytest.raises(ValueError, match="the table is incomplete: 10 of the space's designs have no row"):
        replay_all(partial, samplers=["random"], trials=5, repeats=1, objectives=OBJECTIVES)
    with pytest.raises(ValueError, match=r"design [0-9a-f]+ is not in the table: the table is incomplete") as err:
        replay_one(partial, sampler="random", seed=0, trials=40, objectives=OBJECTIVES)
    assert str(err.value).split()[1] in table.by_hash.keys() - kept


def test_random_search_over_every_design_finds_the_whole_front() -> None:
    table = synthetic_table(noise=0.0)
    run = replay_one(table, sampler="random", seed=0, trials=40, objectives=OBJECTIVES)
    assert len({t.spec_hash for t in run.trials}) == 12  # it saw every design
    assert run.trials[-1].hv_fraction == pytest.approx(1.0)
    # Noise-free, the study's told values are the seed means: both measures agree throughout.
    assert [t.hv_fraction for t in run.trials] == pytest.approx([t.hv_fraction_mean for t in run.trials])
    assert run.reach(0.95)[0] <= 40 and all(np.diff([t.hv_fraction for t in run.trials]) >= 0)


def test_every_sampler_replays_and_the_outputs_are_written(tmp_path) -> None:
    samplers = ["random", "tpe", "nsga2", "nsga3", "gp"]
    result = replay_all(synthetic_table(), samplers=samplers, trials=12, repeats=2, objectives=OBJECTIVES, seed=5)
    summary = result.summary()
    assert list(summary) == samplers and summary["random"]["reach"]["95%"]["of"] == 2
    ratio = summary["random"]["ratio_to_random"]["95%"]["trials"]
    assert ratio is None or ratio == 1.0
    written = write_replay(result, tmp_path)
    data = json.loads(written["json"].read_text())
    assert data["normalisation"]["reference_point"] == [1.1, 1.1, 1.1]
    assert data["samplers"]["tpe"]["class"] == "TPESampler" and data["fidelity"]["designs"] == 12
    trials = pq.read_table(written["parquet"]).to_pylist()
    assert len(trials) == 5 * 2 * 12 and {"hv_fraction", "tokens", "spec_hash", *OBJECTIVES} <= trials[0].keys()
    assert written["png"].stat().st_size > 0
    text = result.text()
    assert all(name in text for name in samplers) and "noise ceiling" in text


def test_a_process_pool_gives_the_same_replays() -> None:
    table = synthetic_table()
    args = dict(samplers=["random", "tpe"], trials=15, repeats=2, objectives=OBJECTIVES)
    one, two = replay_all(table, jobs=1, **args), replay_all(table, jobs=2, **args)
    assert {n: [r.trials for r in runs] for n, runs in one.runs.items()} == {
        n: [r.trials for r in runs] for n, runs in two.runs.items()}


def test_quantiles_keep_a_repeat_that_never_reached() -> None:
    assert quantile([4.0, 2.0], 0.5) == 3.0
    assert quantile([1.0, 2.0, math.inf, math.inf], 0.75) == math.inf  # numpy gives NaN here
    assert quantile([1.0, math.inf, math.inf], 0.0) == 1.0 and quantile([1.0, math.inf, math.inf], 0.5) == math.inf


def test_fidelity_of_curves_that_keep_the_final_ranking() -> None:
    table = synthetic_table(noise=0.0)
    fidelity = rank_fidelity(table)
    assert fidelity["designs"] == 12
    assert all(p["spearman"] == pytest.approx(1.0) and p["kendall"] == pytest.approx(1.0) for p in fidelity["points"])
    assert [fidelity["at_fraction"][k]["tokens"] for k in ("1/8", "1/4", "1/2")] == [1000, 2000, 4000]
    assert fidelity["seed_to_seed"]["spearman"] == pytest.approx(1.0) and fidelity["seed_to_seed"]["pairs"] == 1


def test_fidelity_of_a_point_that_reverses_the_ranking() -> None:
    table = synthetic_table(noise=0.0, seeds=(0, 1, 2))
    for row in table.rows:
        row["curve_val_loss"] = [-row["val_loss"], *row["curve_val_loss"][1:]]  # the first point ranks backwards
    fidelity = rank_fidelity(table)
    assert fidelity["points"][0]["spearman"] == pytest.approx(-1.0) and fidelity["points"][0]["kendall"] == pytest.approx(-1.0)
    assert fidelity["seed_to_seed"]["pairs"] == 3


def test_failed_and_infeasible_rows_are_told_but_are_no_points_of_the_front() -> None:
    table = synthetic_table(noise=0.0)
    failed, infeasible = table.rows[0]["spec_hash"], table.rows[2]["spec_hash"]
    for row in table.rows:
        if row["spec_hash"] == failed:
            row.update(status="failed", reason="diverged", val_loss=math.nan, train_tokens_per_s=math.nan)
        elif row["spec_hash"] == infeasible:  # never trained: the unmeasured objectives at their worst
            row.update(status="infeasible", reason="too big", val_loss=math.inf, train_tokens_per_s=-math.inf)
    run = replay_one(Table(rows=table.rows, meta=table.meta), sampler="random", seed=0, trials=40, objectives=OBJECTIVES)
    before = run.trials[0]
    for t in run.trials[1:]:
        if t.spec_hash in (failed, infeasible):
            assert t.status == ("failed" if t.spec_hash == failed else "infeasible")
            assert t.hv_fraction == before.hv_fraction  # no point added
            assert t.tokens == before.tokens + (RUN_TOKENS if t.spec_hash == failed and not t.reused else 0)
        before = t
    seen = {t.spec_hash for t in run.trials}
    assert {failed, infeasible} <= seen and math.isnan(next(t for t in run.trials if t.spec_hash == failed).values[0])


def test_a_table_read_back_from_parquet_replays_the_same(tmp_path) -> None:
    from nas.bench.schema import read_table
    from nas.bench.table import write_table

    table = synthetic_table()
    read = read_table(write_table(table.rows, table.meta, tmp_path / "table.parquet"))
    a, b = (replay_one(t, sampler="tpe", seed=1, trials=20, objectives=OBJECTIVES) for t in (table, read))
    assert a.trials == b.trials


# ---- thresholds, multi-fidelity replay, sampler options -------------------------------------
def test_thresholds_read_the_seed_mean_front_never_the_lucky_told_one() -> None:
    table = synthetic_table(noise=0.3)  # loud seeds: the told front passes the true one by luck
    # (sampler seed 7: a draw in which that luck happens; the replay proposes no repeat while
    # designs are left, so all 12 are evaluated in the first 12 trials, each at one drawn seed)
    run = replay_one(table, sampler="random", seed=7, trials=40, objectives=OBJECTIVES)
    assert max(t.hv_fraction for t in run.trials) > 1.0 >= max(t.hv_fraction_mean for t in run.trials)
    first = next(t for t in run.trials if t.hv_fraction_mean >= 0.9)
    assert run.reach(0.9) == (first.number + 1, first.tokens)


def fidelity(**changes):
    """ASHA's classic geometry (rungs at 1/9 and 1/3, eta 3), given explicitly: the tests read
    its numbers, and the defaults are chosen from a replay, not for tests."""
    from nas.config.study import FidelityConfig

    return FidelityConfig(**{"scheduler": "mo_asha", "rungs": (1 / 9, 1 / 3), "eta": 3.0} | changes)


def test_the_replayed_rungs_are_a_live_studys() -> None:
    from nas.bench.fidelity import replay_plan

    plan = replay_plan(synthetic_table(), OBJECTIVES, fidelity())
    # Default rungs 1/9 and 1/3 of 8000 tokens; val loss changes with the budget, the others
    # are known before training: KV bytes minimised (+1), throughput maximised (-1).
    assert plan.rungs == (889, 2667) and plan.eta == 3.0 and plan.quality == "val_loss"
    assert plan.fixed == (("kv_cache_bytes_per_token", 1), ("train_tokens_per_s", -1))
    assert replay_plan(synthetic_table(), OBJECTIVES, fidelity(scheduler="none")) is None


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_scheduled_replay_is_deterministic_per_seed(sampler: str) -> None:
    table, scheduler = synthetic_table(), fidelity()
    a, b = (replay_one(table, sampler=sampler, seed=3, trials=25, objectives=OBJECTIVES, scheduler=scheduler)
            for _ in range(2))
    assert a.trials == b.trials and a.scheduler == "mo_asha" and a.label == f"{sampler}+mo_asha"
    assert any(t.status == "pruned" for t in a.trials)
    other = replay_one(table, sampler=sampler, seed=4, trials=25, objectives=OBJECTIVES, scheduler=scheduler)
    assert [t.spec_hash for t in other.trials] != [t.spec_hash for t in a.trials]


def test_a_pruned_trial_costs_the_tokens_to_its_rung() -> None:
    # One objective, so a rung ranks on val loss alone (each distinct loss its own front): with
    # eta 2 a trial continues iff its loss at the rung is among the best max(1, n // 2) of the n
    # trials there so far. Rungs 0.2 and 0.5 of 8000: 1600 and 4000 tokens, read at the first
    # validation points at or past them, 2000 (curve index 1) and 4000 (index 3).
    table = synthetic_table(seeds=(0,))
    for row in table.rows:  # curves that cross: the rung-0 ranking is not the final one
        row["curve_val_loss"] = [row["val_loss"] + (row["design"] % 5) / (k + 1) for k in range(7)] + [row["val_loss"]]
    run = replay_one(table, sampler="random", seed=0, trials=30, objectives=["val_loss"],
                     scheduler=fidelity(rungs=[0.2, 0.5], eta=2))
    at_rung: list[list[float]] = [[], []]
    before, stopped = 0, []
    for t in run.trials:
        if not t.reused:
            curve = table.by_hash[t.spec_hash][0]["curve_val_loss"]
            expected = None
            for rung, k in enumerate((1, 3)):
                at_rung[rung].append(curve[k])
                if sorted(at_rung[rung]).index(curve[k]) >= max(1, len(at_rung[rung]) // 2):
                    expected = rung
                    break
            assert t.stopped_at == expected and t.status == ("complete" if expected is None else "pruned")
            assert t.tokens - before == {None: RUN_TOKENS, 0: 2000, 1: 4000}[expected]
            stopped.append(expected)
        before = t.tokens
    assert {0, 1, None} <= set(stopped)  # the case has trials stopped at each rung and some complete
    assert run.stopped_by_rung(2) == [stopped.count(0), stopped.count(1)]


def test_a_repeated_design_reuses_its_first_outcome_pruned_or_complete() -> None:
    # Seed 1: 40 trials of 12 designs, repeating both stopped and complete ones.
    run = replay_one(synthetic_table(), sampler="random", seed=1, trials=40, objectives=OBJECTIVES, scheduler=fidelity())
    first, before = {}, 0
    for t in run.trials:
        if t.spec_hash in first:
            seen = first[t.spec_hash]
            assert t.reused and t.tokens == before
            assert (t.status, t.stopped_at, t.row_seed) == (seen.status, seen.stopped_at, seen.row_seed)
            assert t.values == pytest.approx(seen.values, nan_ok=True)
        else:
            first[t.spec_hash] = t
        before = t.tokens
    assert any(t.reused and t.status == "pruned" for t in run.trials)
    assert any(t.reused and t.status == "complete" for t in run.trials)


def test_the_front_is_made_of_complete_trials_and_optuna_sees_pruned_ones(monkeypatch) -> None:
    import optuna
    from optuna.trial import TrialState

    from nas.bench.hypervolume import design_means

    studies: list[optuna.Study] = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(create(**kw)) or studies[-1])
    table = synthetic_table()
    run = replay_one(table, sampler="tpe", seed=1, trials=30, objectives=OBJECTIVES, scheduler=fidelity())
    states = [t.state for t in studies[0].trials]
    assert states == [TrialState.PRUNED if t.status == "pruned" else TrialState.COMPLETE for t in run.trials]
    assert all(math.isnan(v) for t in run.trials if t.status == "pruned" for v in t.values)
    norm, means = Normalisation.of(table, OBJECTIVES), design_means(table, OBJECTIVES)
    true_hv = true_front_hypervolume(table, norm)
    for k, t in enumerate(run.trials):
        complete = {s.spec_hash for s in run.trials[: k + 1] if s.status == "complete"}
        assert t.hv_fraction_mean == pytest.approx(norm.hypervolume([means[h] for h in complete]) / true_hv)


def test_replay_all_with_a_scheduler_runs_each_sampler_both_ways(tmp_path) -> None:
    args = dict(samplers=["random", "tpe"], trials=20, repeats=3, objectives=OBJECTIVES, scheduler=fidelity())
    result = replay_all(synthetic_table(), **args)
    assert list(result.runs) == ["random", "random+mo_asha", "tpe", "tpe+mo_asha"]
    summary = result.summary()
    full, scheduled = summary["random"], summary["random+mo_asha"]
    assert "tokens_ratio_vs_full" not in full and "stopped_by_rung" not in full
    ratio = scheduled["tokens_ratio_vs_full"]["95%"]  # seeds 0-2: the median repeat reaches 95% both ways
    assert ratio == pytest.approx(full["reach"]["95%"]["tokens"]["median"] / scheduled["reach"]["95%"]["tokens"]["median"])
    assert [r["tokens"] for r in scheduled["stopped_by_rung"]] == [889, 2667]
    assert scheduled["ratio_to_random"]["95%"]["tokens"] in (1.0, None)  # against random+mo_asha itself
    data = json.loads(write_replay(result, tmp_path)["json"].read_text())
    assert data["threshold_measure"] == "hv_fraction_mean" and any("hv_fraction_mean" in n for n in data["notes"])
    assert data["scheduler"]["rung_tokens"] == [889, 2667] and data["scheduler"]["eta"] == 3.0
    rows = pq.read_table(tmp_path / "replay.parquet").to_pylist()
    assert {r["label"] for r in rows} == set(result.runs) and {"hv_fraction", "hv_fraction_mean"} <= rows[0].keys()
    assert {r["stopped_at_rung"] for r in rows if r["status"] == "pruned"} <= {0, 1}
    assert "trials stopped per repeat" in result.text()
    pooled = replay_all(synthetic_table(), jobs=2, **args)  # the rungs reach the pool's workers
    # repr: a pruned trial's NaN values, pickled back from a worker, are not the same object
    assert {n: [repr(r.trials) for r in rs] for n, rs in pooled.runs.items()} == {
        n: [repr(r.trials) for r in rs] for n, rs in result.runs.items()}


def _cli_replay(tmp_path, *flags: str) -> tuple[int, dict, list[dict]]:
    from nas.bench.table import write_table
    from nas.cli import main

    table = synthetic_table()
    path = write_table(table.rows, table.meta, tmp_path / "table.parquet")
    out = tmp_path / "out"
    code = main(["replay", str(path), "--samplers", "random,nsga2", "--trials", "20", "--repeats", "1",
                 "--objectives", ",".join(OBJECTIVES), "--out", str(out), *flags])
    if code:
        return code, {}, []
    return code, json.loads((out / "replay.json").read_text()), pq.read_table(out / "replay.parquet").to_pylist()


def test_the_sampler_option_flag_reaches_the_sampler(tmp_path) -> None:
    def designs(rows: list[dict], label: str) -> list[str]:
        return [r["spec_hash"] for r in rows if r["label"] == label]

    # NSGA-II's default population (50) holds all 20 trials: drawn at random, random search's curve.
    code, data, rows = _cli_replay(tmp_path)
    assert code == 0 and designs(rows, "nsga2") == designs(rows, "random")
    code, data, rows = _cli_replay(tmp_path, "--sampler-option", "nsga2.population_size=4")
    assert code == 0 and data["samplers"]["nsga2"]["options"] == {"population_size": 4}
    assert designs(rows, "nsga2") != designs(rows, "random")


def test_the_scheduler_flags_build_the_fidelity_section(tmp_path) -> None:
    code, data, rows = _cli_replay(tmp_path, "--scheduler", "mo_asha", "--rungs", "0.25,0.5", "--eta", "2",
                                   "--tie-break", "epsnet")
    assert code == 0 and {r["label"] for r in rows} == {"random", "random+mo_asha", "nsga2", "nsga2+mo_asha"}
    assert data["scheduler"] | {"ranked_on": None} == {"name": "mo_asha", "rungs": [0.25, 0.5], "rung_tokens": [2000, 4000],
                                                       "eta": 2.0, "tie_break": "epsnet", "ranked_on": None}


@pytest.mark.parametrize("flags, message", [
    (["--sampler-option", "population_size=4"], "SAMPLER.KEY=VALUE"),
    (["--sampler-option", "tpe.n_startup_trials=4"], "not among --samplers"),
    (["--sampler-option", "nsga2.populaton_size=4"], "populaton_size"),
    (["--rungs", "0.5"], "need --scheduler mo_asha"),
    (["--scheduler", "mo_asha", "--rungs", "0.5,0.25"], "ascending"),
    (["--scheduler", "mo_asha", "--rungs", "half"], "comma-separated fractions"),
])
def test_bad_replay_flags_say_what_to_change(tmp_path, capsys, flags, message) -> None:
    code, _, _ = _cli_replay(tmp_path, *flags)
    assert code == 2 and message in capsys.readouterr().err

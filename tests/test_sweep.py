"""Learning-rate sweeps: each design at its own best learning rate, the ranking's stability, and
the ladder's sweep (points, budgets, report)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from nas.ladder.config import LadderConfig
from nas.ladder.grid import grid
from nas.ladder.run import point_budget
from nas.ladder.sweep_report import shared_lr_rows, sweep_section
from nas.sweep import LRSweep, best_lr, best_rows, kendall_tau, ranking_stability

# design → lr → accuracies over seeds: "a" likes 1e-3, "b" likes 1e-2; at the shared 3e-3 "a" wins
ACC = {"a": {1e-3: [0.9, 0.8], 3e-3: [0.7, 0.7], 1e-2: [0.1, float("nan")]},
       "b": {1e-3: [0.2, 0.2], 3e-3: [0.6, 0.6], 1e-2: [0.95, 0.95]},
       "c": {1e-3: [float("nan")] * 2, 3e-3: [float("nan")] * 2, 1e-2: [float("nan")] * 2}}


def rows() -> list[dict]:
    return [{"variant": d, "lr": lr, "value": v, "seed": s}
            for d, by_lr in ACC.items() for lr, vs in by_lr.items() for s, v in enumerate(vs)]


def test_best_per_design_picks_each_designs_own_learning_rate() -> None:
    best = best_lr(rows(), ["variant"], "value", maximize=True)
    assert best == {("a",): 1e-3, ("b",): 1e-2}  # "c" never gave a finite value: left out
    chosen = best_rows(rows(), ["variant"], "value", maximize=True)
    assert {(r["variant"], r["lr"]) for r in chosen} == {("a", 1e-3), ("b", 1e-2)} and len(chosen) == 4
    losses = [{**r, "value": 1 - r["value"]} for r in rows()]
    assert best_lr(losses, ["variant"], "value", maximize=False) == best


def test_ties_go_to_the_smaller_learning_rate() -> None:
    tied = [{"variant": "a", "lr": lr, "value": 0.5} for lr in (1e-2, 1e-3, 3e-3)]
    assert best_lr(tied, ["variant"], "value", maximize=True) == {("a",): 1e-3}


def test_ranking_stability_across_the_sweep() -> None:
    stab = ranking_stability(rows(), "variant", "value", maximize=True)
    assert stab.orders["best"] == ["b", "a"]  # at their best: b 0.95 > a 0.85
    assert stab.orders["0.003"] == ["a", "b"] and stab.tau["0.003"] == -1.0
    assert stab.orders["0.01"] == ["b", "a"] and stab.tau["0.01"] == 1.0
    assert stab.same_winner == pytest.approx(1 / 3)


def test_kendall_tau_by_hand() -> None:
    assert kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    assert kendall_tau(["a", "b", "c"], ["b", "a", "c"]) == pytest.approx(1 / 3)  # 2 of 3 pairs agree
    assert math.isnan(kendall_tau(["a"], ["a"]))


def test_sweep_values_must_be_a_log_grid() -> None:
    assert LRSweep.model_validate({"values": (1e-3, 3e-3)}).values == (1e-3, 3e-3)
    with pytest.raises(ValueError, match="not in lr_sweep.values"):
        LRSweep.model_validate({"values": (1e-3, 1e-2)}).check_shared(3e-3, "budget")


# ---- the ladder's sweep -------------------------------------------------------------------
def tiny_ladder(tmp_path: Path, sweep: list[float] | None) -> LadderConfig:
    raw = {"name": "tiny", "directory": str(tmp_path / "tiny"), "designs": ["q_kv"], "tokens_per_param": [1, 2],
           "seeds": [0, 1], "base": {"context": 32, "d_model": 16, "n_heads": 2, "ffn_dim": 32, "n_layers": 1},
           "sizes": [{"d_model": 16}, {"d_model": 32}], "budget": {"batch_size": 8, "eval_batches": 2, "lr": 3e-3}}
    if sweep is not None:
        raw["lr_sweep"] = {"values": sweep}
    return LadderConfig.model_validate_json(json.dumps(raw))


def test_ladder_sweep_points_budgets_and_order(tmp_path: Path) -> None:
    plain, swept = tiny_ladder(tmp_path, None), tiny_ladder(tmp_path, [1e-3, 3e-3, 1e-2])
    assert "lr_sweep" not in plain.to_json()  # a ladder stored before sweeps existed resumes unchanged
    points = grid(swept)
    assert len(points) == 3 * len(grid(plain)) and len({p.key for p in points}) == len(points)
    assert [p.compute for p in points] == sorted(p.compute for p in points)  # cheapest fidelity first
    assert {point_budget(swept, p).lr for p in points} == {1e-3, 3e-3, 1e-2}
    assert all(point_budget(swept, p).lr == p.lr and "lr" in p.params_dict for p in points)
    assert all(p.lr is None and "lr" not in p.params_dict for p in grid(plain))
    with pytest.raises(ValueError, match="not in lr_sweep.values"):
        tiny_ladder(tmp_path, [1e-3, 1e-2])


def test_ladder_report_gives_the_gap_at_best_and_shared_lr(tmp_path: Path) -> None:
    config = tiny_ladder(tmp_path, [1e-3, 3e-3, 1e-2])
    # the baseline is best at 3e-3 (loss 2.0) and q_kv at 1e-2 (2.05); at 3e-3 q_kv has 2.2
    loss = {("qkv", 1e-3): 2.3, ("qkv", 3e-3): 2.0, ("qkv", 1e-2): 2.4,
            ("q_kv", 1e-3): 2.5, ("q_kv", 3e-3): 2.2, ("q_kv", 1e-2): 2.05}
    rows = [{"design": p.design, "baseline": p.baseline, "size": p.size, "tokens_per_param": p.tokens_per_param,
             "seed": p.seed, "lr": p.lr, "compute": p.compute, "state": "complete", "val_loss": loss[(p.design, p.lr)]}
            for p in grid(config)]
    text = sweep_section(config, rows)
    assert "| d16r1 | 1 | 0.003 | 0.01 | +0.2000 / +0.0500 |" in text
    assert "τ" in text and len(shared_lr_rows(config, rows)) == len(rows) // 3


# ---- a study that asks for a sweep ----------------------------------------------------------
def test_a_study_trial_keeps_its_best_learning_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    import nas.train
    from nas.config import load_config
    from nas.trial import run_trial
    from search_spaces import get_space
    from tests.conftest import tiny_study

    path = tmp_path / "study.toml"
    path.write_text(tiny_study(extra="[lr_sweep]\nvalues = [1e-3, 3e-3, 1e-2]\n"))
    config = load_config(path, [f"directory={tmp_path / 'study'}"])
    real = nas.train.train
    seen = []

    def train(spec, corpus, budget, **kw):  # the real training, with a loss that favours lr 1e-2
        seen.append(budget.lr)
        result = real(spec, corpus, budget, **kw)
        return dataclasses.replace(result, val_loss=result.val_loss + (0.0 if budget.lr == 1e-2 else 1.0))

    monkeypatch.setattr(nas.train, "train", train)
    spec = get_space(config.space.name, **config.space.options).sample(
        optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    record = run_trial(spec, config, seed=0)
    assert record.status == "complete" and seen == [1e-3, 3e-3, 1e-2]
    sweep = record.to_dict()["lr_sweep"]
    assert sweep["best_lr"] == 1e-2 and set(sweep["val_loss"]) == {"0.001", "0.003", "0.01"}
    assert record.values["val_loss"] == pytest.approx(sweep["val_loss"]["0.01"])
    with pytest.raises(ValueError, match="not in lr_sweep.values"):
        load_config(path, [f"directory={tmp_path / 'study'}", "budget.lr=0.5"])
    with pytest.raises(ValueError, match="fidelity.scheduler"):
        load_config(path, [f"directory={tmp_path / 'study'}", 'fidelity.scheduler="mo_asha"'])

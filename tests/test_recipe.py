"""The paper's recipe: model options (initialisation, biases, Adam's β₂), a fixed training set
iterated for epochs, and probe-suite reports that read pass-or-fail outcomes honestly."""
from __future__ import annotations

import math
import re
import tomllib

import numpy as np
import pytest
import torch

from nas.model import build_model
from nas.probing import ProbeBudget, parse_suite, run_probe
from nas.probing.outcomes import cells, wilson_interval
from nas.probing.probe import batch_order, mode_baseline
from nas.train import make_optimizer, seeded_model
from objectives.probes.base import ProbeSplit
from search_spaces.spec import ArchSpec, uniform

WIDE = dict(vocab_size=1000, context=16, d_model=256, n_heads=4, ffn_dim=1024)


# ---- model options ------------------------------------------------------------------------
def test_gpt2_initialisation_statistics() -> None:
    model = seeded_model(ArchSpec(**WIDE, layers=uniform(2)), 0)
    weights = dict(model.named_parameters())
    assert weights["tok.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert weights["blocks.0.mix.q.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert weights["blocks.0.mix.o.weight"].std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.05)


def test_torch_default_initialisation_statistics() -> None:
    model = seeded_model(ArchSpec(**WIDE, init="torch_default", tie_embeddings=False, layers=uniform(2)), 0)
    weights = dict(model.named_parameters())
    assert weights["tok.weight"].std().item() == pytest.approx(1.0, rel=0.05)  # nn.Embedding: N(0, 1)
    # nn.Linear: kaiming-uniform with a = √5, i.e. U(±1/√fan_in), std 1/√(3·fan_in)
    for name in ("blocks.0.mix.q.weight", "blocks.0.mix.o.weight", "head.weight"):
        assert weights[name].std().item() == pytest.approx(1 / math.sqrt(3 * 256), rel=0.05), name
    assert weights["blocks.0.mlp.down.weight"].std().item() == pytest.approx(1 / math.sqrt(3 * 1024), rel=0.05)


@pytest.mark.parametrize("tied", [True, False])
def test_biases_are_present_and_used(tied: bool) -> None:
    spec = ArchSpec(vocab_size=10, context=8, d_model=16, n_heads=2, ffn_dim=32, bias=True, head_bias=True,
                    tie_embeddings=tied, layers=uniform(1))
    model = build_model(spec)
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.0.mix.q.bias", "blocks.0.mix.o.bias", "blocks.0.mlp.up.bias"} <= names
    head_bias = model.head_b if tied else model.head.bias
    assert head_bias is not None and head_bias.shape == (10,)
    x = torch.randint(0, 10, (2, 8))
    before = model(x)
    with torch.no_grad():
        head_bias += 1.0  # the logits move by exactly the bias
    assert torch.allclose(model(x), before + 1.0, atol=1e-5)
    without = {n for n, _ in build_model(ArchSpec(vocab_size=10, context=8, d_model=16, n_heads=2, ffn_dim=32,
                                                  tie_embeddings=tied, layers=uniform(1))).named_parameters()}
    assert not any(n.endswith("bias") and ("mix" in n or "mlp" in n or n.startswith("head")) for n in without)


def test_new_options_keep_older_designs_json_and_hash() -> None:
    spec = ArchSpec(layers=uniform(2))
    assert "init" not in spec.to_dict() and "head_bias" not in spec.to_dict()
    other = ArchSpec(init="torch_default", head_bias=True, layers=uniform(2))
    assert ArchSpec.from_json(other.to_json()) == other and other.hash != spec.hash
    with pytest.raises(ValueError, match="init"):
        ArchSpec(init="xavier", layers=uniform(1))


def test_beta2_reaches_the_optimiser() -> None:
    model = build_model(ArchSpec(vocab_size=10, context=8, d_model=16, n_heads=2, ffn_dim=32, layers=uniform(1)))
    default = make_optimizer(model, ProbeBudget(), torch.device("cpu"))
    paper = make_optimizer(model, ProbeBudget(beta2=0.999), torch.device("cpu"))
    assert all(g["betas"] == (0.9, 0.95) for g in default.param_groups)
    assert all(g["betas"] == (0.9, 0.999) for g in paper.param_groups)
    with pytest.raises(ValueError, match="beta2"):
        ProbeBudget(beta2=1.0)


# ---- a fixed training set, iterated for epochs ----------------------------------------------
def test_every_example_once_per_epoch_deterministic_per_seed() -> None:
    budget = ProbeBudget(n_train=1000, batch_size=128, epochs=3)
    order = batch_order(1000, budget, seed=7)
    assert budget.steps_per_epoch == 8 and budget.total_steps == 24 and len(order) == 24
    for epoch in range(3):
        rows = np.concatenate(order[epoch * 8:(epoch + 1) * 8])
        assert sorted(rows.tolist()) == list(range(1000))  # each example exactly once
    assert [len(b) for b in order[:8]] == [128] * 7 + [104]
    again = batch_order(1000, budget, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(order, again, strict=True))
    other = batch_order(1000, budget, seed=8)
    assert not np.array_equal(order[0], other[0])
    assert not np.array_equal(order[0], order[8])  # a fresh shuffle each epoch


def test_epoch_budget_errors() -> None:
    with pytest.raises(ValueError, match="n_train"):
        ProbeBudget(epochs=2)
    with pytest.raises(ValueError, match="eval_epochs"):
        ProbeBudget(epochs=2, n_train=100, eval_epochs=(2,))
    with pytest.raises(ValueError, match="eval_epochs needs epochs"):
        ProbeBudget(eval_epochs=(1,))


def test_probe_run_scores_each_epoch() -> None:
    spec = ArchSpec(vocab_size=10, context=8, d_model=16, n_heads=2, ffn_dim=32, pos="learned", layers=uniform(1))
    budget = ProbeBudget(n_train=64, batch_size=16, epochs=3, eval_epochs=(1, 2), n_test=32)
    out = run_probe(spec, "copy", budget=budget, params={"length": 8})
    assert out["train_steps"] == 12 and set(out["accuracy_by_epoch"]) == {"1", "2", "3"}
    assert out["accuracy_by_epoch"]["3"] == out["accuracy"] and out["n_train"] == 64
    assert 0 < out["mode_baseline"] < 1


def test_mode_baseline_by_hand() -> None:
    x = np.array([[1, 1, 2, 3], [4, 4, 4, 0]])
    split = ProbeSplit(inputs=x, targets=x[:, ::-1].copy(), mask=np.ones(x.shape, dtype=bool))
    # row 0 answers 1 everywhere: right at 2 of 4 positions; row 1 answers 4: right at 3 of 4
    assert mode_baseline(split) == pytest.approx(5 / 8)


# ---- reading pass-or-fail outcomes --------------------------------------------------------
def test_wilson_interval_against_hand_worked_cases() -> None:
    # 3 of 6, z = 1.96: centre (0.5 + 3.8415/12) / (1 + 3.8415/6) = 0.5;
    # half = 1.96 / 1.6403 · √(0.25/6 + 3.8415/144) = 1.1949 · 0.2614 = 0.3124
    low, high = wilson_interval(3, 6)
    assert (low, high) == (pytest.approx(0.1876, abs=1e-4), pytest.approx(0.8124, abs=1e-4))
    # 0 of 6: the lower end is 0, the upper z²/n / (1 + z²/n) = 0.6403 / 1.6403 = 0.3903
    assert wilson_interval(0, 6) == (0.0, pytest.approx(0.3903, abs=1e-4))
    assert wilson_interval(6, 6) == (pytest.approx(1 - 0.3903, abs=1e-4), 1.0)
    with pytest.raises(ValueError):
        wilson_interval(7, 6)


def test_cells_give_success_fraction_mean_and_plateau() -> None:
    accs = [1.0, 0.99, 0.22, 0.24, 1.0, 0.97]
    rows = [{"variant": "q_kv", "task": "reverse", "d_model": 32, "n_layers": 2, "n_heads": 2, "length": 16,
             "seed": i, "metric": "accuracy", "value": a, "mode_baseline": 0.2,
             "accuracy_by_epoch": {"1": 0.2, "4": a}} for i, a in enumerate(accs)]
    (cell,) = cells(rows, threshold=0.95)
    assert (cell.solved, cell.n) == (4, 6) and cell.mean == pytest.approx(np.mean(accs))
    assert cell.plateau == pytest.approx(0.23) and cell.baseline == pytest.approx(0.2)
    assert cell.by_epoch == {"1": (pytest.approx(0.2), 0.0), "4": (pytest.approx(np.mean(accs)), pytest.approx(4 / 6))}
    assert (cell.low, cell.high) == wilson_interval(4, 6)


SUITE = """
kind = "probe_suite"
name = "recipe"
variants = ["qkv", "q_kv"]
seeds = 2
not_run = [{ length = 12 }]
not_run_command = "qkvnas probe-suite --preset big --device cuda"
[seeds_by_length]
"8" = 1
[published]
label = "their Table 2"
values = { qkv = 0.851 }
[model]
pos = "learned"
bias = true
head_bias = true
tie_embeddings = false
init = "torch_default"
[grid]
d_model = [16]
n_layers = [1]
n_heads = [2]
length = [6, 8, 12]
[budget]
epochs = 2
eval_epochs = [1]
n_train = 32
batch_size = 16
n_test = 16
lr = 1e-3
beta2 = 0.999
[tasks.copy]
[tasks.swap]
"""


def test_suite_report_reads_cells_budgets_and_the_papers_figures(tmp_path) -> None:
    from nas.probing import run_suite

    config = parse_suite(tomllib.loads(SUITE))
    assert [p["length"] for p in config.run_points()] == [6, 8]
    result = run_suite(config, tmp_path, log=lambda line: None)
    assert len(result["runs"]) == 2 * 2 * 2 + 2 * 2 * 1  # length 6: 2 seeds, length 8: 1 seed
    text = result["markdown"]
    for piece in ("## Solved per cell", "### copy", "## Accuracy against budget", "| variant | epoch 1 | epoch 2 |",
                  "grand mean", "paper (published)", "their Table 2", "| 0.851 |", "## Not run here",
                  "d16 L1 h2 len12", "qkvnas probe-suite --preset big --device cuda",
                  # The means cover the points run, not the grid named; the mode answer is per length.
                  "over the 2 grid points run here", "the 1 not run are listed", "at length 6, "):
        assert piece in text, piece
    assert re.search(r"### copy \(most-frequent-digit answer: 0\.\d\d at length 6, 0\.\d\d at length 8\)", text)
    assert (tmp_path / "cells.parquet").exists()


@pytest.mark.parametrize("change, message", [
    ({"grid": {"d_model": [], "n_layers": [1], "n_heads": [2]}}, "empty"),
    ({"grid": {"d_model": [16, 16], "n_layers": [1], "n_heads": [2]}}, "repeats a value"),
    ({"grid": {"d_model": "16", "n_layers": [1], "n_heads": [2]}}, "d_model"),
    ({"seeds_by_length": {"9": 2}}, "seeds_by_length"),
    ({"not_run": [{"width": 16}]}, "not_run entry"),
    ({"not_run": [{"d_model": 16}]}, "no grid point"),
    ({"lr_sweep": {"values": []}}, "at least two"),
    ({"lr_sweep": {"values": [1e-3]}}, "at least two"),
    ({"lr_sweep": {"values": [3e-3, 1e-3]}}, "ascending"),
    ({"lr_sweep": {"values": [1e-3, 1e-3, 3e-3]}}, "distinct"),
    ({"lr_sweep": {"values": [-1e-3, 1e-3]}}, "greater than 0"),
    ({"lr_sweep": {"values": [3e-4, 3e-3]}}, "not in lr_sweep.values"),
    ({"budget": {"epochs": 2, "steps": 10, "n_train": 32}}, "steps or epochs, not both"),
    ({"budget": {"epochs": 2}}, "n_train"),
])
def test_malformed_sweeps_and_grids_say_what_to_change(change: dict, message: str) -> None:
    raw = tomllib.loads(SUITE) | change
    with pytest.raises(ValueError, match=message) as err:
        parse_suite(raw)
    assert "\n" not in str(err.value)


def test_shipped_paper_presets_follow_the_paper() -> None:
    from nas.probing import load_suite

    faithful = load_suite("paper_synthetic")
    assert faithful.variants == ("qkv", "q_kv", "qk_v", "qkv_single")
    b = faithful.budget
    assert (b.lr, b.weight_decay, b.grad_clip, b.warmup_frac, b.min_lr_frac, b.batch_size, b.beta2) == (
        1e-3, 0.0, 5.0, 0.05, 0.0, 128, 0.999)
    assert (b.n_train, b.n_test, b.epochs, b.eval_epochs) == (10_000, 2_000, 4, (1, 2))
    m = faithful.model
    assert (m.pos, m.bias, m.head_bias, m.tie_embeddings, m.init, m.activation, m.ffn_mult) == (
        "learned", True, True, False, "torch_default", "gelu", 4.0)
    assert faithful.seeds == 6 and faithful.seeds_at({"length": 64}) == 3
    points = faithful.run_points()
    assert {p["length"] for p in points} == {16, 64} and {p["d_model"] for p in points} == {32, 64}
    assert len(points) == 16 and len(faithful.grid_points()) == 36
    assert {e.label for e in faithful.tasks} == {"reverse", "swap", "sort", "sub", "copy"}
    assert faithful.published is not None and faithful.published.values["qkv_single"] == 0.780
    small = load_suite("paper_synthetic_small")
    assert small.budget == faithful.budget and small.model == faithful.model and len(small.run_points()) == 4
    # The learning-rate presets claim their shared-rate runs repeat paper_synthetic's: same recipe,
    # a subset of its points, and the paper's rate among the swept ones.
    for name in ("paper_synthetic_lr", "paper_synthetic_lr_len64"):
        lr = load_suite(name)
        assert lr.budget == faithful.budget and lr.model == faithful.model and lr.variants == faithful.variants
        assert all(p in points for p in lr.run_points()) and lr.lr_sweep is not None and 1e-3 in lr.lr_sweep.values
        assert all(lr.seeds_at(p) == faithful.seeds_at(p) for p in lr.run_points())


def test_suite_sweep_reports_each_design_at_its_best_learning_rate(tmp_path) -> None:
    from nas.probing import run_suite

    raw = tomllib.loads(SUITE) | {"lr_sweep": {"values": [1e-3, 1e-2]}, "not_run": [{"length": 8}, {"length": 12}]}
    config = parse_suite(raw)
    result = run_suite(config, tmp_path, log=lambda line: None)
    assert len(result["runs"]) == 2 * 2 * 2 * 2  # designs × tasks × seeds × learning rates
    assert {r["lr"] for r in result["runs"]} == {1e-3, 1e-2}
    assert len(result["table"]) == 2 * 2 and all(row["n"] == 2 for row in result["table"])  # the shared lr only
    text = result["markdown"]
    assert "## Learning-rate sweep" in text and "Kendall's τ" in text and "(shared " in text
    qkv = next(line for line in text.splitlines() if line.startswith("| qkv |") and "@" in line)
    assert qkv.count("@ 0.01") + qkv.count("@ 0.001") == 2  # one best lr per task


# ---- the results kept with the code --------------------------------------------------------
@pytest.mark.parametrize("preset", ["paper_synthetic", "paper_synthetic_lr", "paper_synthetic_lr_len64"])
def test_kept_results_rebuild_from_their_storage(preset: str, tmp_path) -> None:
    """results/PRESET/table.md is what `--report` writes from results/PRESET/suite.db: the tables
    the README quotes stay true to the storage, and a change to the report shows here first."""
    import shutil
    from pathlib import Path

    from nas.cli import main

    kept = Path(__file__).resolve().parent.parent / "results" / preset
    shutil.copy(kept / "suite.db", tmp_path / "suite.db")  # a copy: --report must not touch the kept file
    assert main(["probe-suite", "--preset", preset, "--out", str(tmp_path), "--report"]) == 0
    rebuilt = (tmp_path / "table.md").read_text().splitlines()
    expected = (kept / "table.md").read_text().splitlines()
    # The last line gives the wall time of the invocation that wrote it; everything else must match.
    assert rebuilt[:-1] == expected[:-1]
    assert rebuilt[-1].split("; this invocation")[0] == expected[-1].split("; this invocation")[0]

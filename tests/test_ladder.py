"""Scaling ladders: spec scaling keeps the pattern and the exact parameter counts; the ladder
file is validated; a resumed ladder never re-runs a finished point; a tiny real ladder runs
through the engine and produces its report."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from nas import cli
from nas.costs import costs
from nas.ladder import (
    ATTR_POINT, LadderConfig, grid, load_ladder_config, non_embedding_params, open_ladder, queue_pending,
    resolve_designs, result_rows, run_ladder, suggest_point, trial_key,
)
from nas.model import build_model
from nas.study import recover_stale_trials, tell_record
from search_spaces.scaling import scale_spec
from search_spaces.spec import ArchSpec, uniform
from search_spaces.variants import variant

BASE = ArchSpec(vocab_size=64, context=32, d_model=32, n_heads=4, ffn_dim=64, layers=uniform(4))
PATTERNS = ["qkv", "q_kv+gqa2", "qkv+mqa", "qkv+cla2", "q_kv+cla2+mqa", "qkv+lowrank8", "qkv+latent16",
            "q_kv+latent8+gqa2", "qkv+noattn2", "qk_v+2d", "qkv+window5+dconv", "mixer"]


# ---- scaling a spec ---------------------------------------------------------------------
@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("d_model,repeats", [(32, 2), (64, 1), (48, 3)])
def test_scaling_keeps_the_layer_pattern(name: str, d_model: int, repeats: int) -> None:
    spec = variant(name, base=BASE)
    big = scale_spec(spec, d_model=d_model, repeats=repeats)
    f = d_model / spec.d_model
    assert big.n_layers == repeats * spec.n_layers and big.head_dim == spec.head_dim
    assert big.ffn_dim == round(spec.ffn_dim * f) and big.context == spec.context
    for i, layer in enumerate(big.layers):
        src, copy = spec.layers[i % spec.n_layers], i // spec.n_layers
        for same in ("attn", "proj", "asym_pos", "dconv", "window"):
            assert getattr(layer, same) == getattr(src, same), (i, same)
        if src.attn != "attention":
            continue
        if src.n_kv_heads == 1:
            assert layer.n_kv_heads == 1  # MQA stays MQA
        else:
            assert big.n_heads // layer.n_kv_heads == spec.n_heads // src.n_kv_heads  # K/V sharing ratio kept
        assert layer.kv_from == (None if src.kv_from is None else src.kv_from + copy * spec.n_layers)
        for rank in ("qk_rank", "v_rank", "kv_latent"):
            if getattr(src, rank) is not None:
                assert getattr(layer, rank) == round(getattr(src, rank) * f)


@pytest.mark.parametrize("name", PATTERNS)
def test_scaled_parameter_counts_match_costs_and_the_built_model(name: str) -> None:
    big = scale_spec(variant(name, base=BASE), d_model=48, repeats=2)
    model = build_model(big)
    assert costs(big).params == sum(p.numel() for p in model.parameters())
    assert non_embedding_params(big) == costs(big).params - BASE.vocab_size * 48


def test_scaled_parameter_counts_by_hand() -> None:
    # Pre-LN blocks without biases, tied embeddings, RoPE: per layer 4·d² (qkv) or 3·d² (q_kv)
    # attention, 2·d·ffn MLP, two LayerNorm gains; one final LayerNorm; the embedding 256·d.
    base = ArchSpec(vocab_size=256, context=64, d_model=32, n_heads=4, ffn_dim=128, layers=uniform(1))
    d, ffn = 64, 256
    qkv = scale_spec(variant("qkv", base=base), d_model=d, repeats=2)
    q_kv = scale_spec(variant("q_kv", base=base), d_model=d, repeats=2)
    assert (qkv.n_heads, qkv.ffn_dim, qkv.n_layers) == (8, ffn, 2)
    assert costs(qkv).params == 256 * d + d + 2 * (4 * d * d + 2 * d * ffn + 2 * d) == 115_008
    assert non_embedding_params(qkv) == 98_624
    assert costs(q_kv).params == 115_008 - 2 * d * d


def test_scaling_errors_say_what_to_change() -> None:
    spec = variant("qkv+gqa2", base=BASE)  # head dim 8, two query heads per K/V head
    with pytest.raises(ValueError, match="multiple of 8"):
        scale_spec(spec, d_model=36)
    with pytest.raises(ValueError, match="multiple of 2"):
        scale_spec(spec, d_model=24)  # 3 heads cannot keep pairs of query heads per K/V head


# ---- the ladder file --------------------------------------------------------------------
def tiny_config(tmp_path: Path, **changes: object) -> LadderConfig:
    raw = {
        "name": "tiny", "directory": str(tmp_path / "tiny"), "designs": ["q_kv"],
        "tokens_per_param": [1, 2], "seeds": [0, 1],
        "base": {"context": 32, "d_model": 16, "n_heads": 2, "ffn_dim": 32, "n_layers": 1},
        "sizes": [{"d_model": 16}, {"d_model": 32}],
        "budget": {"batch_size": 8, "eval_batches": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
    } | changes
    return LadderConfig.model_validate_json(json.dumps(raw))


def test_preset_is_a_small_but_complete_ladder() -> None:
    config = load_ladder_config("ladder_small")
    designs = resolve_designs(config)
    points = grid(config)
    assert designs[0].baseline and designs[0].name == "qkv" and len(designs) >= 3
    assert len(config.sizes) >= 3 and len(config.tokens_per_param) >= 3 and len(config.seeds) >= 2
    assert min(config.tokens_per_param) < 20 < max(config.tokens_per_param)
    assert len(points) == len(designs) * len(config.sizes) * len(config.tokens_per_param) * len(config.seeds)
    assert len({p.key for p in points}) == len(points)
    # Every design at a size trains on the same tokens: the gaps are paired.
    by_cell: dict[tuple, set[int]] = {}
    for p in points:
        by_cell.setdefault((p.size, p.tokens_per_param), set()).add(p.tokens)
    assert all(len(tokens) == 1 for tokens in by_cell.values())


@pytest.mark.parametrize("override,message", [
    ("budget.lrr=1", "budget.lrr: unknown key; known keys are ['batch_size'"),
    ("sizes=[{d_model=32, rep=2}, {d_model=64}]", "sizes[0].rep: unknown key; known keys are ['d_model', 'repeats']"),
    ("extra=1", "extra: unknown key; known keys are ["),
    ("tokens_per_param=[0.1, 1]", "a run needs at least 8: raise the ratio"),
    ("designs=['q_kv+gqa3']", "designs[0]: variant 'q_kv+gqa3'"),
    ("seeds=[0]", "seeds: [0]: give two or more different seeds"),
    ("sizes=[{d_model=36}, {d_model=64}]", "use a multiple of 8"),
    ("designs=['qkv']", "is the same model as 'qkv'"),
])
def test_ladder_file_errors_name_the_key_and_the_fix(override: str, message: str) -> None:
    with pytest.raises(ValueError, match="ladder_small.toml: ") as err:
        load_ladder_config("ladder_small", [override])
    assert message in str(err.value)


def test_cli_reports_a_bad_ladder_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndesigns = ["q_kv"]\ntokens_per_param = [2, 8]\nsizes = [{d_model = 32}, {d_model = 64}]\nseedz = [0, 1]\n')
    assert cli.main(["ladder", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qkvnas ladder: error: ") and "seedz: unknown key" in err and "\n" not in err


def test_designs_from_a_study_export(tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "specs").mkdir(parents=True)
    a = ArchSpec(vocab_size=256, context=32, d_model=32, n_heads=4, ffn_dim=64, layers=uniform(2, proj="q_kv", n_kv_heads=2))
    b = dataclasses.replace(a, layers=uniform(2, proj="qkv", n_kv_heads=1))
    off_front = dataclasses.replace(a, layers=uniform(2, proj="qkv_single"))
    for spec in (a, b, off_front):
        (export / "specs" / f"{spec.hash}.json").write_text(spec.to_json())
    pq.write_table(pa.table({"spec_hash": [b.hash, a.hash]}), export / "pareto.parquet")
    config = tiny_config(tmp_path, designs=[], base=None, from_export=str(export),
                         sizes=[{"d_model": 32}, {"d_model": 64}], tokens_per_param=[4, 8])
    designs = resolve_designs(config)
    assert [d.name for d in designs] == ["qkv", f"pareto-{b.hash}", f"pareto-{a.hash}"]
    assert designs[0].spec == variant("qkv", base=a)  # the baseline takes the export's shape
    assert len(grid(config)) == 3 * 2 * 2 * 2
    alone = load_ladder_config(from_export=str(export))  # `qkvnas ladder --from-export DIR`: the preset's grid
    assert alone.name == "ladder-export" and [d.name for d in resolve_designs(alone)][1:] == [d.name for d in designs[1:]]


# ---- resume: finished points are never run again ----------------------------------------
def _finish(study: optuna.Study, trial: optuna.Trial, *, loss: float | None, error: str | None = None) -> None:
    record = {"status": "complete" if loss is not None else "failed", "reason": error, "values": {"val_loss": loss},
              "constraints": {}, "spec_json": "{}", "spec_hash": "x", "costs": {}, "error": error}
    if loss is None:
        record["values"] = {}
    tell_record(study, trial, record)


def test_killed_ladder_resumes_without_rerunning_finished_points(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    points = grid(config)
    by_key = {p.key: p for p in points}
    study = open_ladder(config)
    assert len(queue_pending(study, points)) == len(points)

    def next_point() -> tuple[optuna.Trial, tuple]:
        trial = study.ask()  # the engine pops enqueued trials in order
        return trial, suggest_point(trial, by_key).key

    done, done_key = next_point()
    _finish(study, done, loss=3.0)
    diverged, diverged_key = next_point()
    _finish(study, diverged, loss=None)  # failed on its own (e.g. diverged): a result
    errored, _ = next_point()
    _finish(study, errored, loss=None, error="Traceback ... RuntimeError")  # a bug or OOM: tried again
    killed, _ = next_point()  # left RUNNING, as by a SIGKILL of the worker
    finished_keys = {done_key, diverged_key}

    # Resume: the next run fails the stale trial, requeues it and every unfinished point once.
    study = open_ladder(config)
    assert recover_stale_trials(study, all_running=True) == [killed.number]
    queued = queue_pending(study, points)
    assert {p.key for p in queued} == {p.key for p in points} - finished_keys
    assert len(queued) == len(points) - 2
    waiting = [trial_key(t) for t in study.get_trials(states=(TrialState.WAITING,))]
    assert len(waiting) == len(set(waiting)) == len(points) - 2  # no point queued twice
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert queue_pending(study, points) == queued  # idempotent


def test_results_keep_one_row_per_point_preferring_the_completed_retry(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    points = grid(config)
    by_key = {p.key: p for p in points}
    study = open_ladder(config)
    queue_pending(study, points[:1])
    first = study.ask()
    point = suggest_point(first, by_key)
    for key, value in {"design": point.design, "baseline": point.baseline, "design_id": point.design_id,
                       "size": point.size, "d_model": point.d_model, "repeats": point.repeats,
                       "tokens_per_param": point.tokens_per_param, "seed": point.seed, "tokens": point.tokens,
                       "params": point.params, "params_nonembedding": point.params_nonembedding,
                       ATTR_POINT: point.label}.items():
        first.set_user_attr(key, value)
    _finish(study, first, loss=None, error="Traceback ... MemoryError")
    retry = queue_pending(study, points[:1])
    assert [p.key for p in retry] == [point.key]
    second = study.ask()
    for key, value in study.trials[first.number].user_attrs.items():
        if key in ("design", "baseline", "design_id", "size", "d_model", "repeats", "tokens_per_param", "seed",
                   "tokens", "params", "params_nonembedding", ATTR_POINT):
            second.set_user_attr(key, value)
    _finish(study, second, loss=2.5)
    rows = result_rows(study)
    assert len(rows) == 1 and rows[0]["state"] == "complete" and rows[0]["val_loss"] == 2.5


# ---- a real tiny ladder, end to end -------------------------------------------------------
@pytest.mark.slow
def test_tiny_ladder_runs_through_the_engine_and_reports(tmp_path: Path) -> None:
    from nas.ladder.report import write_report

    config = tiny_config(tmp_path)
    run = run_ladder(config, progress=False)
    assert (run.points, run.ran, run.already_done, run.failed) == (16, 16, 0, 0)
    table = pq.read_table(run.results)
    assert table.num_rows == 16 and set(table.column("state").to_pylist()) == {"complete"}
    row = table.slice(0, 1).to_pylist()[0]
    assert row["val_loss"] > 0 and row["train_tokens_per_s"] > 0 and row["curve_val_loss"][-1] == row["val_loss"]
    assert row["tokens"] == row["steps"] * 8 * 32 and row["kv_cache_bytes_per_token"] > 0

    again = run_ladder(config, progress=False)  # everything is done: nothing runs again
    assert (again.ran, again.already_done) == (0, 16)

    report = write_report(config, n_boot=10)
    text = report.read_text()
    for heading in ("Gap to the baseline per size and budget", "widen or shrink", "Extrapolated gap",
                    "Fitted laws", "Iso-FLOP optimum", "Quality against KV-cache memory"):
        assert heading in text
    assert "| d16r1 | 2,096 | 1,840 | 1 |" in text  # a gap row: size, N base, N design, budget
    for png in ("loss_vs_compute.png", "gap_vs_scale.png", "kv_front.png"):
        assert (report.parent / png).stat().st_size > 10_000 and f"]({png})" in text


# ---- the analysis behind the report, on rows from a known law -----------------------------
def synthetic_rows(config: LadderConfig, gap: float, noise: float = 0.002) -> list[dict]:
    """Result rows as the ladder writes them, with losses from a Chinchilla-like law; the
    designs other than the baseline are worse by ``gap`` nats at every point."""
    import numpy as np

    from nas.ladder.scaling import Law

    law = Law(E=1.5, A=40.0, alpha=0.3, B=60.0, beta=0.3)
    rng = np.random.default_rng(0)
    points = grid(config)
    base_n = {p.size: p.params_nonembedding for p in points if p.baseline}
    rows = []
    for i, p in enumerate(points):  # the law at the baseline's N: the gap is the design's alone
        loss = float(law.loss(base_n[p.size], p.tokens)) + (0 if p.baseline else gap) + rng.normal(0, noise)
        rows.append({
            "trial": i, "state": "complete", "reason": None, "point": p.label, "design": p.design,
            "baseline": p.baseline, "design_id": p.design_id, "size": p.size, "d_model": p.d_model,
            "repeats": p.repeats, "tokens_per_param": p.tokens_per_param, "seed": p.seed, "tokens": p.tokens,
            "params": p.params, "params_nonembedding": p.params_nonembedding, "compute": p.compute, "val_loss": loss,
            "kv_cache_bytes_per_token": costs(ArchSpec.from_json(p.spec_json)).kv_cache_bytes_per_token,
            "train_tokens_per_s": 1e4, "train_wall_s": 1.0, "device": "cpu", "device_name": "test", "threads": 1,
            "torch": "x",
        })
    return rows


def test_analysis_finds_a_constant_gap_and_no_trend(tmp_path: Path) -> None:
    from nas.ladder.report import analyse, markdown, plot_gaps, plot_kv_front, plot_loss_vs_compute

    config = load_ladder_config("ladder_small", [f"directory='{tmp_path}'"])
    a = analyse(config, synthetic_rows(config, gap=0.05), n_boot=10)
    assert a.baseline == "qkv" and set(a.gaps) == {"q_kv", "q_kv+gqa2"}
    for g in a.gaps.values():
        assert len(g.cells) == 9 and all(cell.gap.gap.excludes_zero() for cell in g.cells)
        covered = sum(cell.gap.gap.lo < 0.05 < cell.gap.gap.hi for cell in g.cells)
        assert covered >= 7, f"95% intervals cover the true gap in {covered} of 9 cells"
        assert g.mean_gap == pytest.approx(0.05, abs=0.002)
        assert g.trend.direction("N", g.mean_gap) == "flat (CI covers 0)"
        assert g.extrapolated_trend.lo < 0.05 < g.extrapolated_trend.hi
    plots = {"compute": plot_loss_vs_compute(a, tmp_path / "c.png"), "gap": plot_gaps(a, tmp_path / "g.png"),
             "kv": plot_kv_front(a, tmp_path / "k.png")}
    text = markdown(a, plots)
    assert "| d32r1 | 12,384 | 11,360 | 2 | 24,576 | +0.04" in text  # +0.046 at this cell, from seed noise
    # KV bytes/token at d48r2 (6 heads of 8, 2 layers, bf16): K and V, K only, K only in 3 groups.
    for design, kv in (("qkv", 384), ("q_kv", 192), ("q_kv+gqa2", 96)):
        assert f"| d48r2 | {design} | {kv} |" in text


def test_ladder_budget_defaults_are_the_train_budgets():
    from nas.ladder import LadderBudget
    from nas.train import TrainBudget

    assert LadderBudget().train_budget(tokens=1000, seed=3) == TrainBudget(tokens=1000, seed=3)

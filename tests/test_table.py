"""Tabulating a finite space: enumeration, the table file, the table job through the engine, and
a live study agreeing with a replay of the same sampler and seed on the table."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nas import engine
from nas.bench.config import TableConfig, load_table_config
from nas.bench.schema import COST_OBJECTIVES, META_KEY, read_table
from nas.bench.table import run_table
from nas.config import load_config
from nas.config.base import validate
from nas.study.job import StudyJob
from search_spaces import FixedChoices, enumerate_designs, get_space

TINY_BASE = {"context": 32, "d_model": 32, "n_heads": 4, "ffn_dim": 64, "n_layers": 1}


@pytest.mark.parametrize("name, options, count", [
    ("paper", {}, 12), ("per_layer", {}, 144), ("per_layer", {"base": {"n_layers": 3}}, 1728),
    ("paper", {"projs": ["qkv", "q_kv"], "kv_sharing": ["mha", "mqa"]}, 4),
])
def test_finite_spaces_list_every_design_once(name, options, count) -> None:
    designs = enumerate_designs(get_space(name, **options))
    assert len(designs) == count == len({spec.hash for _, spec in designs})
    params, spec = designs[-1]
    assert get_space(name, **options).sample(FixedChoices(params)) == spec  # the params rebuild the design


def test_two_parameter_choices_of_one_model_are_one_design() -> None:
    # With 2 heads, gqa2 falls back to 1 K/V head (kv_heads_for): the same model as mqa.
    designs = enumerate_designs(get_space("paper", base={"n_heads": 2, "d_model": 32, "ffn_dim": 64}))
    assert len(designs) == 4 * 2


def test_an_infinite_space_cannot_be_tabulated() -> None:
    with pytest.raises(ValueError, match="not finite"):
        enumerate_designs(get_space("full"))
    with pytest.raises(ValueError, match="space.*not finite"):
        validate(TableConfig, tiny_raw(space={"name": "full"}), "t.toml")


def tiny_raw(**changes) -> dict:
    raw = {"kind": "table", "name": "tiny", "objectives": ["val_loss", "kv_cache_bytes_per_token"], "seeds": [0],
           "space": {"name": "paper", "options": {"base": TINY_BASE, "projs": ["qkv", "q_kv"], "kv_sharing": ["mha", "mqa"]}},
           "budget": {"tokens": 8 * 32 * 16, "batch_size": 8, "eval_batches": 2}}
    return raw | changes


@pytest.mark.parametrize("changes, message", [
    ({"objectives": ["kv_cache_bytes_per_token", "params"]}, "val_loss"),
    ({"seeds": []}, "seeds"),
    ({"budget": {"tokens": 8 * 32 * 4, "batch_size": 8}}, "at least 8"),
    ({"objectives": ["val_loss", "nope"]}, "nope"),
])
def test_bad_table_files_name_the_key(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        validate(TableConfig, tiny_raw(**changes), "t.toml")


def test_shipped_table_presets() -> None:
    quick, paper = load_table_config("table_quick"), load_table_config("table_paper")
    assert len(quick.designs()) == 144 and len(quick.seeds) >= 2
    assert len(paper.designs()) == 12 and len(paper.seeds) == 3
    study = load_config("quick")  # the quick study's space, model and budget
    assert quick.space == study.space and quick.budget.tokens == study.budget.tokens


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("table")
    config = validate(TableConfig, tiny_raw(directory=str(root / "tiny"), seeds=[0, 1]), "tiny")
    run = run_table(config, executor="local", progress=False)
    assert (run.runs, run.complete, run.failed) == (8, 8, 0)
    again = run_table(config, executor="local", progress=False)  # everything done: nothing runs again
    assert again.engine.finished == 0 and again.runs == 8
    return run.table


def test_the_table_file_round_trips(tiny_table: Path) -> None:
    schema = pq.read_schema(tiny_table)
    meta = json.loads(schema.metadata[META_KEY])
    assert meta["designs"] == 4 and meta["seeds"] == [0, 1] and meta["units"]["val_loss"] == "nats/token"
    assert set(COST_OBJECTIVES) <= set(meta["objectives"]) and "val_loss" in schema.names
    table = read_table(tiny_table.parent)  # the folder works too
    assert len(table.rows) == 8 and len(table.by_hash) == 4
    curves = {tuple(r["curve_tokens"]) for r in table.rows}
    assert len(curves) == 1 and len(next(iter(curves))) >= 8  # the same evaluation points for every run
    row = table.rows[0]
    assert row["curve_val_loss"][-1] == pytest.approx(row["val_loss"]) and row["tokens"] == 8 * 32 * 16
    assert json.loads(row["params_json"]) == {"proj": "qkv", "kv_sharing": "mha"}


def test_a_live_study_and_its_replay_agree(tiny_table: Path, tmp_path: Path) -> None:
    """The same sampler and seed, live (training each design) and replayed on the table: the
    same designs in the same order, and the replay's values are exactly the table's (the live
    study trained them to the same numbers: same budget, same seed, same process)."""
    from nas.bench.hypervolume import true_front_hypervolume  # noqa: F401 - the replay side exists
    from nas.bench.replay import replay_one

    table = read_table(tiny_table)
    study_file = tmp_path / "live.toml"
    study_file.write_text(f"""
name = "live"
directory = "{tmp_path / 'live'}"
objectives = ["val_loss", "kv_cache_bytes_per_token"]
trials = 6
[space]
name = "paper"
[space.options]
projs = ["qkv", "q_kv"]
kv_sharing = ["mha", "mqa"]
[space.options.base]
{chr(10).join(f"{k} = {v}" for k, v in TINY_BASE.items())}
[budget]
tokens = {8 * 32 * 16}
batch_size = 8
eval_batches = 2
[sampler]
name = "random"
seed = 0
""")
    live = engine.run(StudyJob(load_config(study_file)), executor="local", progress=False).study
    live_designs = [t.user_attrs["spec_hash"] for t in live.trials]
    replayed = replay_one(table, sampler="random", seed=0, trials=6, objectives=["val_loss", "kv_cache_bytes_per_token"])
    assert [step.spec_hash for step in replayed.trials] == live_designs
    seed0 = {r["spec_hash"]: r for r in table.rows if r["seed"] == 0}
    for trial in live.trials:
        if "duplicate_of" not in trial.user_attrs:
            assert trial.values[0] == pytest.approx(seed0[trial.user_attrs["spec_hash"]]["val_loss"], rel=1e-6)

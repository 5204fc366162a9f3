"""An export that agrees with itself: the front counted in designs (its trials beside) the same
in the run's summary, the plot, ``qkvnas export`` and pareto.parquet; specs/ holds the front's
designs and specs_all/ every evaluated one; the Parquet files carry their units, directions and
versions, real timestamp and nullable integer types, and null (never inf) for a value never
measured; ``[export] weights = true`` copies the front's trained weights."""
from __future__ import annotations

import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nas.api import run_study
from nas.cli import main
from nas.config import load_config
from nas.export_schema import SCHEMA_VERSION, read_metadata
from nas.study import create_or_load_study, save_config_file
from nas.study.display import front_count, one_per_design
from nas.weights import load_model, qkvnas_version
from tests.conftest import tiny_study

# Two designs at the space's least KV cache (16 bytes/token), each queued twice: one of them is
# on the front with its repeat, so the front has fewer designs than trials.
REPEATED = ({"proj": "q_kv", "kv_sharing": "mqa"}, {"proj": "qkv_single", "kv_sharing": "mqa"})
TOML = tiny_study(name="schema", trials=7, tokens=1024, extra="""[constraints]
max_kv_cache_bytes_per_token = 100
[sampler]
name = "random"
seed = 5
[export]
weights = true
""")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schema")
    (folder / "study.toml").write_text(TOML)
    overrides = [f"directory={folder / 'study'}"]
    config = load_config(folder / "study.toml", overrides)
    study = create_or_load_study(config)
    for params in REPEATED * 2:
        study.enqueue_trial(params)
    shown = io.StringIO()
    result = run_study(folder / "study.toml", overrides, executor="local", out=shown)
    assert not result.interrupted and result.export is not None
    return result, shown.getvalue()


def test_the_front_is_counted_in_designs_everywhere(run, capsys, tmp_path):
    result, shown = run
    front = result.study.best_trials
    text = front_count(front)
    designs = len(one_per_design(front))
    assert designs < len(front) and text == f"{designs} designs ({len(front)} trials)"
    assert f"Pareto front: {text}\n" in shown  # the run's final summary
    assert f"Pareto front ({text}) written to" in result.final_line()
    save_config_file(result.config)
    assert main(["export", str(result.study_dir), "--out", str(tmp_path / "again")]) == 0
    assert f"Pareto front: {text}, of {len(result.study.trials)} trials" in capsys.readouterr().out
    svg = (result.export.out_dir / "pareto.svg").read_text()
    assert f"Pareto front of {text}" in svg  # the plot's title
    pareto = pq.read_table(result.export.pareto).to_pylist()
    assert len(pareto) == len(front) and len({r["spec_hash"] for r in pareto}) == designs


def test_specs_hold_the_front_and_specs_all_every_design(run):
    result, _ = run
    export = result.export
    front = {t.user_attrs["spec_hash"] for t in result.study.best_trials}
    evaluated = {t.user_attrs["spec_hash"] for t in result.study.trials if "spec_hash" in t.user_attrs}
    assert {p.name.removesuffix(".json") for p in (export.out_dir / "specs").iterdir()} == front
    assert {p.name.removesuffix(".json") for p in (export.out_dir / "specs_all").iterdir()} == evaluated
    assert front < evaluated  # the study has designs off the front, which specs/ leaves out


def test_parquet_metadata_types_and_no_inf(run):
    result, _ = run
    meta = read_metadata(result.export.trials)
    assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["version"] == qkvnas_version()
    assert meta["objectives"]["val_loss"] == {"unit": "nats/token", "direction": "minimize",
                                              "description": "validation cross-entropy after the trial's token budget"}
    assert meta["objectives"]["kv_cache_bytes_per_token"]["unit"] == "bytes/token"
    assert meta["units"]["total_s"] == "s"
    table = pq.read_table(result.export.trials)
    schema = table.schema
    assert schema.field("datetime_start").type == pa.timestamp("us", tz="UTC")
    assert schema.field("val_loss").metadata == {b"unit": b"nats/token"}
    for name in ("number", "duplicate_of", "retry_of", "cost_params", "stopped_at_rung"):
        assert schema.field(name).type == pa.int64(), name
    rows = table.to_pylist()
    assert any(r["duplicate_of"] is not None for r in rows) and any(r["duplicate_of"] is None for r in rows)
    for row in rows:
        for name, value in row.items():
            assert not (isinstance(value, float) and not math.isfinite(value)), (name, value)
    infeasible = [r for r in rows if r["feasible"] is False]
    assert infeasible and all(r["val_loss"] is None and r["reason"] for r in infeasible)
    # Two throughputs, two names: the trial's training run is always there.
    assert "measured_train_tokens_per_s" in schema.names and "train_tokens_per_s" not in schema.names
    assert all(r["trained_tokens_per_s"] > 0 for r in rows if r["status"] == "complete")
    assert json.loads((result.export.out_dir / "study.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_the_fronts_weights_are_copied(run):
    result, _ = run
    export = result.export
    front = one_per_design(result.study.best_trials)
    folders = sorted(p.name for p in (export.out_dir / "weights").iterdir())
    assert folders == sorted(f"{t.user_attrs['spec_hash']}-s{result.config.budget.seed}" for t, _ in front)
    pareto = pq.read_table(export.pareto).to_pylist()
    assert {r["weights"] for r in pareto} == {f"weights/{name}" for name in folders}
    saved = load_model(export.out_dir / pareto[0]["weights"])  # rebuilt from the export alone
    assert saved.spec.hash == pareto[0]["spec_hash"]
    assert sum(p.numel() for p in saved.model.parameters()) == pareto[0]["cost_params"]

"""Export: the front agrees with Optuna's, every trial is listed, specs rebuild the models."""
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

import nas.train
from nas.cli import main
from nas.config import load_config
from nas.export import export_study
from nas.model import build_model
from nas.study import create_or_load_study, storage_url, tell_record
from nas.trial import run_trial
from search_spaces import ArchSpec, get_space, uniform
from tests.conftest import tiny_study

TINY = tiny_study(name="exp", objectives=("val_loss", "kv_cache_bytes_per_token", "params"), trials=6, tokens=1024,
                  extra="""[constraints]
max_kv_cache_bytes_per_token = 100
[sampler]
name = "random"
seed = 3
""")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Six real tiny trials (some infeasible), one that raised, one RUNNING, one queued."""
    folder = tmp_path_factory.mktemp("export")
    (folder / "study.toml").write_text(TINY)
    config = load_config(folder / "study.toml", [f"directory={folder / 'study'}"])
    study = create_or_load_study(config)
    space = get_space(config.space.name, **config.space.options)
    for _ in range(6):
        trial = study.ask()
        tell_record(study, trial, run_trial(space.sample(trial), config, seed=0).to_dict())
    real_train = nas.train.train
    try:
        nas.train.train = lambda *a, **k: 1 / 0
        trial = study.ask()
        spec = ArchSpec(vocab_size=256, context=32, d_model=32, n_heads=4, ffn_dim=64, layers=uniform(1, n_kv_heads=1))
        tell_record(study, trial, run_trial(spec, config, seed=0).to_dict())
    finally:
        nas.train.train = real_train
    space.sample(study.ask())  # left RUNNING
    study.enqueue_trial({"proj": "qkv", "kv_sharing": "mha"})
    return study, config


def test_front_agrees_with_optuna(study, tmp_path):
    study, _ = study
    result = export_study(study, tmp_path)
    pareto = pq.read_table(result.pareto).to_pylist()
    assert sorted(r["number"] for r in pareto) == sorted(t.number for t in study.best_trials)
    assert pareto and all(r["feasible"] and r["state"] == "COMPLETE" for r in pareto)
    by_number = {t.number: t for t in study.trials}
    for row in pareto:
        assert [row[n] for n in ("val_loss", "kv_cache_bytes_per_token", "params")] == by_number[row["number"]].values
        assert row["constraint:max_kv_cache_bytes_per_token"] <= 0
        assert row["spec_hash"] == ArchSpec.from_json(row["spec_json"]).hash
        assert row["hw_torch"] and row["total_s"] > 0 and json.loads(row["curve_json"])["points"]


def test_trials_table_lists_every_state(study, tmp_path):
    study, _ = study
    rows = pq.read_table(export_study(study, tmp_path).trials).to_pylist()
    assert [r["number"] for r in rows] == [t.number for t in study.trials]
    assert {r["state"] for r in rows} == {"COMPLETE", "FAIL", "RUNNING", "WAITING"}
    failed = next(r for r in rows if r["state"] == "FAIL")
    assert failed["reason"] == "ZeroDivisionError: division by zero" and failed["val_loss"] is None
    infeasible = [r for r in rows if r["feasible"] is False]
    # Never measured: null, not inf (nor Optuna's finite stand-in); the reason says why.
    assert infeasible and all(r["val_loss"] is None and r["reason"] and not r["on_front"] for r in infeasible)


def test_specs_rebuild_models_with_the_recorded_parameter_count(study, tmp_path):
    study, _ = study
    result = export_study(study, tmp_path)
    rows = {r["spec_hash"]: r for r in pq.read_table(result.trials).to_pylist() if r["spec_hash"]}
    assert len(result.specs_all) == len(rows)
    assert sorted(p.stem for p in result.specs) == sorted({t.user_attrs["spec_hash"] for t in study.best_trials})
    for path in result.specs_all:
        spec = ArchSpec.load(str(path))
        assert spec.hash == path.stem
        model = build_model(spec)
        assert sum(p.numel() for p in model.parameters()) == rows[spec.hash]["cost_params"]


def test_plot_and_atomic_files(study, tmp_path):
    study, _ = study
    export_study(study, tmp_path)
    result = export_study(study, tmp_path)  # again, over the first export
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    summary = json.loads((tmp_path / "study.json").read_text())
    assert summary["objectives"] == ["val_loss", "kv_cache_bytes_per_token", "params"]
    assert summary["counts"]["running"] == 1 and summary["counts"]["queued"] == 1


def test_cli_export_and_status_by_name_and_by_url(study, tmp_path, capsys, monkeypatch):
    study_obj, config = study
    monkeypatch.chdir(config.study_dir.parent)
    from nas.study import save_config_file

    save_config_file(config)
    assert main(["export", str(config.study_dir), "--out", str(tmp_path / "a")]) == 0
    assert "Pareto front: " in capsys.readouterr().out
    assert main(["export", storage_url(config), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "pareto.parquet").is_file()
    assert main(["status", str(config.study_dir)]) == 0
    text = capsys.readouterr().out
    assert "Pareto front" in text and "1 failed" in text and "1 running" in text
    assert main(["status", "no-such-study"]) == 2


def test_front_matches_the_optuna_cli(study):
    study, config = study
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    out = subprocess.run([optuna_cli, "best-trials", "--storage", storage_url(config),
                          "--study-name", study.study_name, "-f", "json"], capture_output=True, text=True, check=True)
    assert sorted(t["number"] for t in json.loads(out.stdout)) == sorted(t.number for t in study.best_trials)
    assert optuna.load_study(study_name=study.study_name, storage=storage_url(config)).metric_names == [
        "val_loss", "kv_cache_bytes_per_token", "params"]

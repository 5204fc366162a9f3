"""The Python API: run_study takes a plain dict, returns a StudyRun (the optuna.Study, the front
and every trial as tables, the paths it always returned), and prints nothing with progress=False."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nas.api import RunSummary, StudyRun, _quiet, resume_study, run_study
from nas.config import StudyConfig, load_config
from tests.conftest import tiny_study

BASE = {"context": 32, "d_model": 32, "n_heads": 4, "ffn_dim": 64, "n_layers": 1}


def study(directory: Path, **changes) -> dict:
    return {"name": "api", "directory": str(directory), "objectives": ["val_loss", "kv_cache_bytes_per_token"],
            "trials": 3, "space": {"name": "paper", "options": {"projs": ["qkv", "q_kv"], "base": BASE}},
            "budget": {"tokens": 2048, "batch_size": 8, "eval_batches": 2},
            "sampler": {"name": "random", "seed": 0}} | changes


def test_model_validate_takes_a_plain_dict(tmp_path: Path) -> None:
    raw = study(tmp_path, fidelity={"scheduler": "mo_asha", "rungs": [0.5]}, measure={"include": ["train"]})
    config = StudyConfig.model_validate(raw)  # lists where the sections keep tuples
    assert config.objectives == ("val_loss", "kv_cache_bytes_per_token") and config.fidelity.rungs == (0.5,)
    assert config == StudyConfig.from_dict(raw) == StudyConfig.from_json(json.dumps(raw))
    path = tmp_path / "s.toml"
    path.write_text(tiny_study())
    assert StudyConfig.model_validate(load_config(path).to_dict()) == load_config(path)
    assert StudyConfig.model_validate(config) is config  # a model is still a model
    assert StudyConfig.from_dict(raw, overrides=["trials=5"]).trials == 5 and raw["trials"] == 3  # raw untouched
    with pytest.raises(ValueError, match=r"^study dict: budget\.tokenz: unknown key; known keys are \["):
        StudyConfig.from_dict(raw | {"budget": {"tokens": 2048, "tokenz": 1}})


def test_run_study_returns_the_study_its_front_and_its_trials(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    run = run_study(study(tmp_path / "api"), ["trials=2"], progress=False, executor="local")
    assert capfd.readouterr() == ("", "")  # progress=False: nothing at all
    assert isinstance(run, StudyRun) and RunSummary is StudyRun
    assert isinstance(run.study, optuna.Study) and run.name == "api" and run.study_dir == tmp_path / "api"
    assert run.counts.done == 2 and run.target == 2 and not run.interrupted
    assert run.storage.startswith("sqlite:///") and run.export is not None and run.export.pareto.is_file()
    front, trials = run.front(), run.trials()
    assert isinstance(front, pd.DataFrame) and isinstance(trials, pd.DataFrame)
    assert list(trials["number"]) == [t.number for t in run.study.trials] and set(trials["state"]) == {"COMPLETE"}
    assert sorted(front["number"]) == sorted(t.number for t in run.study.best_trials)
    assert list(front.columns) == pq.read_table(run.export.pareto).column_names  # the columns of the export
    for _, row in trials.iterrows():
        values = run.study.trials[row["number"]].values
        assert [row["val_loss"], row["kv_cache_bytes_per_token"]] == values
    again = resume_study(str(tmp_path / "api"), ["trials=3"], progress=False, executor="local", export=False)
    assert isinstance(again, StudyRun) and again.counts.done == 3 and again.export is None
    assert len(again.trials()) == 3 and capfd.readouterr() == ("", "")


def test_the_tables_are_arrow_without_pandas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_study(study(tmp_path / "api", trials=1), progress=False, executor="local", export=False)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    front, trials = run.front(), run.trials()
    assert isinstance(front, pa.Table) and isinstance(trials, pa.Table)
    assert trials.num_rows == 1 and "val_loss" in trials.column_names


def test_progress_prints_the_final_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = run_study(study(tmp_path / "api", trials=1), executor="local")
    out = capsys.readouterr().out
    assert f"written to {run.export.pareto}" in out and run.final_line() in out


def test_a_dict_with_a_mistake_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^study dict: trials: input should be greater than or equal to 1"):
        run_study(study(tmp_path, trials=0), progress=False)
    with pytest.raises(ValueError, match="overrides apply to a study file, preset or dict"):
        run_study(StudyConfig.from_dict(study(tmp_path)), ["trials=4"])


def test_quiet_holds_back_library_logs_and_warnings(capfd: pytest.CaptureFixture) -> None:
    tune = logging.getLogger("ray.tune")
    level = tune.level
    handler = logging.StreamHandler(sys.stderr)  # as Ray's own handler writes a trial's error
    logging.getLogger("ray").addHandler(handler)
    try:
        with _quiet(True):
            logging.getLogger("ray.tune.tune").error("Trials did not complete: [t1]")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        assert capfd.readouterr() == ("", "") and tune.level == level
        logging.getLogger("ray.tune.tune").error("shown again")
        assert "shown again" in capfd.readouterr().err
    finally:
        logging.getLogger("ray").removeHandler(handler)


RUN = """
import json, sys
from nas.api import run_study
run = run_study(json.loads(sys.argv[1]), progress=False)
print(json.dumps({"done": run.counts.done, "front": len(run.front())}), file=open(sys.argv[2], "w"))
"""


@pytest.mark.slow
def test_progress_false_prints_nothing_with_ray(tmp_path: Path) -> None:
    """A real local Ray: its start, its trials and its stop write nothing to the terminal."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    config = study(tmp_path / "api", trials=2)
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(config), str(tmp_path / "out.json")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (proc.stdout, proc.stderr) == ("", "")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["done"] == 2 and out["front"] >= 1

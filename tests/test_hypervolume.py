"""A study's hypervolume history (nas/engine/hypervolume.py) against its fixed reference point
(nas/study/reference.py), as ``qkvnas status``, the progress display's finish line and the export
show it."""
import io
import json
import math

import optuna
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState, create_trial

from nas.api import run_study, status_text, study_status
from nas.config import load_config
from nas.costs import costs
from nas.engine import compat, hypervolume
from nas.engine.hypervolume import ATTR_REFERENCE, History
from nas.study import create_or_load_study
from nas.study.hypervolume import study_history
from nas.study.reference import COST_MARGIN, reference_for, stand_ins
from search_spaces import get_space
from search_spaces.base import enumerate_designs
from tests.conftest import tiny_study

MIN = optuna.study.StudyDirection.MINIMIZE
MAX = optuna.study.StudyDirection.MAXIMIZE


def trial(number, values, violation=None):
    t = create_trial(values=values, system_attrs=compat.constraint_system_attrs([violation]) if violation is not None else {})
    t.number = number
    return t


def test_optunas_history_by_hand():
    # Reference (4, 0) for (minimise, maximise). (2, 3): box 2 x 3 = 6. (1, 1): 3 x 1, overlap 2 x 1: +1.
    # Infeasible (0, 9) and (5, 9), beyond the reference in the first objective, add nothing.
    trials = [trial(0, [2.0, 3.0]), trial(1, [0.0, 9.0], violation=1.0), trial(2, [5.0, 9.0]), trial(3, [1.0, 1.0])]
    numbers, values = compat.hypervolume_history(trials, [MIN, MAX], [4.0, 0.0])
    assert numbers == [0, 1, 2, 3] and values == pytest.approx([6.0, 6.0, 6.0, 7.0])
    # The last value is the hypervolume of the front (Optuna's compute_hypervolume on minimised points).
    assert values[-1] == pytest.approx(compat.hypervolume([[2.0, -3.0], [1.0, -1.0]], [4.0, 0.0]))


def test_history_figures():
    h = History(reference={"a": 1.0, "b": 1.0}, numbers=list(range(8)), values=[0, 1, 1, 2, 2, 2, 3, 3])
    assert h.value == 3 and h.last_improved == 6 and h.gain(5) == pytest.approx(3 / 1 - 1)  # from the value after trial 2
    assert hypervolume.text(h) == "hypervolume 3 after 8 complete trials (last grew at trial 6; +200.0% over the last 5)"
    assert hypervolume.summary(h)["history"][3] == {"trial": 3, "hypervolume": 2}


@pytest.fixture
def config_for(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(tiny_study(trials=3))

    def make(*overrides):
        return load_config(path, [f"directory={tmp_path / 'study'}", *overrides])

    return make


def test_the_reference_point_is_fixed_once_by_its_rules(config_for):
    config = config_for('objectives=["val_loss", "kv_cache_bytes_per_token", "train_tokens_per_s", "peak_memory_mb"]')
    study = create_or_load_study(config)
    space = get_space(config.space.name, **config.space.options)
    spec = space.sample(optuna.create_study().ask())
    infeasible = {"spec_json": spec.to_json(), "values": {"val_loss": math.inf, "kv_cache_bytes_per_token": 64.0,
                                                          "train_tokens_per_s": -math.inf, "peak_memory_mb": math.inf}}
    point = stand_ins(study, config, infeasible)
    largest = max(costs(s, seq_len=None).kv_cache_bytes_per_token for _, s in enumerate_designs(space))
    assert point == {"val_loss": pytest.approx(math.log(spec.vocab_size)), "train_tokens_per_s": 0.0,
                     "kv_cache_bytes_per_token": pytest.approx(COST_MARGIN * largest)}  # no memory measured yet
    measured = {"spec_json": spec.to_json(), "values": {"val_loss": 2.0, "kv_cache_bytes_per_token": 64.0,
                                                        "train_tokens_per_s": 900.0, "peak_memory_mb": 12.5}}
    assert stand_ins(study, config, measured)["peak_memory_mb"] == 25.0  # twice the first value measured
    again = {"spec_json": spec.to_json(), "values": {"val_loss": 9.0, "kv_cache_bytes_per_token": 64.0,
                                                     "train_tokens_per_s": 1.0, "peak_memory_mb": 99.0}}
    assert stand_ins(study, config, again) == stand_ins(study, config, measured)  # fixed: later trials move nothing
    stored = study.user_attrs[ATTR_REFERENCE]
    assert set(stored["point"]) == set(config.objectives) and "uniform guess" in stored["rules"]["val_loss"]


@pytest.mark.slow
def test_status_progress_and_export_show_the_hypervolume(config_for):
    out = io.StringIO()
    config = config_for("constraints.max_kv_cache_bytes_per_token=200", "sampler.name=random", "sampler.seed=3")
    run = run_study(config, progress=True, out=out, executor="local")
    study = run.study
    point = hypervolume.stored_reference(study)
    assert point is not None and point["val_loss"] == pytest.approx(math.log(256))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    history = hypervolume.history(study)
    assert history.numbers == [t.number for t in complete] and history.value > 0
    assert "; hypervolume " in [line for line in out.getvalue().splitlines() if line.startswith("done in")][0]
    summary = study_status(str(config.study_dir))["hypervolume"]
    assert summary["reference_stored"] and summary["hypervolume"] == pytest.approx(history.value)
    assert [h["trial"] for h in summary["history"]] == history.numbers
    text = status_text(str(config.study_dir))
    assert "hypervolume" in text and "reference point val_loss 5.545" in text
    export = run.export.out_dir
    table = pq.read_table(export / "hypervolume.parquet")
    assert table.column("number").to_pylist() == history.numbers
    assert table.column("hypervolume").to_pylist() == pytest.approx(history.values)
    assert json.loads(table.schema.metadata[b"reference_point"]) == pytest.approx(point)
    assert (export / "hypervolume.png").stat().st_size > 0
    assert json.loads((export / "study.json").read_text())["hypervolume"]["value"] == pytest.approx(history.value)


def test_a_study_without_a_stored_reference_gets_one_computed_not_stored(config_for):
    config = config_for()
    study = create_or_load_study(config)
    spec = get_space(config.space.name, **config.space.options).sample(optuna.create_study().ask())
    study.add_trial(create_trial(values=[2.0, 32.0], user_attrs={"spec_json": spec.to_json()}))
    point = reference_for(study, config)
    assert point["val_loss"] == pytest.approx(math.log(spec.vocab_size)) and point["kv_cache_bytes_per_token"] > 32.0
    found = study_history(study)
    assert found is not None and not found[1] and found[0].value > 0
    assert ATTR_REFERENCE not in study.user_attrs  # status and export change nothing

"""How a trial's record is stored (nas/engine/attrs.py, nas/engine/record.py): short user
attributes that ``optuna trials`` and optuna-dashboard print whole, the bulk in one system
attribute, constraints in the form the dashboard reads, finite values for objectives an
infeasible design never reached, and old studies (the whole record inline) read as before."""
import json
import math
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from nas.config import load_config
from nas.engine import attrs, compat
from nas.engine.record import is_feasible, pareto_front, tell_record, trial_attrs
from nas.study import create_or_load_study
from nas.study.job import copy_trial
from nas.trial import run_trial
from search_spaces import get_space
from tests.conftest import tiny_study

MEASURED = ('objectives=["val_loss", "kv_cache_bytes_per_token", "train_tokens_per_s"]', 'measure.include=["train"]',
            "measure.repeats=1", "measure.warmup=0", "measure.min_repeat_s=0")
CLI_TRIALS = "import sys; from optuna.cli import main; sys.argv = ['optuna', *sys.argv[1:]]; sys.exit(main())"


@pytest.fixture
def config_for(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(tiny_study(trials=4))

    def make(*overrides):
        return load_config(path, [f"directory={tmp_path / 'study'}", *overrides])

    return make


def tell_one(study, config, seed=0):
    """Sample a design, run it for real, tell it: the trial as stored, and its record."""
    trial = study.ask()
    record = run_trial(get_space(config.space.name, **config.space.options).sample(trial), config, seed=seed).to_dict()
    tell_record(study, trial, record)
    return study.trials[trial.number], record


def test_a_record_reads_back_whole_while_its_user_attributes_stay_short(config_for):
    config = config_for(*MEASURED)
    study = create_or_load_study(config)
    trial, record = tell_one(study, config)
    assert record["status"] == "complete" and trial.state == TrialState.COMPLETE
    stored = attrs.read(trial)
    for key, value in trial_attrs(record).items():  # every part of the record, as written before
        assert stored.get(key) == value, key
    assert stored["curve"]["train_losses"] and stored["measure"]["train_tokens_per_s"] > 0
    # What the CLI and the dashboard print: short values, the bulk out of sight, a line saying where it is.
    assert {"curve", "measure", "hardware", "costs"}.isdisjoint(trial.user_attrs)
    assert all(len(json.dumps(v)) <= attrs.INLINE_LIMIT for k, v in trial.user_attrs.items() if k != "spec_json")
    assert trial.user_attrs["status"] == "complete" and trial.user_attrs["spec_json"] == record["spec_json"]
    figures = trial.user_attrs[attrs.ATTR_FIGURES]
    assert figures["objectives"]["val_loss"] == pytest.approx(record["values"]["val_loss"], rel=1e-3)
    assert figures["tokens"] == record["train"]["tokens_seen"] and figures["params"] == record["costs"]["params"]
    assert attrs.BULK_KEY in trial.user_attrs[attrs.ATTR_LINK]
    assert len(json.dumps(trial.system_attrs[attrs.BULK_KEY])) > 5 * len(json.dumps(trial.user_attrs))


def test_optuna_trials_prints_short_lines(config_for):
    config = config_for(*MEASURED)
    study = create_or_load_study(config)
    tell_one(study, config)
    out = subprocess.run([sys.executable, "-c", CLI_TRIALS, "trials", "--storage", f"sqlite:///{config.study_dir / 'study.db'}",
                          "--study-name", config.name], capture_output=True, text=True, timeout=300, check=True).stdout
    longest = max(len(line) for line in out.splitlines())
    assert "complete" in out and longest < 2500, longest  # the whole record inline made lines of ~15,000


def test_an_infeasible_trial_is_told_finite_values_and_dashboard_constraints(config_for):
    config = config_for("constraints.max_kv_cache_bytes_per_token=1")
    study = create_or_load_study(config)
    trial = study.ask()
    record = run_trial(get_space(config.space.name, **config.space.options).sample(trial), config, seed=0).to_dict()
    assert record["status"] == "infeasible" and record["values"]["val_loss"] == math.inf
    tell_record(study, trial, record, stand_in={"val_loss": 4.5})
    stored = study.trials[0]
    assert stored.state == TrialState.COMPLETE and stored.values[0] == 4.5  # the stand-in, not inf
    assert attrs.objective_values(stored, ["val_loss", "kv_cache_bytes_per_token"])["val_loss"] == math.inf
    # Optuna's list form: samplers and best_trials see one constraint, named by the record.
    violation = record["constraints"]["max_kv_cache_bytes_per_token"]
    assert stored.system_attrs["constraints"] == [violation] and stored.constraints == {"0": violation}
    assert attrs.constraint_values(stored) == {"max_kv_cache_bytes_per_token": violation}
    assert not is_feasible(stored) and not pareto_front(study) and not study.best_trials
    assert stored.user_attrs["reason"] == "violates max_kv_cache_bytes_per_token"


def test_optuna_dashboard_reads_constraints_and_whole_attributes(config_for):
    serializer = pytest.importorskip("optuna_dashboard._serializer")
    config = config_for("constraints.max_kv_cache_bytes_per_token=1")
    study = create_or_load_study(config)
    trial, _ = tell_one(study, config)
    shown = serializer.serialize_frozen_trial(study._study_id, trial, study._storage.get_study_system_attrs(study._study_id))
    assert shown["constraints"] and all(c > 0 for c in shown["constraints"])  # shown as infeasible
    assert all(v != "inf" for v in shown["values"])
    for attr in shown["user_attrs"]:  # nothing cut at MAX_ATTR_LENGTH into invalid JSON
        if attr["key"] != "spec_json" and not isinstance(trial.user_attrs[attr["key"]], str):
            assert json.loads(attr["value"]) == trial.user_attrs[attr["key"]]


def test_a_study_written_before_reads_as_before(config_for):
    """The whole record inline and named constraint attributes, as qkvnas wrote them until now."""
    config = config_for("constraints.max_kv_cache_bytes_per_token=1e9")
    study = create_or_load_study(config)
    trial = study.ask()
    record = run_trial(get_space(config.space.name, **config.space.options).sample(trial), config, seed=0).to_dict()
    study.tell(trial, state=TrialState.FAIL)  # only its number is used; the old-layout trial is added whole
    old = optuna.trial.create_trial(values=[record["values"]["val_loss"], record["values"]["kv_cache_bytes_per_token"]],
                                    params=study.trials[0].params, distributions=study.trials[0].distributions,
                                    user_attrs=trial_attrs(record), constraints=record["constraints"])
    study.add_trial(old)
    legacy = study.trials[1]
    assert attrs.BULK_KEY not in legacy.system_attrs
    assert attrs.read(legacy) == legacy.user_attrs and attrs.read(legacy)["curve"] == record["curve"]
    assert attrs.constraint_values(legacy) == record["constraints"]
    assert attrs.objective_values(legacy, ["val_loss"]) == {"val_loss": record["values"]["val_loss"]}
    # A repeat of it is stored in today's layout, with the same record.
    copy = study.ask()
    copy_trial(study, copy, legacy.number)
    copied = study.trials[2]
    assert attrs.BULK_KEY in copied.system_attrs and "curve" not in copied.user_attrs
    assert attrs.read(copied)["curve"] == record["curve"] and copied.values == legacy.values
    assert attrs.constraint_values(copied) == record["constraints"] and copied.user_attrs["duplicate_of"] == 1


def test_never_reached_objectives_without_a_stand_in():
    """A job without a reference point: the worst value told so far, else the worst finite float."""
    study = optuna.create_study(directions=["minimize", "maximize"])
    compat.set_metric_names(study, ["loss", "speed"])

    def tell(values, status="infeasible"):
        trial = study.ask()
        tell_record(study, trial, {"status": status, "reason": None, "values": values, "constraints": {"c": 1.0}})
        return study.trials[trial.number].values

    assert tell({"loss": math.inf, "speed": -math.inf}) == [sys.float_info.max, -sys.float_info.max]
    assert tell({"loss": 2.0, "speed": 5.0}, "complete") == [2.0, 5.0]
    assert tell({"loss": 3.0, "speed": 7.0}, "complete") == [3.0, 7.0]
    assert tell({"loss": math.inf, "speed": 6.0})[1] == 6.0  # a value it measured is told as it is
    study2 = optuna.create_study(directions=["minimize", "maximize"])
    compat.set_metric_names(study2, ["loss", "speed"])
    for values in ({"loss": 2.0, "speed": 5.0}, {"loss": 3.0, "speed": 7.0}, {"loss": math.inf, "speed": -math.inf}):
        trial = study2.ask()
        tell_record(study2, trial, {"status": "complete", "reason": None, "values": values, "constraints": {}})
    assert study2.trials[2].values == [3.0, 5.0]  # the worst finite values told before


def test_a_failed_record_keeps_its_traceback_in_the_bulk():
    study = optuna.create_study(directions=["minimize"])
    trial = study.ask()
    error = "Traceback (most recent call last):\n  File \"x.py\", line 1\n" + "  frame\n" * 200 + "RuntimeError: boom"
    tell_record(study, trial, {"status": "failed", "reason": "RuntimeError: boom", "values": {}, "constraints": {},
                               "error": error})
    failed = study.trials[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs["error"] == "RuntimeError: boom"
    assert attrs.read(failed)["error"] == error and len(json.dumps(failed.user_attrs)) < 1024


def test_headline_figures_stay_under_the_limit():
    many = {f"max_objective_{i}": float(i) for i in range(200)}
    figures = attrs.headline({"constraint_values": many, "costs": {"params": 10}, "objective_values": {"a": 1.0}})
    assert len(json.dumps(figures)) <= attrs.INLINE_LIMIT and figures["objectives"] == {"a": 1.0}

"""The study engine without Ray: trials end to end, constraints, failures, samplers, storage,
stale trials. The Ray-driven tests are in test_study_ray.py."""
import dataclasses
import math
import os
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

import nas.train
from nas.engine import attrs
from nas.config import load_config
from nas.study import (
    ATTR_WORKER, SQLiteLock, count_done, counts, create_or_load_study, make_sampler, open_storage,
    pareto_front, recover_stale_trials, storage_url, tell_record, worker_alive, worker_identity,
)
from nas.trial import run_trial
from search_spaces import get_space
from tests.conftest import tiny_study

TINY = tiny_study(trials=4)


@pytest.fixture
def config_for(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(TINY)

    def make(*overrides):
        return load_config(path, [f"directory={tmp_path / 'study'}", *overrides])

    return make


def sample_spec(config, trial=None):
    space = get_space(config.space.name, **config.space.options)
    return space.sample(trial or optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())


def fake_train(loss_of):
    """A stand-in for nas.train.train that returns at once (for sampler and bookkeeping tests)."""
    def train(spec, corpus, budget, **_):
        return nas.train.TrainResult(
            val_loss=loss_of(spec), bits_per_byte=None, tokens_seen=budget.tokens, steps=4, wall_s=0.0,
            train_tokens_per_s=1.0, curve=({"step": 4, "tokens": budget.tokens, "train_loss": 2.0, "val_loss": 2.0,
                                            "grad_norm": 1.0, "lr": 1e-3},),
            grad_norms=(1.0,) * 4, train_losses=(2.0,) * 4, diverged=False, reason=None, device="cpu")
    return train


def forbid_training(*_, **__):
    raise AssertionError("an infeasible design was trained")


# ---- one trial ----------------------------------------------------------------------------
def test_a_feasible_trial_records_everything(config_for):
    config = config_for()
    spec = sample_spec(config)
    record = run_trial(spec, config, seed=0)
    assert record.status == "complete", record.reason
    assert record.spec == spec and record.spec_hash == spec.hash
    assert set(record.values) == {"val_loss", "kv_cache_bytes_per_token"}
    assert math.isfinite(record.values["val_loss"])
    assert record.values["kv_cache_bytes_per_token"] == record.costs["kv_cache_bytes_per_token"]
    assert record.curve["points"] and len(record.curve["train_losses"]) == record.train["steps"]
    assert record.hardware["torch"] == torch.__version__ and record.hardware["device"] == "cpu"
    assert record.stability is not None and record.timings["train_s"] > 0


def test_analytic_constraints_skip_training(config_for, monkeypatch):
    monkeypatch.setattr(nas.train, "train", forbid_training)
    config = config_for("constraints.max_kv_cache_bytes_per_token=1")
    record = run_trial(sample_spec(config), config, seed=0)
    assert record.status == "infeasible" and record.train is None
    assert record.reason == "violates max_kv_cache_bytes_per_token"
    assert record.constraints["max_kv_cache_bytes_per_token"] > 0
    assert record.values["val_loss"] == math.inf  # never measured: the worst value
    assert math.isfinite(record.values["kv_cache_bytes_per_token"])


def test_unreached_constraints_are_zero_and_measured_ones_skip_training(config_for, monkeypatch):
    monkeypatch.setattr(nas.train, "train", forbid_training)
    config = config_for("constraints.max_params=1", "constraints.max_val_loss=100")
    record = run_trial(sample_spec(config), config, seed=0)
    assert record.status == "infeasible"
    assert record.constraints["max_params"] > 0 and record.constraints["max_val_loss"] == 0.0
    fast = config_for("constraints.min_train_tokens_per_s=1e12", "measure.include=[\"train\"]",
                      "measure.repeats=1", "measure.warmup=0", "measure.min_repeat_s=0")
    record = run_trial(sample_spec(fast), fast, seed=0)
    assert record.status == "infeasible" and record.reason == "violates min_train_tokens_per_s"
    assert record.measure["train_tokens_per_s"] > 0 and record.hardware == record.measure["fingerprint"]


def test_failures_become_records(config_for, monkeypatch):
    config = config_for()
    spec = sample_spec(config)

    def boom(*_, **__):
        raise RuntimeError("boom")

    monkeypatch.setattr(nas.train, "train", boom)
    record = run_trial(spec, config, seed=0)
    assert (record.status, record.reason) == ("failed", "RuntimeError: boom") and "boom" in record.error

    def oom(*_, **__):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(nas.train, "train", oom)
    assert run_trial(spec, config, seed=0).reason.startswith("out of memory: CUDA out of memory")


def test_a_diverging_trial_fails_with_its_reason(config_for):
    config = config_for("budget.lr=1000.0")
    record = run_trial(sample_spec(config), config, seed=0)
    assert record.status == "failed" and record.reason.startswith("diverged:")
    assert record.values == {} and record.train["diverged"]


# ---- a study, driven by hand (the same calls the Ray searcher makes) -------------------------
def drive(study, config, n):
    space = get_space(config.space.name, **config.space.options)
    for _ in range(n):
        trial = study.ask()
        spec = space.sample(trial)
        tell_record(study, trial, run_trial(spec, config, seed=0).to_dict())


@pytest.mark.filterwarnings("ignore:Clip non-finite values")  # GP: the ±inf of infeasible trials
@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "nsga3", "gp", "random"])
def test_every_sampler_runs_a_constrained_study(config_for, monkeypatch, sampler):
    monkeypatch.setattr(nas.train, "train", fake_train(lambda spec: 2.0 + spec.layers[0].n_kv_heads / 10))
    config = config_for(f"sampler.name={sampler}", "constraints.max_kv_cache_bytes_per_token=40",
                        "sampler.options={population_size=4}" if sampler.startswith("nsga") else "sampler.seed=1")
    study = create_or_load_study(config)
    drive(study, config, 12)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 12 and study.metric_names == ["val_loss", "kv_cache_bytes_per_token"]
    infeasible = [t for t in trials if attrs.constraint_values(t)["max_kv_cache_bytes_per_token"] > 0]
    # Never trained: recorded as inf, told to Optuna as a finite stand-in (nas/engine/record.py)
    assert infeasible and all(attrs.objective_values(t, ["val_loss"])["val_loss"] == math.inf for t in infeasible)
    assert all(math.isfinite(v) for t in trials for v in t.values)
    front = pareto_front(study)
    assert front and all(attrs.constraint_values(t)["max_kv_cache_bytes_per_token"] <= 0 for t in front)
    assert {t.number for t in front} == {t.number for t in study.best_trials}


def test_failed_and_diverged_trials_do_not_stop_a_study(config_for, monkeypatch):
    config = config_for("budget.lr=1000.0")  # every trial diverges
    study = create_or_load_study(config)
    drive(study, config, 2)
    monkeypatch.setattr(nas.train, "train", fake_train(lambda spec: 2.0))
    drive(study, config, 2)
    c = counts(study)
    assert (c.failed, c.complete, count_done(study)) == (2, 2, 4)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert all(t.user_attrs["reason"].startswith("diverged:") for t in failed)


# ---- storage, workers, stale trials ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_storages_keep_directions_names_and_config(config_for, tmp_path, kind):
    storage = [] if kind == "sqlite" else [f"storage=\"journal:{tmp_path / 'journal.log'}\""]
    config = config_for(*storage)
    study = create_or_load_study(config)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    again = create_or_load_study(config, open_storage(storage_url(config)))
    assert again.metric_names == ["val_loss", "kv_cache_bytes_per_token"]
    assert again.user_attrs["config"]["budget"]["tokens"] == 2048
    with pytest.raises(ValueError, match="already exists in its storage with a different objectives"):
        create_or_load_study(config_for(*storage, 'objectives=["val_loss", "params"]'))


def test_sqlite_serves_one_worker(config_for):
    url = storage_url(config_for())
    with SQLiteLock(url, "tiny"):
        with pytest.raises(ValueError, match="journal:PATH.*PostgreSQL"):
            with SQLiteLock(url, "tiny"):
                pass
    with SQLiteLock(url, "tiny"):  # released on exit
        pass


def test_run_study_refuses_a_second_worker_on_sqlite(config_for):
    from nas.api import run_study

    config = config_for()
    with SQLiteLock(storage_url(config), config.name):
        with pytest.raises(ValueError, match="already being run by pid"):
            run_study(config, progress=False)


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_worker_liveness():
    me = worker_identity()
    assert worker_alive(me) is True
    assert worker_alive(me | {"pid": dead_pid()}) is False
    assert worker_alive(me | {"started": "1"}) is False  # same pid, another process
    assert worker_alive(me | {"host": "elsewhere"}) is None


def test_stale_trials_are_failed_and_requeued(config_for):
    config = config_for()
    study = create_or_load_study(config)
    space = get_space(config.space.name, **config.space.options)
    finished = study.ask()
    space.sample(finished)
    study.tell(finished, [2.0, 64.0])
    dead, alive = study.ask(), study.ask()
    for trial, worker in ((dead, worker_identity() | {"pid": dead_pid()}), (alive, worker_identity())):
        space.sample(trial)
        trial.set_user_attr(ATTR_WORKER, worker)
    assert recover_stale_trials(study, all_running=False) == [dead.number]  # a live worker keeps its trial
    assert recover_stale_trials(study, all_running=True) == [alive.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [dead.params, alive.params]
    assert [t.user_attrs["retry_of"] for t in waiting] == [dead.number, alive.number]
    assert count_done(study) == 1 and counts(study).stale == 2
    retry = study.ask()  # the queue is served first, with the same design
    assert retry.number == waiting[0].number and space.sample(retry) and retry.params == dead.params


def test_make_sampler_rejects_bad_options():
    assert isinstance(make_sampler("nsga3", 0, {"population_size": 8}), optuna.samplers.NSGAIIISampler)
    with pytest.raises(ValueError, match="sampler.options for 'tpe'"):
        make_sampler("tpe", 0, {"no_such_option": 1})


def test_trial_record_round_trip(config_for, monkeypatch):
    monkeypatch.setattr(nas.train, "train", fake_train(lambda spec: 2.5))
    config = config_for()
    record = run_trial(sample_spec(config), config, seed=0)
    again = type(record).from_dict(dataclasses.asdict(record))
    assert again == record and again.values["val_loss"] == 2.5


def test_a_finished_study_is_exported_without_running_anything(config_for, monkeypatch, capsys):
    from nas.api import resume_study, run_study
    from nas.study.display import front_table

    monkeypatch.setattr(nas.train, "train", fake_train(lambda spec: 2.0 + spec.layers[0].n_kv_heads / 10))
    config = config_for("trials=3")
    study = create_or_load_study(config)
    drive(study, config, 3)
    summary = run_study(config)  # target reached: no Ray, just the export
    assert summary.counts.done == 3 and summary.export.pareto.is_file()
    assert "Pareto front" in capsys.readouterr().out
    again = resume_study(str(config.study_dir), ["trials=2"], progress=False, export=False)
    assert again.target == 2 and again.counts.done == 3
    source = study.best_trials[0]
    twin = study.ask()  # the same design as a front trial, as the Ray searcher copies it
    for key, value in source.user_attrs.items():
        twin.set_user_attr(key, value)
    study.tell(twin, source.values)
    table = front_table(study)
    assert f"{source.number} (+1 same)" in table and f"  {twin.number} " not in table
    assert table.count("\n") == len({t.user_attrs["spec_hash"] for t in study.best_trials})  # header + one per design


def test_training_keeps_measurements_off_the_node(config_for, monkeypatch, tmp_path):
    import fcntl

    import nas.measure

    monkeypatch.setenv("QKVNAS_LOCK_DIR", str(tmp_path / "locks"))  # away from other processes' measurements
    seen = []

    def train(spec, corpus, budget, **_):
        fd = os.open(nas.measure.lock_path(), os.O_RDONLY | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a measurement would take
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        return fake_train(lambda s: 2.0)(spec, corpus, budget)

    monkeypatch.setattr(nas.train, "train", train)
    measuring = config_for('objectives=["val_loss", "train_tokens_per_s"]', 'measure.include=["train"]',
                           "measure.repeats=1", "measure.warmup=0", "measure.min_repeat_s=0")
    assert run_trial(sample_spec(measuring), measuring, seed=0).status == "complete"
    assert run_trial(sample_spec(config_for()), config_for(), seed=0).status == "complete"
    assert seen == ["held", "free"]  # only a study that measures pays for the lock

"""Repeated designs do not eat a study's target: the sampler is not let propose a design the
study has (evaluated, running or queued) while the space has others, a resumed run continues
the sampler's sequence instead of replaying it, and the quick preset, SIGKILLed and resumed,
evaluates 16 different designs in its 16 trials."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.engine.sampler import DistinctDesigns, make_sampler, worker_seed
from search_spaces import get_space
from tests.test_engine import complete_count

QKVNAS = str(Path(sys.executable).with_name("qkvnas"))
QUICK_BASE = {"vocab_size": 256, "context": 64, "d_model": 64, "n_heads": 4, "ffn_dim": 256, "n_layers": 2}
DIRECTIONS = ["minimize", "minimize", "maximize"]


def running_count(db: Path) -> int:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return c.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    return 0


def made_up(h: str) -> list[float]:
    """Objective values of a design, fixed by its hash (a stand-in for training it)."""
    x = int(hashlib.sha256(h.encode()).hexdigest()[:8], 16) / 2**32
    return [2.0 + x, 100.0 * (1.0 + (7 * x) % 1.0), 1000.0 * (1.0 - x)]


def run_sampler(sampler: optuna.samplers.BaseSampler, space, trials: int,
                study: optuna.Study | None = None) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = study or optuna.create_study(directions=DIRECTIONS, sampler=sampler)
        study.sampler = sampler
        for _ in range(trials):
            trial = study.ask()
            study.tell(trial, made_up(space.sample(trial).hash))
    return study


def hashes(space, study: optuna.Study) -> list[str]:
    return [space.sample(optuna.trial.FixedTrial(t.params)).hash for t in study.trials]


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_trial_is_a_new_design_while_the_space_has_some(name: str, seed: int) -> None:
    space = get_space("per_layer", base=QUICK_BASE)  # the quick preset's space: 144 designs
    study = run_sampler(DistinctDesigns(make_sampler(name, seed), space, seed=seed), space, 16)
    assert len(set(hashes(space, study))) == 16
    for t in study.trials:  # a trial whose design is not the sampler's first proposal says so
        if t.user_attrs.get("proposal"):
            assert t.user_attrs["resampled"] >= 1 and "drawn at random" in t.user_attrs["proposal"]


def test_an_exhausted_space_repeats_and_says_why() -> None:
    space = get_space("paper", base={"context": 32, "d_model": 32, "n_heads": 4, "ffn_dim": 64, "n_layers": 1})
    study = run_sampler(DistinctDesigns(make_sampler("tpe", 0), space, seed=0), space, 14)
    designs = hashes(space, study)
    assert len(set(designs[:12])) == 12 == len(set(designs))  # all 12 first, then repeats
    assert all("no design left" in t.user_attrs["proposal"] for t in study.trials[12:])


def test_a_sampler_that_always_repeats_is_overruled_in_a_space_too_large_to_list() -> None:
    class Stuck(optuna.samplers.RandomSampler):  # proposes the same design every time
        def sample_independent(self, study, trial, name, dist):
            return dist.choices[0]

    space = get_space("per_layer", base=QUICK_BASE | {"n_layers": 6})  # 12^6 designs: drawn, not listed
    study = run_sampler(DistinctDesigns(Stuck(), space, seed=0), space, 5)
    assert len(set(hashes(space, study))) == 5
    assert all(t.user_attrs["proposal"].endswith("drawn at random") for t in study.trials[1:])


def test_queued_and_running_designs_are_taken_too() -> None:
    space = get_space("paper", base={"context": 32, "d_model": 32, "n_heads": 4, "ffn_dim": 64, "n_layers": 1})
    sampler = DistinctDesigns(make_sampler("random", 0), space, seed=0)
    study = optuna.create_study(directions=["minimize"], sampler=sampler)
    designs = space.grid()
    for params in designs[:10]:  # ten designs evaluated, one queued
        study.enqueue_trial(params)
        trial = study.ask()
        space.sample(trial)
        study.tell(trial, 1.0)
    study.enqueue_trial(designs[10])
    running = study.ask()  # pops the queued one: running now
    assert space.sample(running) and running.params == designs[10]
    new = study.ask()
    assert new.params == {} and space.sample(new) and new.params == designs[11]  # the only design left


def test_a_resumed_run_continues_the_sampler_sequence() -> None:
    assert worker_seed(0, single_worker=True) == 0  # a first run: the study's seed, as before
    assert worker_seed(0, single_worker=True, trials=5) == worker_seed(0, single_worker=True, trials=5) != 0
    assert worker_seed(0, single_worker=True, trials=5) != worker_seed(0, single_worker=True, trials=6)
    assert worker_seed(None, single_worker=True, trials=5) is None
    space = get_space("per_layer", base=QUICK_BASE)
    plain = run_sampler(make_sampler("random", 0), space, 6)
    resumed = run_sampler(make_sampler("random", worker_seed(0, single_worker=True, trials=6)), space, 6,
                          study=run_sampler(make_sampler("random", 0), space, 6))
    # Re-created with the study's seed a sampler would propose trials 0-5 again; seeded from the
    # trials already there, it proposes others.
    assert hashes(space, resumed)[6:] != hashes(space, plain)


@pytest.mark.slow
def test_the_quick_preset_killed_and_resumed_evaluates_16_designs() -> None:
    """The quick preset's space, sampler, seed and objectives, on a shorter budget: SIGKILLed
    after four trials, resumed to the end; its 16 trials are 16 different designs."""
    root = Path(tempfile.mkdtemp(prefix="qkd", dir="/tmp"))
    env = os.environ | {"TMPDIR": str(root), "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled",
                        "QKVNAS_LOCK_DIR": str(root)}
    env.pop("RAY_ADDRESS", None)
    shrink = ["--set", "budget.tokens=2048", "--set", "budget.eval_batches=2", "--set", "measure.repeats=2",
              "--set", "measure.min_repeat_s=0.0"]
    log = open(root / "log.txt", "a+")
    try:
        proc = subprocess.Popen([QKVNAS, "run", "--preset", "quick", *shrink], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        db = root / "studies" / "quick" / "study.db"
        deadline = time.monotonic() + 600
        while not db.is_file() or complete_count(db) < 4 or not running_count(db):  # killed mid-trial
            assert proc.poll() is None, (root / "log.txt").read_text()
            assert time.monotonic() < deadline, (root / "log.txt").read_text()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        again = subprocess.run([QKVNAS, "resume", "quick"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               timeout=600, start_new_session=True)
        assert again.returncode == 0, (root / "log.txt").read_text()
        from nas.engine.storage import open_storage

        study = optuna.load_study(study_name="quick", storage=open_storage(f"sqlite:///{db}", existing=True))
        counted = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("stale")]
        designs = {t.user_attrs["spec_hash"] for t in counted}
        print(f"\nquick preset after kill + resume: {len(counted)} trials, {len(designs)} distinct designs, "
              f"{sum('duplicate_of' in t.user_attrs for t in counted)} copied repeats, "
              f"{sum(1 for t in study.trials if t.user_attrs.get('stale'))} interrupted and requeued")
        assert len(counted) == 16 and len(designs) == 16
        assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    finally:
        log.close()
        shutil.rmtree(root, ignore_errors=True)

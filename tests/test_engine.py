"""One engine under every kind of job: a study, a ladder and a probe suite each run through
``nas.engine.run``, are killed with SIGKILL mid-run (the whole process group: driver and Ray),
run again, and complete with nothing lost (every trial told before the kill kept as it was,
none left RUNNING, every point or run present once)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

import nas.engine
from nas.engine.storage import open_storage
from tests.conftest import tiny_study, tiny_suite

QKVNAS = str(Path(sys.executable).with_name("qkvnas"))

LADDER = """
kind = "ladder"
name = "kl"
designs = ["q_kv"]
tokens_per_param = [1, 2]
seeds = [0, 1]
base = { context = 32, d_model = 16, n_heads = 2, ffn_dim = 32, n_layers = 1 }
sizes = [{ d_model = 16 }, { d_model = 32 }]
budget = { batch_size = 8, eval_batches = 2 }
"""

SUITE = tiny_suite(name="ks", description="a kill test", seeds=3, steps=40, tasks=("copy", "swap"))


@pytest.fixture
def sandbox():
    root = Path(tempfile.mkdtemp(prefix="qke", dir="/tmp"))  # short: Ray's socket paths
    env = os.environ | {"TMPDIR": str(root), "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    yield root, env
    shutil.rmtree(root, ignore_errors=True)


def storage(root: Path, db: str, name: str | None = None) -> optuna.Study:
    url = f"sqlite:///{root / db}"
    opened = open_storage(url, existing=True)
    name = name or optuna.get_all_study_summaries(opened, include_best_trial=False)[0].study_name
    return optuna.load_study(study_name=name, storage=opened)


def told(study: optuna.Study) -> dict[int, FrozenTrial]:
    return {t.number: t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL) and not t.user_attrs.get("stale")}


def complete_count(db: Path) -> int:
    """COMPLETE trials, read with plain SQL: opening an Optuna storage while the run creates it
    races with the run's own schema set-up."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return c.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    return 0


def run_kill_resume(root: Path, env: dict, args: list[str], db: str, study_of: Callable[[], optuna.Study],
                    timeout: float = 240) -> tuple[dict[int, FrozenTrial], optuna.Study]:
    """Start ``qkvnas ARGS``, SIGKILL its process group once a trial is told, run it again to
    the end; return the trials told before the kill and the final study."""
    log = open(root / "log.txt", "a+")
    proc = subprocess.Popen([QKVNAS, *args], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not (root / db).is_file() or complete_count(root / db) == 0:
        assert proc.poll() is None, f"exited before the kill:\n{(root / 'log.txt').read_text()}"
        assert time.monotonic() < deadline, (root / "log.txt").read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {n: t for n, t in told(study_of()).items() if t.state == TrialState.COMPLETE}
    again = subprocess.run([QKVNAS, *args], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                           timeout=timeout, start_new_session=True)
    assert again.returncode == 0, (root / "log.txt").read_text()
    return before, study_of()


def assert_nothing_lost(before: dict[int, FrozenTrial], study: optuna.Study) -> None:
    after = told(study)
    for number, trial in before.items():
        assert after[number].values == trial.values and after[number].user_attrs == trial.user_attrs
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.slow
def test_a_study_is_killed_and_resumed(sandbox) -> None:
    root, env = sandbox
    (root / "s.toml").write_text(tiny_study(name="ks", trials=5, tokens=8 * 32 * 40))
    before, study = run_kill_resume(root, env, ["run", "s.toml"], "studies/ks/study.db",
                                    lambda: storage(root, "studies/ks/study.db", "ks"))
    assert_nothing_lost(before, study)
    assert len(told(study)) == 5


@pytest.mark.slow
def test_a_ladder_is_killed_and_resumed(sandbox) -> None:
    root, env = sandbox
    (root / "l.toml").write_text(LADDER)
    before, study = run_kill_resume(root, env, ["ladder", "l.toml", "--no-report"], "studies/kl/ladder.db",
                                    lambda: storage(root, "studies/kl/ladder.db", "kl"))
    assert_nothing_lost(before, study)
    points = [t.params for t in told(study).values() if t.state == TrialState.COMPLETE]
    assert len(points) == 2 * 2 * 2 * 2 and len({tuple(sorted(p.items())) for p in points}) == len(points)


@pytest.mark.slow
def test_a_probe_suite_is_killed_and_resumed(sandbox) -> None:
    root, env = sandbox
    (root / "p.toml").write_text(SUITE)
    before, study = run_kill_resume(root, env, ["probe-suite", "--preset", "p.toml", "--out", "out"], "out/suite.db",
                                    lambda: storage(root, "out/suite.db"))
    assert_nothing_lost(before, study)
    runs = [t.params["run"] for t in told(study).values() if t.state == TrialState.COMPLETE]
    assert sorted(runs) == list(range(2 * 2 * 3))  # designs × tasks × seeds, each once
    assert (root / "out" / "table.md").is_file()


def test_study_ladder_and_suite_all_run_through_the_one_engine(tmp_path, monkeypatch) -> None:
    """In-process, with the engine's run replaced by a recorder: each kind of work hands the
    engine a job and does no running of its own."""
    import tomllib

    from nas.api import run_study
    from nas.config import load_config
    from nas.ladder import load_ladder_config, run_ladder
    from nas.probing import parse_suite, run_suite

    seen: list[str] = []

    def fake_run(job, **kwargs):
        seen.append(type(job).__name__)
        study = job.open_study(open_storage(job.storage_url))
        job.prepare(study)
        raise KeyboardInterrupt  # stop before any trial: only the hand-over is under test

    monkeypatch.setattr(nas.engine, "run", fake_run)
    (tmp_path / "s.toml").write_text(tiny_study(name="one"))
    (tmp_path / "l.toml").write_text(LADDER)
    monkeypatch.chdir(tmp_path)
    for call in (lambda: run_study(load_config(tmp_path / "s.toml"), progress=False),
                 lambda: run_ladder(load_ladder_config(tmp_path / "l.toml"), progress=False),
                 lambda: run_suite(parse_suite(tomllib.loads(SUITE)), tmp_path / "out", log=lambda line: None)):
        with pytest.raises(KeyboardInterrupt):
            call()
    assert seen == ["StudyJob", "LadderJob", "SuiteJob"]

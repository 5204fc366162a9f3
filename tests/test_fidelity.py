"""Multi-fidelity search in a live study: trials stopped at rungs are recorded PRUNED with what
they reached, the front comes from full-budget trials only, scheduler "none" changes nothing,
and a study killed with a trial between rungs resumes with nothing lost."""
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
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from nas import engine
from nas.config import load_config
from nas.engine.stopping import ATTR_RUNGS, ATTR_STOPPED_AT, ATTR_TOKENS_SPENT, stopping_summary
from nas.export import export_study
from nas.study.job import StudyJob
from tests.conftest import tiny_study

TOKENS = 8 * 32 * 16  # 16 steps of the tiny study: evaluations at 2, 4, ..., 16
MO_ASHA = "[fidelity]\nscheduler = \"mo_asha\"\nrungs = [0.25, 0.5]\neta = 2\n"


def tiny(tmp_path: Path, name: str, extra: str = "", trials: int = 8):
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_study(name=name, trials=trials, tokens=TOKENS, extra=extra))
    return load_config(path, [f"directory={tmp_path / name}", "sampler.name=\"random\""])


@pytest.mark.parametrize("raw, message", [
    ("[fidelity]\nscheduler = \"asha\"\n", "fidelity.scheduler"),
    ("[fidelity]\nrungs = [0.5, 0.25]\n", "ascending"),
    ("[fidelity]\nrungs = [1.5]\n", "between 0"),
    ("[fidelity]\neta = 1\n", "fidelity.eta"),
    ("[fidelity]\ntie = \"crowding\"\n", "unknown key"),
])
def test_bad_fidelity_sections_name_the_key(tmp_path: Path, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, "bad", raw)


def test_stopped_trials_are_pruned_with_their_rung_and_tokens(tmp_path: Path) -> None:
    config = tiny(tmp_path, "asha", MO_ASHA)
    study = engine.run(StudyJob(config), executor="local", progress=False).study
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert pruned and complete and len(pruned) + len(complete) == 8
    for t in pruned:
        rung = t.user_attrs[ATTR_STOPPED_AT]
        assert t.user_attrs[ATTR_TOKENS_SPENT] < TOKENS and "stopped at rung" in t.user_attrs["reason"]
        decisions = t.user_attrs[ATTR_RUNGS]
        assert [d["rung"] for d in decisions] == list(range(rung + 1)) and not decisions[-1]["keep"]
        assert all(d["keep"] for d in decisions[:-1])
    for t in complete:
        if "duplicate_of" not in t.user_attrs:
            assert all(d["keep"] for d in t.user_attrs[ATTR_RUNGS]) and len(t.user_attrs[ATTR_RUNGS]) == 2
    summary = stopping_summary(study, TOKENS)
    assert summary["stopped"] == len(pruned) and 0 < summary["tokens_saved_frac"] < 1
    exported = export_study(study, tmp_path / "export")
    rows = pq.read_table(exported.trials).to_pylist()
    assert sum(r["state"] == "PRUNED" for r in rows) == len(pruned)
    stopped = [r for r in rows if r["state"] == "PRUNED"]
    assert all(r["stopped_at_rung"] is not None and r["tokens_spent"] < TOKENS and r["rungs_json"] for r in stopped)
    front = pq.read_table(exported.pareto).to_pylist()
    assert front and all(r["state"] == "COMPLETE" for r in front)  # the front: full-budget trials only


def test_scheduler_none_changes_nothing(tmp_path: Path) -> None:
    plain = engine.run(StudyJob(tiny(tmp_path, "plain", trials=4)), executor="local", progress=False).study
    none = engine.run(StudyJob(tiny(tmp_path, "none", "[fidelity]\nscheduler = \"none\"\n", trials=4)),
                      executor="local", progress=False).study
    assert [t.params for t in plain.trials] == [t.params for t in none.trials]
    assert [t.values for t in plain.trials] == [t.values for t in none.trials]
    assert all(ATTR_RUNGS not in t.user_attrs for t in none.trials)


def running_with_a_rung_decision(db: Path) -> bool:
    """A RUNNING trial that has recorded a rung decision (read with plain SQL, as the run writes)."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return bool(c.execute(
            "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.state = 'RUNNING' AND a.key = 'rungs'").fetchone()[0])
    return False


@pytest.mark.slow
def test_a_kill_between_rungs_loses_nothing() -> None:
    root = Path(tempfile.mkdtemp(prefix="qkf", dir="/tmp"))  # short: Ray's socket paths
    try:
        _kill_between_rungs(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_between_rungs(root: Path) -> None:
    (root / "f.toml").write_text(tiny_study(name="kf", trials=6, tokens=8 * 32 * 60, extra=MO_ASHA))
    env = os.environ | {"TMPDIR": str(root), "RAY_AUTH_MODE": "disabled"}
    qkvnas = str(Path(sys.executable).with_name("qkvnas"))
    db = root / "studies" / "kf" / "study.db"
    proc = subprocess.Popen([qkvnas, "run", "f.toml"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (db.is_file() and running_with_a_rung_decision(db)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name="kf", storage=f"sqlite:///{db}")
    before = {t.number: (t.state, t.user_attrs.get(ATTR_RUNGS)) for t in study.trials
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    again = subprocess.run([qkvnas, "run", "f.toml"], cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="kf", storage=f"sqlite:///{db}")
    after = {t.number: (t.state, t.user_attrs.get(ATTR_RUNGS)) for t in study.trials}
    assert all(after[n] == v for n, v in before.items())  # every decision recorded before the kill kept
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    killed = [t for t in study.trials if t.user_attrs.get("stale")]
    assert killed and all(t.state == TrialState.FAIL for t in killed)  # the one between rungs: requeued
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") in {k.number for k in killed}]
    assert retried and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in retried)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 6
    assert study.get_trials(states=(TrialState.PRUNED,))  # Ray's scheduler stopped some at a rung

"""Several workers on one study: two concurrent ``qkvnas run`` processes on a PostgreSQL
database and on a journal file, one SIGKILLed mid-trial and started again. Every trial told
before the kill is kept, none is left RUNNING, no design is trained twice (a killed trial's
retry aside) and the workers together stop at the target exactly. Two workers on one SQLite
file: the second is refused in one line. A remote worker's trial is taken over only once its
heartbeat has stopped."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from nas.engine.storage import SQLiteLock, open_storage
from tests.conftest import tiny_study
from tests.postgres import postgres_url  # noqa: F401 - the fixture

# pytest resets the warning filters that nas.engine.storage sets: Study.ask's heartbeat warning again
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
QKVNAS = str(Path(sys.executable).with_name("qkvnas"))
TRIALS = 8  # of the paper space's 12 designs: room for every trial to be a new one
PASSWORD_VAR = "QKVNAS_STORAGE_PASSWORD"


@pytest.fixture
def sandbox():
    root = Path(tempfile.mkdtemp(prefix="qkm", dir="/tmp"))  # short: Ray's socket paths
    env = os.environ | {"TMPDIR": str(root), "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    yield root, env
    shutil.rmtree(root, ignore_errors=True)


def password_from_env(url: str) -> tuple[str, str]:
    """(the URL with its password as ${QKVNAS_STORAGE_PASSWORD}, the password)."""
    m = re.match(r"^([^:]+://[^:/@]*:)([^@]*)@(.*)$", url)
    assert m, f"the test database URL has no password: {url.split('@')[-1]}"
    return f"{m[1]}${{{PASSWORD_VAR}}}@{m[3]}", m[2]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, existing=True))


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    try:
        return load(url, name).get_trials(deepcopy=False)
    except (KeyError, ValueError):  # not created yet
        return []


def start_worker(root: Path, env: dict, folder: str) -> subprocess.Popen:
    """``qkvnas run s.toml`` in its own folder (as on its own machine), in its own process group."""
    cwd = root / folder
    cwd.mkdir(exist_ok=True)
    shutil.copy(root / "s.toml", cwd / "s.toml")
    log = open(root / f"{folder}.log", "a")
    return subprocess.Popen([QKVNAS, "run", "s.toml"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(root.glob("*.log")))


def is_counted(t: FrozenTrial) -> bool:
    return t.state.is_finished() and not t.user_attrs.get("stale")


def kill_one_mid_trial(root: Path, env: dict, url: str, name: str, timeout: float = 600) -> dict:
    """Two workers; SIGKILL the first while it trains a trial (after some trial is complete),
    start it again, wait for both; returns the figures and the trials told before the kill."""
    a, b = start_worker(root, env, "a"), start_worker(root, env, "b")
    deadline = time.monotonic() + timeout
    while True:
        trials = trials_of(url, name)
        mine = [t for t in trials if t.state == TrialState.RUNNING and "spec_hash" in t.user_attrs
                and (t.user_attrs.get("worker") or {}).get("pid") == a.pid]
        if mine and any(t.state == TrialState.COMPLETE for t in trials):
            break
        assert a.poll() is None, f"worker a ended before the kill:\n{logs(root)}"
        assert time.monotonic() < deadline, logs(root)
        time.sleep(0.05)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    before = {t.number: t for t in trials_of(url, name) if t.state == TrialState.COMPLETE}
    again = start_worker(root, env, "a")
    for proc in (b, again):
        assert proc.wait(timeout=timeout) == 0, logs(root)
    return {"killed": [t.number for t in mine], "before": before}


def check_study(url: str, name: str, killed: list[int], before: dict[int, FrozenTrial]) -> dict:
    trials = load(url, name).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    for number, trial in before.items():  # every trial told before the kill, kept as it was
        assert by_number[number].values == trial.values and by_number[number].user_attrs == trial.user_attrs
    counted = [t for t in trials if is_counted(t)]
    trained = [t for t in counted if "duplicate_of" not in t.user_attrs]
    twice = {h: n for h, n in collections.Counter(t.user_attrs["spec_hash"] for t in trained).items() if n > 1}
    stale = [t for t in trials if t.user_attrs.get("stale") and not t.user_attrs.get("surplus")]
    retried = {t.user_attrs.get("retry_of") for t in counted}
    figures = {
        "complete_before_kill": len(before), "killed_trials": killed, "counted_after": len(counted),
        "trials_in_storage": len(trials), "interrupted": len(stale),
        "surplus": sum(1 for t in trials if t.user_attrs.get("surplus")),
        "copied_repeats": sum(1 for t in counted if "duplicate_of" in t.user_attrs), "trained_twice": twice,
        "running_left": sum(1 for t in trials if t.state == TrialState.RUNNING),
        "waiting_left": sum(1 for t in trials if t.state == TrialState.WAITING),
    }
    print(f"\nmulti-worker figures: {json.dumps(figures)}")
    assert figures["running_left"] == 0 and figures["waiting_left"] == 0, figures
    assert len(counted) == TRIALS, figures  # the target, exactly: not overshot by the two workers
    assert not twice and figures["copied_repeats"] == 0, figures  # 12 designs for 8 trials: none repeated
    assert set(killed) <= {t.number for t in stale} and set(killed) <= retried, figures  # the killed trial ran again
    return figures


@pytest.mark.slow
def test_two_workers_on_postgresql_one_killed(sandbox, postgres_url) -> None:  # noqa: F811
    root, env = sandbox
    name = f"mw-{uuid.uuid4().hex[:8]}"
    url_file, password = password_from_env(postgres_url)
    (root / "s.toml").write_text(f'storage = "{url_file}"\n' + tiny_study(name=name, trials=TRIALS, tokens=8 * 32 * 40))
    env = env | {PASSWORD_VAR: password}
    os.environ[PASSWORD_VAR] = password  # this process reads the study too
    try:
        run = kill_one_mid_trial(root, env, url_file, name)
        check_study(url_file, name, run["killed"], run["before"])
    finally:
        os.environ.pop(PASSWORD_VAR, None)
    for folder in ("a", "b"):  # the password is in neither config.json nor the exported study.json
        for path in (root / folder / "studies" / name).rglob("*.json"):
            assert password not in path.read_text(), path
    assert password not in logs(root)


@pytest.mark.slow
def test_two_workers_on_a_journal_one_killed(sandbox) -> None:
    root, env = sandbox
    url = f"journal:{root / 'study.journal'}"
    (root / "s.toml").write_text(f'storage = "{url}"\n' + tiny_study(name="mwj", trials=TRIALS, tokens=8 * 32 * 40))
    run = kill_one_mid_trial(root, env, url, "mwj")
    check_study(url, "mwj", run["killed"], run["before"])


def test_a_second_worker_on_one_sqlite_file_is_refused(sandbox) -> None:
    root, env = sandbox
    (root / "s.toml").write_text(tiny_study(name="one"))
    url = f"sqlite:///{(root / 'studies' / 'one' / 'study.db').resolve()}"
    with SQLiteLock(url, "one"):  # the first worker
        done = subprocess.run([QKVNAS, "run", "s.toml"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "already being run by pid" in lines[0], done.stderr
    assert "journal:PATH" in lines[0] and "PostgreSQL" in lines[0]


def test_a_remote_workers_trial_is_taken_over_only_when_its_heartbeat_stops(postgres_url, monkeypatch) -> None:  # noqa: F811
    from nas.engine import heartbeat, storage
    from nas.engine.record import ATTR_WORKER
    from nas.engine.recovery import recover_stale_trials

    monkeypatch.setattr(storage, "HEARTBEAT_S", 1)
    monkeypatch.setattr(storage, "GRACE_S", 3)
    study = optuna.create_study(study_name=f"hb-{uuid.uuid4().hex[:8]}", storage=open_storage(postgres_url),
                                directions=["minimize"])
    remote = {"host": "another-machine", "pid": 1, "started": None, "platform": "Linux"}
    gone, live = study.ask(), study.ask()
    for trial in (gone, live):
        trial.suggest_int("x", 0, 9)
        trial.set_user_attr(ATTR_WORKER, remote)
    study._storage.record_heartbeat(gone._trial_id)  # one stamp, then silence: its worker died
    heartbeat.track(study, live)  # stamped every second by this process
    assert recover_stale_trials(study, all_running=False) == []  # both stamped just now
    time.sleep(5)
    assert recover_stale_trials(study, all_running=False) == [gone.number]
    assert study.trials[live.number].state == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["retry_of"] for t in waiting] == [gone.number]
    study.tell(live, 1.0)


def test_a_trial_asked_when_the_trials_before_it_fill_the_target_is_not_run(tmp_path) -> None:
    """Two workers ask for the last places at the same moment (three trials for a target of
    two): the one whose trials before it fill the target steps back, untrained and uncounted."""
    from nas.config import load_config
    from nas.engine.job import no_report
    from nas.engine.record import count_done, counts
    from nas.study.job import StudyJob

    url = f"journal:{tmp_path / 's.journal'}"
    (tmp_path / "s.toml").write_text(f'storage = "{url}"\ndirectory = "{tmp_path / "st"}"\n'
                                     + tiny_study(name="surplus", trials=2))
    job = StudyJob(load_config(tmp_path / "s.toml"))
    study = job.open_study(open_storage(url))
    asked = [study.ask() for _ in range(3)]  # worker 1, worker 2, worker 1 again, before any suggest
    payloads = [job.suggest(t) for t in asked]
    assert [bool(p.get("surplus")) for p in payloads] == [False, False, True]
    job.tell(study, asked[2], job.execute(payloads[2], no_report))  # returns at once: nothing is trained
    last = study.trials[asked[2].number]
    assert last.state == TrialState.FAIL and last.user_attrs["surplus"] and "fill the target" in last.user_attrs["reason"]
    assert "spec_hash" not in last.user_attrs  # no design was sampled for it
    c = counts(study)
    assert (c.surplus, c.stale, c.running, count_done(study), job.remaining(study)) == (1, 0, 2, 0, 0)

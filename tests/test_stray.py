"""A run leaves no process and no scratch folder behind: a SIGKILL of the driver takes the local
Ray with it (the watchdog), and the next run removes the scratch folders of dead runs, never a
live run's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.engine import scratch, watchdog
from nas.engine.recovery import worker_identity
from nas.engine.storage import open_storage
from tests.conftest import tiny_study
from tests.procs import Run, sandbox, training, wait_gone, wait_until  # noqa: F401  (sandbox: a fixture)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _folder(root: Path, name: str, owner: dict | None) -> Path:
    folder = root / f"{scratch.PREFIX}{name}"
    (folder / "session_x" / "logs").mkdir(parents=True)
    if owner is not None:
        (folder / scratch.OWNER_FILE).write_text(json.dumps(owner))
    return folder


def test_the_folders_of_dead_runs_go_and_their_processes_with_them(tmp_path) -> None:
    me = worker_identity()
    dead = _folder(tmp_path, "dead", me | {"pid": _dead_pid()})
    reused = _folder(tmp_path, "reused", me | {"started": "1"})  # this pid, but another process's start time
    live = _folder(tmp_path, "live", me)
    unowned = _folder(tmp_path, "unowned", None)  # being created, or by an older qkvnas: left alone
    elsewhere = _folder(tmp_path, "elsewhere", me | {"host": "another-host", "pid": _dead_pid()})
    other = tmp_path / "ray-not-ours"
    other.mkdir()
    # A process the dead run left: it carries the dead folder's marker, as a Ray worker would.
    orphan = subprocess.Popen(SLEEPER, env=os.environ | {watchdog.MARKER: str(dead)}, start_new_session=True)
    try:
        removed = scratch.remove_dead_folders(str(tmp_path))
        assert sorted(removed) == sorted([str(dead), str(reused)])
        assert orphan.wait(timeout=30) == -signal.SIGKILL
    finally:
        orphan.kill()
    assert not dead.exists() and not reused.exists()
    assert live.is_dir() and unowned.is_dir() and elsewhere.is_dir() and other.is_dir()


DRIVER = textwrap.dedent("""
    import os, subprocess, sys, time
    from nas.engine import watchdog
    folder = sys.argv[1]
    dog = watchdog.Watchdog(folder)
    os.environ[watchdog.MARKER] = folder
    # a "worker" in its own session (it outlives its parent), and one retitled as Ray's agents
    # are, which holds its log open in the folder instead of carrying the marker
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    env = {k: v for k, v in os.environ.items() if k != watchdog.MARKER}
    log = open(os.path.join(folder, "agent.log"), "w")
    subprocess.Popen(["bash", "-c", "exec -a ray::FakeAgent sleep 600"], stdout=log, env=env, start_new_session=True)
    print("ready", flush=True)
    time.sleep(600)
""")


def test_the_watchdog_ends_the_session_when_its_driver_dies(tmp_path) -> None:
    """Without Ray: a driver that starts the watchdog and two long-lived children is killed."""
    folder = tmp_path / f"{scratch.PREFIX}w"
    folder.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline() == "ready\n"
        time.sleep(0.5)
        children = watchdog.session_processes(str(folder), exclude=frozenset({driver.pid, os.getpid()}))
        assert len(children) == 2, children
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        t0 = time.monotonic()
        while watchdog.session_processes(str(folder)) and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        assert not watchdog.session_processes(str(folder))
        for _ in range(100):  # the folder goes after its processes
            if not folder.exists():
                break
            time.sleep(0.1)
        assert not folder.exists()
    finally:
        for pid in watchdog.session_processes(str(folder)):
            os.kill(pid, signal.SIGKILL)
        driver.kill()


def _complete(root: Path) -> dict[int, tuple[float, ...]]:
    url = f"sqlite:///{root / 'studies' / 'stray' / 'study.db'}"
    study = optuna.load_study(study_name="stray", storage=open_storage(url, existing=True))
    return {t.number: tuple(t.values) for t in study.get_trials(states=(TrialState.COMPLETE,))}


def _name(title: str) -> str:
    """"raylet", "watchdog.py", "ray::IDLE", "qkvnas": what a process is, for the test's report."""
    words = title.split() or ["?"]
    word = next((w for w in words[1:] if w.endswith(".py") or w == str(Path(sys.executable).with_name("qkvnas"))),
                words[0]) if "python" in words[0] else words[0]
    return word.rsplit("/", 1)[-1]


@pytest.mark.slow
def test_a_sigkilled_driver_leaves_no_process_and_the_next_run_cleans_up(sandbox) -> None:  # noqa: F811
    root, env = sandbox
    tmp = Path(env["TMPDIR"])
    (root / "s.toml").write_text(tiny_study(name="stray", trials=4, tokens=8 * 32 * 800))
    db = root / "studies" / "stray" / "study.db"
    run = Run(["run", "s.toml"], root, env)
    try:
        wait_until(lambda: training(db, run, complete=1), run, 300)
        before = run.processes()
        folders = list(tmp.glob(f"{scratch.PREFIX}*"))
        done = _complete(root)
        os.kill(run.proc.pid, signal.SIGKILL)  # the driver only, as a crash or the OOM killer would
        run.proc.wait()
        seconds, left = wait_gone(run, 30)
    finally:
        run.kill_all()
    assert not left, f"left {seconds:.0f} s after the kill: {left}"
    assert len(folders) == 1 and not folders[0].exists()  # the watchdog removed the scratch folder
    names = sorted(_name(title) for title in before.values())
    print(f"\n{len(before)} processes of the run before the kill ({', '.join(names)}); "
          f"none left {seconds:.1f} s after it; {len(done)} trial(s) complete before the kill")

    # A dead run's folder (its watchdog killed too) and a live run's: the next run removes the first only.
    dead = _folder(tmp, "dead", worker_identity() | {"pid": run.proc.pid})
    live = _folder(tmp, "live", worker_identity())
    again = Run(["resume", "stray"], root, env)
    try:
        assert again.wait(600) == 0, again.output()
    finally:
        again.kill_all()
    assert not dead.exists() and live.is_dir()
    assert sorted(p.name for p in tmp.glob(f"{scratch.PREFIX}*")) == [live.name]
    after = _complete(root)
    assert len(after) == 4 and all(after[n] == values for n, values in done.items())
    assert not again.processes()
    print(f"after the resume: {len(after)} complete, the {len(done)} from before the kill unchanged")

"""The study engine through Ray, as users run it: real `qkvnas` subprocesses, Ctrl-C, SIGKILL,
resume, and a real local Ray cluster started with `ray start --head` on loopback."""
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from nas.engine import attrs
from nas.model import build_model
from nas.study import open_storage
from search_spaces import ArchSpec
from tests.conftest import tiny_study

pytestmark = pytest.mark.slow
QKVNAS = str(Path(sys.executable).with_name("qkvnas"))
RAY = str(Path(sys.executable).with_name("ray"))

STUDY = tiny_study(name="{name}", trials="{trials}", tokens="{tokens}", extra="""[constraints]
max_kv_cache_bytes_per_token = 50
[sampler]
name = "random"
seed = {seed}
[resources]
cpus_per_trial = 1
max_concurrent = {concurrent}
""")


@pytest.fixture
def sandbox():
    """A working dir, an empty HOME and a short system temp dir (Ray's socket paths must stay
    under 107 bytes), so the test can see everything a run writes."""
    root = Path(tempfile.mkdtemp(prefix="qkr", dir="/tmp"))
    for name in ("work", "home", "tmp"):
        (root / name).mkdir()
    env = os.environ | {"HOME": str(root / "home"), "TMPDIR": str(root / "tmp"), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    yield root, env
    shutil.rmtree(root, ignore_errors=True)


def write_study(root, name, *, trials, tokens=2048, concurrent=1, seed=0):
    path = root / "work" / f"{name}.toml"
    path.write_text(STUDY.format(name=name, trials=trials, tokens=tokens, concurrent=concurrent, seed=seed))
    return path


def start(args, root, env):
    """A `qkvnas` process in its own session, so that what it leaves behind can be cleaned up."""
    log = open(root / f"log-{time.monotonic_ns()}.txt", "w+")
    proc = subprocess.Popen([QKVNAS, *args], cwd=root / "work", env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log = log
    return proc


def output(proc):
    proc.log.seek(0)
    return proc.log.read()


def finish(proc, timeout):
    try:
        proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Ray helpers of a killed run, in the run's session
    return proc.returncode, output(proc)


def load(root, name):
    url = f"sqlite:///{root / 'work' / 'studies' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=open_storage(url, existing=True))


def wait_until(predicate, timeout, proc):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the run may be creating the study right now
            if predicate():
                return
        assert proc.poll() is None, f"qkvnas exited early:\n{output(proc)}"
        time.sleep(0.1)
    raise AssertionError(f"timed out; output so far:\n{output(proc)}")


def finished(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.FAIL)
            and not t.user_attrs.get("stale")]


def test_interrupt_kill_resume_export(sandbox):
    """Ctrl-C stops cleanly; SIGKILL loses no completed trial; resume reaches the target with no
    RUNNING trial; the run writes nothing outside the study dir and the system temp dir."""
    root, env = sandbox
    write_study(root, "faults", trials=7, tokens=8 * 32 * 300)  # ~2 s a trial on an idle core: time to kill one

    run = start(["run", "faults.toml"], root, env)
    wait_until(lambda: len(finished(load(root, "faults"))) >= 1, 240, run)
    run.send_signal(signal.SIGINT)
    code, text = finish(run, 120)
    assert code == 130, text
    assert "Continue with: qkvnas resume faults" in text
    study = load(root, "faults")
    assert not study.get_trials(states=(TrialState.RUNNING,))

    resumed = start(["resume", "faults"], root, env)
    before = len(finished(study))
    def training_again():  # a trial that trains: infeasible and repeated designs finish at once
        study = load(root, "faults")
        busy = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                if (datetime.datetime.now() - t.datetime_start).total_seconds() > 0.5]
        return len(finished(study)) > before and busy

    wait_until(training_again, 240, resumed)
    done = {t.number: t.values for t in finished(load(root, "faults"))}
    os.kill(resumed.pid, signal.SIGKILL)  # the driver only, as a crash would
    finish(resumed, 30)
    left_running = load(root, "faults").get_trials(states=(TrialState.RUNNING,))
    assert left_running, "the kill was meant to interrupt a trial"

    code, text = finish(start(["resume", "faults"], root, env), 300)
    assert code == 0, text
    assert "trials" in text and "marked failed and queued again" in text
    study = load(root, "faults")
    assert len(finished(study)) == 7 and not study.get_trials(states=(TrialState.RUNNING,))
    after = {t.number: t.values for t in finished(study)}
    assert all(after[n] == values for n, values in done.items())  # no completed trial lost
    retried = {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs}
    assert {t.number for t in left_running} <= retried

    export = root / "work" / "studies" / "faults" / "export"
    assert f"written to {export / 'pareto.parquet'}" in text
    front = pq.read_table(export / "pareto.parquet").to_pylist()
    assert sorted(r["number"] for r in front) == sorted(t.number for t in study.best_trials)
    for row in front:
        spec = ArchSpec.load(str(export / "specs" / f"{row['spec_hash']}.json"))
        assert sum(p.numel() for p in build_model(spec).parameters()) == row["cost_params"]

    # Under $HOME only matplotlib's own font cache (the export's plot); nothing of Ray's.
    written = {str(p.relative_to(root / "home")) for p in (root / "home").rglob("*") if p.is_file()}
    assert all(path.startswith((".cache/matplotlib/", ".config/matplotlib/")) for path in written), written
    assert sorted(p.name for p in (root / "work").iterdir()) == ["faults.toml", "studies"]
    code, text = finish(start(["status", "faults"], root, env), 60)
    assert code == 0 and "7/7 trials done" in text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(sandbox):
    """`ray start --head` on loopback. Stopped by ending its own process group: `ray stop`
    would kill every Ray process of this user on the machine, not just this cluster's."""
    root, env = sandbox
    env = env | {"RAY_AUTH_MODE": "disabled"}
    port = free_port()
    ports = {f"--{name}": str(free_port()) for name in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")}
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         '--resources={"qkvnas_bench": 1}',  # a custom resource, for resources.target
         "--include-dashboard=false", f"--temp-dir={root / 'tmp' / 'ray'}", "--block",
         *[f"{k}={v}" for k, v in ports.items()]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"127.0.0.1:{port}", root, env
    finally:  # SIGTERM would drain for 30 s; a test cluster need not stop gracefully
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)


def test_studies_on_a_running_ray_cluster(ray_cluster):
    """A study attached with --ray-address; then one whose every trial diverges, which fails
    each trial with its reason and still finishes."""
    address, root, env = ray_cluster
    # Random sampler, seed 1: kv bytes 16, 32, 128, 64 (the last two over the limit; no design is
    # proposed twice while the space has others, nas/engine/sampler.py).
    # Its trials ask for the node's custom resource: they run there (the only node that has it).
    write_study(root, "cluster", trials=4, concurrent=2, seed=1)
    code, text = finish(start(["run", "cluster.toml", "--ray-address", address,
                               "--set", 'resources.target="resource:qkvnas_bench"'], root, env), 300)
    assert code == 0, text
    study = load(root, "cluster")
    trials = finished(study)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials) and study.best_trials
    infeasible = [t for t in trials if attrs.constraint_values(t)["max_kv_cache_bytes_per_token"] > 0]
    assert [t.number for t in infeasible] == [2, 3]
    assert all(attrs.read(t)["train"] is None and attrs.objective_values(t, ["val_loss"])["val_loss"] == float("inf")
               for t in infeasible)  # never trained (told to Optuna as a finite stand-in)
    # cpus_per_trial = 1: each trial's torch ran one thread, whatever the node has
    assert all(attrs.read(t)["hardware"]["threads"] == 1 for t in trials if "hardware" in attrs.read(t))
    assert any("hardware" in attrs.read(t) for t in trials)
    for trial in trials:  # a repeated design is either trained again or copied, never different
        if "duplicate_of" in trial.user_attrs:
            assert trial.values == study.trials[trial.user_attrs["duplicate_of"]].values

    # A target that no node has is refused before any trial runs, never measured elsewhere.
    write_study(root, "elsewhere", trials=1)
    code, text = finish(start(["run", "elsewhere.toml", "--ray-address", address,
                               "--set", 'resources.target="accelerator:H100"'], root, env), 300)
    assert code == 2 and "accelerator_type:H100" in text and "qkvnas_bench" in text, text
    assert not finished(load(root, "elsewhere"))

    write_study(root, "diverge", trials=2)
    code, text = finish(start(["run", "diverge.toml", "--set", "budget.lr=1000.0", "--set", "constraints={}",
                               "--ray-address", address], root, env), 300)
    assert code == 1 and "qkvnas run: every trial failed (2): diverged ×2 (e.g. " in text, text  # exported, then exit 1
    study = load(root, "diverge")
    assert len(finished(study)) == 2 and all(t.state == TrialState.FAIL for t in study.trials)
    assert all(t.user_attrs["reason"].startswith("diverged:") for t in study.trials)
    assert json.loads((root / "work" / "studies" / "diverge" / "export" / "study.json").read_text())["front"] == []

"""A Ray worker node lost mid-trial: its trial is requeued (not lost, not counted), the trials
completed before stay as they were, and the study finishes on a node that joins later.

The cluster: a head on loopback with no CPUs (so no trial runs there) and a worker node with
one; the worker node is killed with SIGKILL (its whole process group: raylet and workers) while
a trial trains on it, and a second worker node is started after the trial has been requeued."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.engine.recovery import ATTR_LOST
from nas.engine.storage import open_storage
from tests.conftest import tiny_study
from tests.procs import RAY, Run, sandbox, states, training, wait_until  # noqa: F401  (sandbox: a fixture)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(root: Path, env: dict[str, str], *, head_port: int | None = None, address: str | None = None,
               cpus: int = 0) -> subprocess.Popen:
    """`ray start --block` in its own session (ended by killing its process group: `ray stop`
    would stop every Ray of this user on the machine)."""
    ports = {f"--{name}": str(free_port()) for name in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")}
    args = [RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--block",
            *[f"{k}={v}" for k, v in ports.items()]]
    if head_port is not None:
        args += ["--head", f"--port={head_port}", "--include-dashboard=false", f"--temp-dir={root / 'tmp' / 'ray'}"]
    else:
        args += [f"--address={address}"]
    log = open(root / f"node-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(node: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    node.wait(timeout=30)


def load(root: Path) -> optuna.Study:
    url = f"sqlite:///{root / 'studies' / 'lost' / 'study.db'}"
    return optuna.load_study(study_name="lost", storage=open_storage(url, existing=True))


def test_a_trial_on_a_lost_node_is_requeued_and_the_study_finishes(sandbox) -> None:  # noqa: F811
    root, env = sandbox
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [start_node(root, env, head_port=port)]
    run = None
    try:
        nodes.append(start_node(root, env, address=address, cpus=1))
        (root / "s.toml").write_text(tiny_study(name="lost", trials=3, tokens=8 * 32 * 1500))
        db = root / "studies" / "lost" / "study.db"
        run = Run(["run", "s.toml", "--ray-address", address], root, env)
        # The trial runs on the worker node: the only one with a CPU. `run.processes()` sees the
        # node's actor too (the node runs with the sandbox's TMPDIR).
        wait_until(lambda: training(db, run, complete=1), run, 400)
        done = {t.number: tuple(t.values) for t in load(root).get_trials(states=(TrialState.COMPLETE,))}
        running = [n for n, (state, _) in states(db).items() if state == "RUNNING"]
        stop_node(nodes.pop())  # the worker node dies mid-trial
        t0 = time.monotonic()

        def requeued() -> bool:
            study = load(root)
            lost = [t for t in study.trials if t.number in running and t.state == TrialState.FAIL]
            return bool(lost) and any(t.user_attrs.get(ATTR_LOST) == 1 for t in study.trials)

        wait_until(requeued, run, 120)
        noticed = time.monotonic() - t0
        study = load(root)
        lost = study.trials[running[0]]
        assert lost.user_attrs["stale"] and "its Ray worker was lost" in lost.user_attrs["reason"], lost.user_attrs
        retry = [t for t in study.trials if t.user_attrs.get("retry_of") == lost.number]
        assert len(retry) == 1 and retry[0].state in (TrialState.WAITING, TrialState.RUNNING)
        assert sum(1 for t in study.trials if t.state == TrialState.COMPLETE) == len(done)  # not counted

        nodes.append(start_node(root, env, address=address, cpus=1))  # the study goes on when a node joins
        code = run.wait(600)
        text = run.output()
        assert code == 0, text
        assert f"trial {lost.number} lost its Ray worker" in text
        study = load(root)
        complete = {t.number: tuple(t.values) for t in study.get_trials(states=(TrialState.COMPLETE,))}
        assert len(complete) == 3 and all(complete[n] == values for n, values in done.items())
        assert retry[0].number in complete
        assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
        print(f"\n{len(done)} trial(s) complete before the node was killed; trial {lost.number} requeued "
              f"{noticed:.1f} s after; {len(complete)} complete at the end, the earlier ones unchanged")
    finally:
        if run is not None:
            run.kill_all()
        for node in nodes:
            stop_node(node)

"""SIGTERM and SIGHUP stop a run as Ctrl-C does (trials requeued, the resume hint, no Ray stack
dump, nothing left running), with the shell's exit codes; a job whose every trial failed exits 1
with one line that says why."""
from __future__ import annotations

import io
import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from nas.engine import outcome
from nas.engine.lifecycle import EngineRun
from nas.engine.signals import STOP_SIGNALS, Stop, stop_on_signals
from nas.engine.storage import open_storage
from tests.conftest import tiny_study, tiny_suite
from tests.procs import Run, sandbox, states, training, wait_gone, wait_until  # noqa: F401  (sandbox: a fixture)

STACK_DUMP = ("SIGTERM received", "logging.cc", "*** ", "Traceback")


def test_stop_signals_raise_keyboard_interrupt_and_the_old_handlers_come_back() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        stop = Stop()
        with pytest.raises(KeyboardInterrupt), stop_on_signals(stop):
            signal.raise_signal(signum)
            time.sleep(1)  # the handler runs at the next bytecode: never reached
        assert stop.signum == signum
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    stop = Stop()
    with stop_on_signals(stop):
        stop.install()  # again, as after ray.init: still one restore to the handlers of before
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup: it stays ignored
    try:
        with stop_on_signals(Stop()):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before[signal.SIGHUP])


def _study(reasons: list[str | None], stale: int = 0) -> optuna.Study:
    study = optuna.create_study()
    for reason in reasons:
        trial = study.ask()
        if reason is None:
            study.tell(trial, 1.0)
            continue
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    for _ in range(stale):
        trial = study.ask()
        trial.set_user_attr("stale", True)
        study.tell(trial, state=TrialState.FAIL)
    return study


def _run(study: optuna.Study, *, interrupted: bool = False, signum: int | None = None) -> EngineRun:
    outcome.record_signal(signum)
    return outcome.record(EngineRun(study=study, interrupted=interrupted, stale=(), done_before=0, finished=0,
                                    signal=signum))


def test_exit_codes_of_a_finished_an_interrupted_and_an_all_failed_run() -> None:
    failed = _study(["diverged: non-finite training loss (nan) at step 3", "diverged: gradient norm 1e+05 > 1e+04 at step 9",
                     "ZeroDivisionError: division by zero"], stale=2)
    err = io.StringIO()
    _run(failed)
    assert outcome.exit_code("qkvnas run", err) == 1
    assert err.getvalue() == ("qkvnas run: every trial failed (3): diverged ×2 (e.g. non-finite training loss (nan) "
                              "at step 3); ZeroDivisionError ×1 (e.g. division by zero)\n")
    assert outcome.exit_code("qkvnas run") == 0  # read once: a later command starts from nothing
    for signum, code in ((None, 130), (signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        _run(failed, interrupted=True, signum=signum)
        assert outcome.exit_code("qkvnas run") == code
        _run(failed, interrupted=True, signum=signum)
        assert outcome.interrupted_code() == code
    assert outcome.interrupted_code() == 130  # a KeyboardInterrupt with no run behind it
    _run(_study(["diverged: at step 1", None]))  # one trial ran: the study did its work
    assert outcome.exit_code("qkvnas run") == 0
    _run(_study([], stale=1))  # nothing ended yet (only interrupted trials): not a failure
    assert outcome.exit_code("qkvnas run") == 0


def _load(root) -> optuna.Study:
    url = f"sqlite:///{root / 'studies' / 'sig' / 'study.db'}"
    return optuna.load_study(study_name="sig", storage=open_storage(url, existing=True))


def _assert_stopped_cleanly(run: Run, code: int, expected: int) -> None:
    text = run.output()
    assert code == expected, text
    assert "Continue with: qkvnas resume " in text, text
    assert not any(mark in text for mark in STACK_DUMP), text
    seconds, left = wait_gone(run, 30)
    assert not left, f"left after {seconds:.0f} s: {left}"
    study = _load(run.root)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = [t.number for t in study.trials if t.user_attrs.get("stale")]
    queued = [t.user_attrs.get("retry_of") for t in study.get_trials(states=(TrialState.WAITING,))]
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    assert interrupted and set(interrupted) <= retried and interrupted[-1] in queued, (interrupted, queued)
    print(f"exit {code} after the signal; no process left after {seconds:.1f} s; interrupted {interrupted}, "
          f"queued again {queued}")


@pytest.mark.slow
def test_sigterm_and_sighup_stop_a_run_as_ctrl_c_does(sandbox) -> None:  # noqa: F811
    root, env = sandbox
    (root / "s.toml").write_text(tiny_study(name="sig", trials=3, tokens=8 * 32 * 1000))
    db = root / "studies" / "sig" / "study.db"

    run = Run(["run", "s.toml"], root, env)
    wait_until(lambda: training(db, run), run, 300)
    os.kill(run.proc.pid, signal.SIGTERM)  # the driver only: `kill PID`
    _assert_stopped_cleanly(run, run.wait(120), 143)

    run = Run(["resume", "sig"], root, env)
    wait_until(lambda: training(db, run), run, 300)
    os.killpg(run.proc.pid, signal.SIGHUP)  # the whole group, as a closing terminal sends it, Ray's processes too
    _assert_stopped_cleanly(run, run.wait(120), 129)

    run = Run(["resume", "sig"], root, env)
    assert run.wait(600) == 0, run.output()
    study = _load(root)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


SUITE = tiny_suite(name="sigs", description="a signal test", seeds=4, steps=400)


@pytest.mark.slow
def test_sigterm_stops_a_probe_suite_in_process(sandbox) -> None:  # noqa: F811
    """The in-process executor and the command that ends on KeyboardInterrupt: 143 as well."""
    root, env = sandbox
    (root / "p.toml").write_text(SUITE)
    run = Run(["probe-suite", "--preset", "p.toml", "--out", "out"], root, env)
    db = root / "out" / "suite.db"
    wait_until(lambda: any(s == "COMPLETE" for s, _ in states(db).values()), run, 300)
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.wait(120) == 143, run.output()
    storage = open_storage(f"sqlite:///{db}", existing=True)
    name = optuna.get_all_study_summaries(storage, include_best_trial=False)[0].study_name
    study = optuna.load_study(study_name=name, storage=storage)
    assert not study.get_trials(states=(TrialState.RUNNING,))

"""How a command that ran the engine exits: non-zero unless its trials ran.

    interrupted (Ctrl-C, SIGTERM, SIGHUP)  →  128 + the signal: 130, 143, 129
    every trial of the job failed          →  1, after one line that counts the reasons
    otherwise                              →  0

A command runs one engine run per process, so the command line reads the last one here
instead of threading it through every API's summary.
"""
from __future__ import annotations

import signal
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from nas.engine.record import ATTR_REASON, is_stale

if TYPE_CHECKING:
    from nas.engine.lifecycle import EngineRun
    from nas.engine.progress import TextOut

_LAST: dict[str, Any] = {"run": None, "signal": None}  # this process's last run, and its stop signal


def record(run: EngineRun) -> EngineRun:
    _LAST["run"] = run
    return run


def record_signal(signum: int | None) -> None:
    """The stop signal of the last run (None: none, or Ctrl-C), also when the run raised."""
    _LAST["signal"] = signum


def last_run() -> EngineRun | None:
    run: EngineRun | None = _LAST["run"]
    return run


def interrupted_code() -> int:
    """The exit status of an interrupted command: 128 + the signal that stopped the last run,
    or Ctrl-C's 130 (also for a KeyboardInterrupt outside any run). Read once: the record is
    cleared, so a later command in the same process (tests) starts from nothing."""
    signum = _LAST["signal"]
    _LAST.update(run=None, signal=None)
    return 128 + int(signum or signal.SIGINT)


def exit_code(command: str, err: TextOut | None = None) -> int:
    """The exit status of a command after its engine run (see the module docstring), read once
    like ``interrupted_code``; the line on every trial failing goes to ``err`` (stderr),
    prefixed with ``command``."""
    run = last_run()
    if run is not None and run.interrupted:
        return interrupted_code()
    _LAST.update(run=None, signal=None)
    line = all_failed(run.study) if run is not None else None
    if line is None:
        return 0
    print(f"{command}: {line}", file=err or sys.stderr)
    return 1


def all_failed(study: optuna.Study) -> str | None:
    """"every trial failed (N): kind ×n (e.g. detail); ..." when the job's study has trials
    that ended and all of them FAIL (interrupted ones left out); else None."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    ended = [t for t in trials if not is_stale(t)]
    if not ended or any(t.state != TrialState.FAIL for t in ended):
        return None
    kinds: Counter[str] = Counter()
    example: dict[str, str] = {}
    for trial in ended:
        # "diverged: non-finite training loss (nan) at step 3" → kind "diverged": the details
        # differ between trials, the kind is what to count.
        reason = str(trial.user_attrs.get(ATTR_REASON) or "no reason recorded")
        kind, _, detail = reason.partition(": ")
        kinds[kind[:80]] += 1
        example.setdefault(kind[:80], detail[:100])
    parts = [f"{kind} ×{n}" + (f" (e.g. {example[kind]})" if example[kind] else "") for kind, n in kinds.most_common()]
    return f"every trial failed ({len(ended)}): " + "; ".join(parts)

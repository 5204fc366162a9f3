"""What a user sees while a job runs: one line per finished trial with done / target, the
time left, and every few trials the job's summary (a study's current front)."""
from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Protocol

import optuna
from optuna.trial import FrozenTrial

from nas.common import fmt_duration

if TYPE_CHECKING:
    from nas.engine.job import Job

SUMMARY_EVERY = 4  # show the job's summary after every this many finished trials


class TextOut(Protocol):
    """Where progress goes: a text stream, or a stand-in such as a probe suite's line callback."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class Progress:
    """The ETA comes from the durations of this run's trials: a resumed job does not count
    earlier runs, and Ray's start-up is not a cost every trial pays again."""

    def __init__(self, job: Job, study: optuna.Study, *, out: TextOut | None = None, enabled: bool = True) -> None:
        self.job, self.study = job, study
        self.out = out or sys.stdout
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.finished_here = 0
        self.durations: list[float] = []

    def start(self, header: str) -> None:
        self._print(header)

    def trial_finished(self, trial: FrozenTrial) -> None:
        self.finished_here += 1
        if trial.duration is not None:
            self.durations.append(trial.duration.total_seconds())
        done, target = self.job.progress(self.study)
        left = max(0, target - done)
        concurrency = self.job.resources.max_concurrent
        eta = sum(self.durations) / len(self.durations) * left / concurrency if self.durations else math.nan
        self._print(f"[{done}/{target}] {self.job.outcome(self.study, trial)} | left ~{fmt_duration(eta)}")
        if self.finished_here % SUMMARY_EVERY == 0 and left:
            self._summary(final=False)

    def finish(self, line: str) -> None:
        self._print(f"done in {fmt_duration(time.monotonic() - self.t0)}: {line}")
        self._summary(final=True)

    def _summary(self, *, final: bool) -> None:
        summary = self.job.summary(self.study, final=final)
        if summary:
            self._print(summary)

    def note(self, text: str) -> None:
        self._print(text)

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.out, flush=True)

"""What a user sees while a job runs: one line per finished trial with done / target, the
time left, every few trials the job's summary (a study's current front), and a finish line
with, for a study with a hypervolume reference point (nas/engine/hypervolume.py), its
hypervolume and how it grew. While trials run, a live line (nas/engine/live.py): each running
trial's design, time so far, phase and tokens trained."""
from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import FrozenTrial

from nas.common import fmt_duration
from nas.engine import hypervolume, live

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
        # The phase and tokens of a running trial: from the files its worker keeps in the job's folder.
        self.live = live.LiveLine(self.out, getattr(job, "live_folder", None))

    def start(self, header: str) -> None:
        self._print(header)
        if self.enabled:
            self.live.start()

    def close(self) -> None:
        """Stop the live line (the run ended, or was interrupted)."""
        self.live.close()

    def trial_started(self, number: int, payload: dict[str, Any]) -> None:
        """The executor started trial ``number``; its design comes from its worker's live file."""
        self.live.started(number, "")

    def trial_ended(self, number: int) -> None:
        """A trial that is not told here (requeued, lost its worker): no longer running."""
        self.live.ended(number)

    def trial_finished(self, trial: FrozenTrial) -> None:
        self.live.ended(trial.number)
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
        self.close()
        grown = hypervolume.study_text(self.study) if self.enabled else None
        self._print(f"done in {fmt_duration(time.monotonic() - self.t0)}: {line}" + (f"; {grown}" if grown else ""))
        self._summary(final=True)

    def _summary(self, *, final: bool) -> None:
        summary = self.job.summary(self.study, final=final)
        if summary:
            self._print(summary)

    def note(self, text: str) -> None:
        self._print(text)

    def _print(self, text: str) -> None:
        if self.enabled:
            with self.live.lock:
                self.live.clear()
                print(text, file=self.out, flush=True)

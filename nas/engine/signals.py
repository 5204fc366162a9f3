"""SIGTERM and SIGHUP stop a run as Ctrl-C does, and a command's exit status says how it ended.

A run is stopped by Ctrl-C (SIGINT), by ``kill`` or a scheduler's time limit (SIGTERM), or by its
terminal closing (SIGHUP). Each one raises ``KeyboardInterrupt`` in the driver, so all three take
the one path: the trials in flight are requeued, Ray is shut down in order and the resume hint is
printed. Without this, Python dies at once on SIGHUP, and on SIGTERM Ray's own handlers tear the
local cluster down under the running driver (a C++ stack dump, exit 1 or 134, trials left
RUNNING).

Ray's driver installs its handlers for SIGTERM in ``ray.init`` (a Python one, and a C++ one
that prints a stack dump): the engine calls ``Stop.install`` again once Ray is up, which puts
ours back in front of them until the run, Ray's shutdown included, is over; then the handlers
from before the run come back.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


@dataclass
class Stop:
    """The first stop signal a run received (None: none yet, or a KeyboardInterrupt that no
    handler of ours raised: Ctrl-C outside the main thread)."""

    signum: int | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        # Every signal raises, as a second Ctrl-C does: a stop that some callback swallowed
        # must not leave a run that no longer answers SIGTERM.
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def install(self) -> dict[int, Any]:
        """Make ``handler`` the handler of every stop signal that is not ignored (``nohup``
        ignores SIGHUP, a shell's background job SIGINT: they stay ignored); returns the ones
        it replaced. Outside the main thread Python cannot set handlers: nothing changes
        (Ctrl-C still interrupts the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, self.handler) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}


@contextlib.contextmanager
def stop_on_signals(stop: Stop) -> Iterator[Stop]:
    """While entered, each stop signal raises KeyboardInterrupt in the main thread and the
    first one is recorded in ``stop``; on the way out the handlers from before come back (a
    handler set meanwhile, by ray.init, is dropped with ours)."""
    previous = stop.install()
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)

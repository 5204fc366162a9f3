"""The per-node lock: measurements hold it exclusively, training holds it shared.

One flock on a file in the system temp dir (or $QKVNAS_LOCK_DIR), so every process and thread
on the node sees it: no two measurements overlap, and no measurement runs while a trial of a
measuring study trains (concurrent trials on one node would otherwise slow each other's timed
steps).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator

from nas.common import HAVE_FLOCK, flock, funlock

LOCK_FILE = "qkvnas-measure.lock"

_held = threading.local()  # this thread's hold: depth (0: none) and whether it is exclusive
_process_lock = threading.Lock()


def lock_path() -> str:
    return os.path.join(os.environ.get("QKVNAS_LOCK_DIR") or tempfile.gettempdir(), LOCK_FILE)


@contextlib.contextmanager
def node_lock(*, exclusive: bool) -> Iterator[float]:
    """Hold the node's lock, exclusively (measuring) or shared (training); yields the seconds
    spent waiting. Re-entrant within a thread: an exclusive hold covers any nested hold, a
    shared one only nested shared holds (a thread that trains cannot measure inside that block).
    """
    if getattr(_held, "depth", 0):
        if exclusive and not _held.exclusive:
            raise RuntimeError("this thread holds the node lock shared (training); measure outside that block")
        _held.depth += 1
        try:
            yield 0.0
        finally:
            _held.depth -= 1
        return
    with _flock(exclusive=exclusive) as waited:
        _held.depth, _held.exclusive = 1, exclusive
        try:
            yield waited
        finally:
            _held.depth = 0


def measurement_lock() -> contextlib.AbstractContextManager[float]:
    """Exclusive use of this node for one measurement; yields the seconds spent waiting.

    Every process and thread on the node that measures takes it, so no two measurements
    overlap. Re-entrant within a thread, so a caller may hold it around `measure()`, which
    takes it too.
    """
    return node_lock(exclusive=True)


@contextlib.contextmanager
def _flock(*, exclusive: bool) -> Iterator[float]:
    path = lock_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.perf_counter()
    # Read-only with O_CREAT: another user's lock file (mode 0644) can still be locked.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        if HAVE_FLOCK:
            flock(fd, exclusive=exclusive)
        elif exclusive:  # pragma: no cover - without flock, measurements are serialised in this process only
            _process_lock.acquire()
        try:
            yield time.perf_counter() - t0
        finally:
            if HAVE_FLOCK:
                funlock(fd)
            elif exclusive:  # pragma: no cover
                _process_lock.release()
    finally:
        os.close(fd)

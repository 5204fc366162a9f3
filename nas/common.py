"""Small helpers every part of qkvnas shares: atomic file writes, file locks that other
processes see, a torch thread count for a block of code, and how a duration is printed. One
copy each, so a fix lands everywhere."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks
    import fcntl
except ImportError:  # pragma: no cover - Windows: callers fall back to in-process locking
    fcntl = None  # type: ignore[assignment]

HAVE_FLOCK = fcntl is not None
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it over
    ``path``: a reader (or a process killed mid-write) never sees half a file. The folder is
    created if needed; the file gets the usual permissions (mkstemp makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=indent is not None) + "\n")


def flock(fd: int, *, exclusive: bool, wait: bool = True) -> bool:
    """Lock an open file (``flock``: every process on the machine sees it; closing the file
    releases it). False when ``wait`` is off and another process holds it. Without flock
    (Windows) it locks nothing and returns True: callers say what they do instead."""
    if fcntl is None:  # pragma: no cover
        return True
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        return False
    return True


def funlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def jsonable(value: Any) -> Any:
    """``value`` with ±inf and NaN written as strings, so that strict JSON (and Optuna's user
    attributes) can hold it; dicts and sequences converted throughout."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (None: as is), restored afterwards. Tiny models
    lose little on one thread, while two threads on a busy 2-core machine spin against each
    other: a 150-step probe run measured 3.9 s on one thread and 184 s on two, at load 9."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"

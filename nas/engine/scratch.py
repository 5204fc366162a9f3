"""The scratch folder of a run on Ray, ``qkvnas-ray-*`` in the system temp dir, and the local
Ray's processes: none of them outlives its run.

* The folder records its owner (``owner.json``: host, pid and start time of the driver). A run
  removes it at its end; a run killed with SIGKILL cannot, so every run first removes the
  folders of owners that are gone (on this host; a live run's folder is never touched, nor a
  folder without an owner file: it is being created, or an older qkvnas made it).
* A local Ray's processes carry the folder in their environment, and a watchdog ends them when
  the driver dies (``nas/engine/watchdog.py``); the next run also ends any a dead run left.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nas.common import atomic_write_json
from nas.engine import watchdog
from nas.engine.recovery import worker_alive, worker_identity

PREFIX = "qkvnas-ray-"  # short: Ray's socket paths under it must fit 107 bytes
OWNER_FILE = "owner.json"


@contextlib.contextmanager
def scratch_folder(*, local_ray: bool) -> Iterator[str]:
    """A fresh scratch folder with its owner recorded, removed at the end. ``local_ray``: this
    process is about to start a local Ray there; its processes are marked (the environment
    variable is set until the end) and watched."""
    remove_dead_folders()
    folder = tempfile.mkdtemp(prefix=PREFIX)
    atomic_write_json(Path(folder) / OWNER_FILE, worker_identity())
    dog = watchdog.Watchdog(folder) if local_ray and watchdog.supported() else None
    if dog is not None:
        os.environ[watchdog.MARKER] = folder
    try:
        yield folder
    finally:
        if dog is not None:
            os.environ.pop(watchdog.MARKER, None)
            dog.close()  # after ray.shutdown: it ends whatever Ray left running
        shutil.rmtree(folder, ignore_errors=True)


def remove_dead_folders(root: str | None = None) -> list[str]:
    """Remove the scratch folders in ``root`` (the system temp dir) whose owner is gone, first
    ending the Ray processes a dead run left there. Returns the folders removed."""
    removed = []
    for folder in sorted(Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*")):
        if not _owner_gone(folder):
            continue
        if watchdog.supported():
            watchdog.end_session(str(folder), exclude=frozenset({os.getpid()}))
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed


def _owner_gone(folder: Path) -> bool:
    """True only when the folder is this user's and its recorded owner is known to be dead."""
    try:
        if not folder.is_dir() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
            return False
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no owner file (yet), unreadable: not ours to judge
        return False
    try:
        return isinstance(owner, dict) and worker_alive(owner) is False
    except (KeyError, TypeError, ValueError):  # not an owner file this code wrote
        return False

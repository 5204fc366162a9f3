"""Optuna storage: a SQLite file, any SQLAlchemy URL, or ``journal:PATH``; and the lock that
keeps a SQLite study to one worker.

SQLite serves one worker at a time: a second run on the same file is refused
(``SQLiteLock``); several workers share a journal file or a PostgreSQL database.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from nas.common import HAVE_FLOCK, flock


def open_storage(url: str, *, existing: bool = False) -> BaseStorage:
    """A storage object for a URL: ``journal:PATH``, ``sqlite:///PATH`` or any SQLAlchemy URL.
    ``existing``: only open a storage that is already there (a reader must never create the
    tables while a starting run is creating them)."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.parent.is_dir() or (existing and not path.is_file()):
            raise ValueError(f"storage {url!r}: {path} does not exist; check the path")
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if existing and not path.is_file():
            raise ValueError(f"storage {url!r}: {path} does not exist; check the study name or path")
        path.parent.mkdir(parents=True, exist_ok=True)
        # A generous busy timeout: the status command may read while the run writes.
        storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, skip_table_creation=existing)
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # reconnect, so every pooled connection gets the pragmas
        return storage
    try:
        return RDBStorage(url, skip_table_creation=existing)
    except (ImportError, ModuleNotFoundError) as err:
        raise ValueError(f"storage {url!r} needs a database driver that is not installed ({err}); install it") from None
    except Exception as err:  # sqlalchemy raises many kinds for a bad URL
        raise ValueError(f"storage {url!r} cannot be opened: {err}; "
                         "give sqlite:///PATH, journal:PATH or a database URL") from None


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Write-ahead log with synchronous=NORMAL: a commit no longer waits for an fsync (one per
    user attribute made telling a trial cost ~0.2 s), readers do not block the writer, and a
    committed trial still survives the process being killed (only a power cut could lose the
    last commits)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def single_writer(url: str) -> bool:
    """A SQLite study has one worker (the lock holder): every RUNNING trial in it is its own."""
    return sqlite_path(url) is not None


class SQLiteLock:
    """Held by the one worker of a SQLite study, for the whole run. SQLite cannot serve several
    writers reliably, so a second worker is refused with what to use instead."""

    def __init__(self, url: str, study_name: str) -> None:
        self._path = sqlite_path(url)
        self._study_name = study_name
        self._fd: int | None = None

    def __enter__(self) -> SQLiteLock:
        if self._path is None or not HAVE_FLOCK:  # no flock (Windows): the single-worker check is skipped
            return self
        lock = self._path.with_name(self._path.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if not flock(self._fd, exclusive=True, wait=False):
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise ValueError(
                f"study {self._study_name!r} is already being run by {holder} on the SQLite file {self._path}; "
                "SQLite serves one worker at a time: to run several workers, set storage = \"journal:PATH\" "
                "(one machine or a shared file system) or a PostgreSQL URL in the study file"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

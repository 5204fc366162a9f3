"""Optuna storage: a SQLite file, any SQLAlchemy URL, or ``journal:PATH``; what a URL may show;
and the lock that keeps a SQLite study to one worker.

SQLite serves one worker at a time: a second run on the same file is refused
(``SQLiteLock``); several workers share a journal file or a PostgreSQL database. A database
URL may read its password from the environment (``postgresql://user:${QKVNAS_STORAGE_PASSWORD}@host/db``):
it is expanded only to connect, so the URL that is printed or stored names the variable, never
the password; a password written into the URL is shown and stored as ``***``, and such a stored
URL takes its password from ``$QKVNAS_STORAGE_PASSWORD``.
"""
from __future__ import annotations

import importlib.util
import os
import random
import re
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from nas.common import HAVE_FLOCK, flock

MASK = "***"
PASSWORD_ENV = "QKVNAS_STORAGE_PASSWORD"  # where a stored (masked) URL's password is read from
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# scheme://user:password@ — SQLAlchemy's own URL grammar: the password runs to the first '@'
# before the host (a literal '@' in it must be written %40).
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/@]*:)(?P<password>[^@]*)@")
# Importable module → the SQLAlchemy dialect+driver it serves; the first installed one wins.
POSTGRES_DRIVERS = (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg"))
# SQLAlchemy's driver name → (the module it imports, the package that installs it)
_DRIVERS = {"psycopg2": ("psycopg2", "psycopg2-binary"), "psycopg": ("psycopg", "psycopg[binary]"),
            "pg8000": ("pg8000", "pg8000"), "pymysql": ("pymysql", "pymysql"), "mysqldb": ("MySQLdb", "mysqlclient")}
# Optuna's heartbeat on a shared database (PostgreSQL, MySQL): each running trial is stamped
# every HEARTBEAT_S seconds by the process that runs it (nas/engine/heartbeat.py); one not
# stamped for GRACE_S (database time, so the machines' clocks need not agree) belongs to a
# worker that is gone. Generous: a live driver busy for a minute must not lose its trials.
HEARTBEAT_S = 30
GRACE_S = 300
TABLE_RACE_RETRIES = 5
# Study.ask warns on every call when the storage has a heartbeat, which qkvnas drives itself.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize",
                        category=UserWarning)


# ---- what a URL may show, and what it connects with ---------------------------------------
def mask_url(url: str) -> str:
    """The URL as it may be printed or stored: a literal password replaced by ``***``; a
    ``${VAR}`` password is kept (it names the variable, not the secret)."""
    m = _USERINFO.match(url)
    if not m or not m["password"] or _ENV.fullmatch(m["password"]):
        return url
    return f"{m['head']}{MASK}@{url[m.end():]}"


def connect_url(url: str) -> str:
    """The URL to connect with: every ``${VAR}`` replaced from the environment (percent-encoded
    in the user and password), and a bare ``postgresql://`` given the PostgreSQL driver that is
    installed. A ValueError of one line (the URL masked) says what to set or install."""
    m = _USERINFO.match(url)
    if m and m["password"] == MASK:  # a URL as qkvnas stored it (config.json): the password comes from the environment
        if PASSWORD_ENV not in os.environ:
            raise ValueError(f"storage {url!r}: the password is not stored (qkvnas keeps it masked); export "
                             f"{PASSWORD_ENV}, or write the URL with ${{{PASSWORD_ENV}}} in the study file")
        url = f"{m['head']}${{{PASSWORD_ENV}}}@{url[m.end():]}"
        m = _USERINFO.match(url)
    split = m.end() if m else 0  # the user info is percent-encoded, the rest is used as given
    url = _expand(url[:split], url, encode=True) + _expand(url[split:], url, encode=False)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    dialect, _, driver = scheme.partition("+")
    if dialect in ("postgresql", "postgres") and not driver:
        for module, prefix in POSTGRES_DRIVERS:
            if importlib.util.find_spec(module) is not None:
                return f"{prefix}://{rest}"
        raise ValueError(f"storage {mask_url(url)!r}: no PostgreSQL driver is installed; "
                         "pip install psycopg2-binary (or psycopg[binary])")
    if driver in _DRIVERS and importlib.util.find_spec(_DRIVERS[driver][0]) is None:
        raise ValueError(f"storage {mask_url(url)!r} names the driver {driver!r}, which is not installed; "
                         f"pip install {_DRIVERS[driver][1]}")
    return url


def _expand(text: str, url: str, *, encode: bool) -> str:
    def value(m: re.Match[str]) -> str:
        name = m[1]
        if name not in os.environ:
            raise ValueError(f"storage {mask_url(url)!r} reads ${{{name}}} from the environment, which is not set; "
                             f"export {name}=...")
        return quote(os.environ[name], safe="") if encode else os.environ[name]

    return _ENV.sub(value, text)


def _scrub(text: str, url: str) -> str:
    """A driver's error message with the URL's password (if any) masked."""
    m = _USERINFO.match(url)
    return text.replace(m["password"], MASK) if m and len(m["password"]) > 2 else text


# ---- opening a storage --------------------------------------------------------------------
def file_of(url: str) -> Path | None:
    """The file a SQLite or journal storage lives in; None for a database server."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):]).expanduser()
    return sqlite_path(url)


def check_writable(url: str) -> None:
    """Before any work: the file of a SQLite or journal storage can be created and written there,
    and a database URL names an installed driver. One line naming the path otherwise."""
    path = file_of(url)
    if path is None:
        connect_url(url)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "ab"):
                pass
        else:  # the folder takes a new file; the storage's own file is left for its first writer
            tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as err:
        raise ValueError(f"storage {mask_url(url)!r}: {path} cannot be written ({err.strerror or err}); "
                         "give a path in a folder you can write") from None


def open_storage(url: str, *, existing: bool = False) -> BaseStorage:
    """A storage object for a URL: ``journal:PATH``, ``sqlite:///PATH`` or any SQLAlchemy URL.
    ``existing``: only open a storage that is already there (a reader must never create the
    tables while a starting run is creating them)."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if existing and not path.is_file():
            raise ValueError(f"storage {url!r}: {path} does not exist; check the path")
        if not existing:
            check_writable(url)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if existing and not path.is_file():
            raise ValueError(f"storage {url!r}: {path} does not exist; check the study name or path")
        if not existing:
            check_writable(url)
        # A generous busy timeout: the status command may read while the run writes.
        storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, skip_table_creation=existing)
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # reconnect, so every pooled connection gets the pragmas
        return storage
    return _open_database(url, existing=existing)


def _open_database(url: str, *, existing: bool) -> BaseStorage:
    """A database server's storage, with Optuna's heartbeat on (several machines share it)."""
    target = connect_url(url)
    try:
        return _rdb_storage(target, existing=existing)
    except (ImportError, ModuleNotFoundError) as err:
        raise ValueError(f"storage {mask_url(url)!r} needs a database driver that is not installed ({err}); "
                         "install it (PostgreSQL: pip install psycopg2-binary)") from None
    except Exception as err:  # sqlalchemy raises many kinds for a bad URL or an unreachable server
        first = _scrub(str(err), target).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"storage {mask_url(url)!r} cannot be opened: {first}; "
                         "give sqlite:///PATH, journal:PATH or a database URL that this machine can reach") from None


def _rdb_storage(url: str, *, existing: bool) -> RDBStorage:
    """Optuna's RDB storage. Workers started together on an empty database all create its
    tables at once, and all but one hit a duplicate (a type, a table, the version row): that one
    is retried, when the tables are there."""
    for attempt in range(TABLE_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, skip_table_creation=existing, heartbeat_interval=HEARTBEAT_S,
                                  grace_period=GRACE_S, engine_kwargs={"pool_pre_ping": True})
        except sqlalchemy.exc.SQLAlchemyError as err:
            if attempt == TABLE_RACE_RETRIES or not any(w in str(err).lower() for w in ("duplicate", "already exists")):
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


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
    writers reliably, so a second worker is refused with what to use instead. Entering it first
    checks that any storage can be written (``check_writable``), so a bad path fails before work."""

    def __init__(self, url: str, study_name: str) -> None:
        self._url = url
        self._path = sqlite_path(url)
        self._study_name = study_name
        self._fd: int | None = None

    def __enter__(self) -> SQLiteLock:
        check_writable(self._url)
        if self._path is None or not HAVE_FLOCK:  # no flock (Windows): the single-worker check is skipped
            return self
        lock = self._path.with_name(self._path.name + ".lock")
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

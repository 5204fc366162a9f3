"""Helpers of the fault tests: a real `qkvnas` in a sandbox, the processes it left, its trials.

A run is started in its own session, with its own TMPDIR: its processes are the ones in that
session and any that carry that TMPDIR in their environment (one that left the session). Read
from /proc, independently of the engine's own watchdog, so a test can see what it misses.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

QKVNAS = str(Path(sys.executable).with_name("qkvnas"))
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def sandbox():
    """A working dir and a short system temp dir (Ray's socket paths must stay under 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="qkf", dir="/tmp"))
    (root / "tmp").mkdir()
    env = os.environ | {"TMPDIR": str(root / "tmp"), "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    yield root, env
    shutil.rmtree(root, ignore_errors=True)


class Run:
    """A `qkvnas` process in its own session; its output in a log file."""

    def __init__(self, args: list[str], root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.log = open(root / f"log-{time.monotonic_ns()}.txt", "w+")
        self.proc = subprocess.Popen([QKVNAS, *args], cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"qkvnas did not end in {timeout} s:\n{self.output()}") from None

    def processes(self) -> dict[int, str]:
        return run_processes(self.proc.pid, self.env["TMPDIR"])

    def kill_all(self) -> None:
        """SIGKILL whatever of this run is left (a failed test must not leave processes)."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def run_processes(session: int, tmpdir: str) -> dict[int, str]:
    """pid → title of the live processes in ``session`` or with ``TMPDIR=tmpdir``."""
    needle = f"TMPDIR={tmpdir}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if fields[0] in "ZX":  # dead, not yet reaped
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                title = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = b""
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    environ = fh.read()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session or needle in environ.split(b"\0"):
            found[int(entry)] = title[:80]
    return found


def wait_gone(run: Run, timeout: float) -> tuple[float, dict[int, str]]:
    """Seconds until no process of the run is left (or ``timeout``), and what was left then."""
    t0 = time.monotonic()
    while (left := run.processes()) and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    return time.monotonic() - t0, left


def states(db: Path) -> dict[int, tuple[str, datetime.datetime | None]]:
    """Trial number → (state, start), read with plain SQL (no schema set-up races with the run)."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        rows = c.execute("SELECT number, state, datetime_start FROM trials").fetchall()
        return {n: (s, datetime.datetime.fromisoformat(t) if t else None) for n, s, t in rows}
    return {}


def training(db: Path, run: Run, *, complete: int = 0) -> bool:
    """At least ``complete`` trials COMPLETE, one RUNNING for over a second, and a Ray actor
    executing a trial (so the kill lands in the middle of one)."""
    now = states(db)
    busy = [t for s, t in now.values() if s == "RUNNING" and t and (datetime.datetime.now() - t).total_seconds() > 1]
    done = sum(1 for s, _ in now.values() if s == "COMPLETE")
    return done >= complete and bool(busy) and any(p.startswith("ray::ImplicitFunc") for p in run.processes().values())


def wait_until(predicate: Callable[[], bool], run: Run, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert run.proc.poll() is None, f"qkvnas exited early:\n{run.output()}"
        assert time.monotonic() < deadline, f"timed out; output so far:\n{run.output()}"
        time.sleep(0.2)

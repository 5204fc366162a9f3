"""A process that outlives the driver by a few seconds, to end the local Ray the driver started.

Ray ties its gcs_server and raylet to the driver (``PR_SET_PDEATHSIG``), but not the
processes the raylet starts: after a SIGKILL of the driver its DashboardAgent and
RuntimeEnvAgent (and a worker in the middle of a trial) lived on for good. So every process of
a local Ray is known by its scratch folder: it carries ``QKVNAS_RAY_SCRATCH=<folder>`` in its
environment (the driver sets it before ``ray.init``; the raylet passes its environment on to
what it starts) or holds its log file open there. This watchdog, started by the driver in its
own session with a pipe from the driver on its stdin, waits for the pipe to close: the driver
ended it (the run is over: end what ``ray.shutdown`` left) or died (end them all and remove
the scratch folder). It ignores the signals that stop a run: those are the driver's to act on.

Standard library only: it runs as ``python -I -S watchdog.py SCRATCH DRIVER_PID``, quickly,
with nothing of qkvnas imported. Linux only (it reads /proc); elsewhere it is not started.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

MARKER = "QKVNAS_RAY_SCRATCH"
KILL_TIMEOUT_S = 20.0
END = b"end\n"  # what the driver writes before it closes the pipe at the end of a run


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def session_processes(scratch: str, exclude: frozenset[int] = frozenset()) -> list[int]:
    """This user's live processes of ``scratch``'s Ray: the marker in their environment, or a
    Ray title (``ray::...``) and a file open under the folder (each keeps its log there). The
    second because a process that retitles itself may overwrite the start of its environment
    block; only with the title, so that a ``tail -f`` of a Ray log is not taken for Ray."""
    needle = f"{MARKER}={scratch}".encode()
    inside = tuple({os.path.join(scratch, ""), os.path.join(os.path.realpath(scratch), "")})
    uid = os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:  # empty for a zombie: it is dead already
                environ = fh.read()
            if not environ:
                continue
            if needle in environ.split(b"\0") or (_title(entry).startswith(b"ray::")
                                                   and any(path.startswith(inside) for path in _open_files(entry))):
                found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _title(pid: str) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read(64)


def _open_files(pid: str) -> list[str]:
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return paths


def end_session(scratch: str, exclude: frozenset[int] = frozenset(), timeout_s: float = KILL_TIMEOUT_S) -> int:
    """SIGKILL the processes of ``scratch``'s Ray until none is left (a raylet still alive may
    start a worker meanwhile); returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while (pids := session_processes(scratch, exclude)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.1)
    return len(killed)


class Watchdog:
    """The driver's end of the watchdog: the pipe it waits on."""

    def __init__(self, scratch: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != MARKER}  # never its own target
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), scratch, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True)  # no signal meant for the run's process group reaches it

    def close(self, timeout_s: float = KILL_TIMEOUT_S + 5) -> None:
        """The run is over: the watchdog ends what Ray left, and this waits for it to be done."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(END)  # a pipe closed without it: the driver died
            self.proc.stdin.close()
        except OSError:  # the watchdog is gone (killed): nothing to wait for
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass  # it ends itself; the run need not wait longer


def _wait_for_driver(driver: int) -> bool:
    """Until the driver closes the pipe or dies; True when it died: the pipe closed without
    ``END`` (the kernel closes a dead process's files), or this process was reparented."""
    said = b""
    while True:
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], 1.0)
        if ready:
            chunk = os.read(sys.stdin.fileno(), 4096)
            if not chunk:
                return END not in said
            said += chunk
        elif os.getppid() != driver:
            return True


def main(argv: list[str]) -> int:
    scratch, driver = argv[1], int(argv[2])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    died = _wait_for_driver(driver)
    end_session(scratch, exclude=frozenset({os.getpid(), driver}))
    if died:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

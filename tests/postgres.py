"""A throwaway PostgreSQL server for the tests and CI: ``initdb`` into a fresh folder, a free
port on 127.0.0.1, password authentication over TCP, one database.

    python -m tests.postgres start DIR    # prints the URL; .ci/run exports it as QKVNAS_TEST_POSTGRES
    python -m tests.postgres stop DIR

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (Debian's
package makes it; ``nobody`` otherwise), and DIR is handed to that user.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ENV = "QKVNAS_TEST_POSTGRES"
USER = "qkvnas"
DATABASE = "qkvnas_test"


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent  # /usr/local/bin links resolve to the version's folder
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "pg_ctl").exists() and Path(folder, "initdb").exists():
            return Path(folder)
    return None


def _owner() -> str | None:
    """The user the server runs as: None (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


def _run(cmd: list[str], owner: str | None, cwd: Path, env: dict[str, str] | None = None) -> None:
    if owner is not None:
        cmd = (["runuser", "-u", owner, "--", *cmd] if shutil.which("runuser")
               else ["su", "-s", "/bin/sh", owner, "-c", shlex.join(cmd)])
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path) -> str:
    """Start a server with its files in ``root`` (created; it must be reachable by the server's
    user, e.g. under /tmp); returns its URL (postgresql://qkvnas:PASSWORD@127.0.0.1:PORT/qkvnas_test)."""
    bins = bin_dir()
    if bins is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl); apt-get install postgresql")
    owner = _owner()
    root.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(12)
    (root / "pw").write_text(password + "\n")
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (root, root / "pw"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    _run([str(bins / "initdb"), "-D", str(root / "data"), "-U", USER, f"--pwfile={root / 'pw'}",
          "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"], owner, root)
    for _ in range(5):  # a port found free can be taken before the server binds it: try another
        port = _free_port()
        try:
            _run([str(bins / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-t", "60",
                  "-o", f"-p {port} -h 127.0.0.1 -k {root}", "start"], owner, root)
            break
        except RuntimeError:
            time.sleep(0.5)
    else:
        raise RuntimeError(f"PostgreSQL did not start; see {root / 'server.log'}")
    _run([str(bins / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE], None, root,
         env=os.environ | {"PGPASSWORD": password})
    return f"postgresql://{USER}:{password}@127.0.0.1:{port}/{DATABASE}"


def stop(root: Path) -> None:
    bins = bin_dir()
    if bins is not None and (root / "data").is_dir():
        _run([str(bins / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"], _owner(), root)


# ---- the pytest fixture -----------------------------------------------------------------------
def _fixture():  # defined lazily: ``python -m tests.postgres`` (CI) needs no pytest
    import importlib.util
    import tempfile

    import pytest

    @pytest.fixture(scope="session")
    def postgres_url():
        """A PostgreSQL URL with a password: CI's server ($QKVNAS_TEST_POSTGRES), else a throwaway
        one started here when the binaries are installed; the test is skipped otherwise."""
        if os.environ.get(ENV):
            yield os.environ[ENV]
            return
        if not any(importlib.util.find_spec(m) for m in ("psycopg2", "psycopg")):
            pytest.skip("no PostgreSQL driver: pip install psycopg2-binary (the [test] extra has it)")
        if bin_dir() is None:
            pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl) and no {ENV}; .ci/run installs them")
        root = Path(tempfile.mkdtemp(prefix="qkvnas-pg-", dir="/tmp"))
        try:
            yield start(root)
        finally:
            try:
                stop(root)
            finally:
                shutil.rmtree(root, ignore_errors=True)

    return postgres_url


if "pytest" in sys.modules:
    postgres_url = _fixture()


if __name__ == "__main__":
    action, folder = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(folder))
    else:
        stop(folder)

"""Storage URLs: ``postgresql://`` finds the driver that is installed or says which to install,
a path that cannot be written is one line naming it before any work, a password is never
printed or stored (``${VAR}`` reads it from the environment); and the node's calibration file
lives per user and per machine, not in the shared temp dir."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import optuna
import pytest

from nas.cli import main
from nas.engine import storage
from nas.engine.storage import check_writable, connect_url, mask_url, open_storage
from tests.conftest import tiny_study
from tests.postgres import postgres_url  # noqa: F401 - the fixture

URL = "postgresql://ann:s3cret@db.example:5432/nas"


# ---- masking and ${VAR} ---------------------------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    (URL, "postgresql://ann:***@db.example:5432/nas"),
    ("postgresql+psycopg2://ann:p%40ss@h/db", "postgresql+psycopg2://ann:***@h/db"),
    ("postgresql://ann:${QKVNAS_STORAGE_PASSWORD}@h/db", "postgresql://ann:${QKVNAS_STORAGE_PASSWORD}@h/db"),
    ("postgresql://ann@h/db", "postgresql://ann@h/db"),
    ("postgresql://h:5432/db", "postgresql://h:5432/db"),
    ("sqlite:////tmp/x/study.db", "sqlite:////tmp/x/study.db"),
    ("journal:/tmp/x.journal", "journal:/tmp/x.journal"),
])
def test_a_password_is_masked_wherever_a_url_is_shown(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_password_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("QKVNAS_STORAGE_PASSWORD", "p@ss/w:rd")
    url = connect_url("postgresql+psycopg2://ann:${QKVNAS_STORAGE_PASSWORD}@h:5432/db")
    assert url == "postgresql+psycopg2://ann:p%40ss%2Fw%3Ard@h:5432/db"  # percent-encoded in the user info only
    monkeypatch.delenv("QKVNAS_STORAGE_PASSWORD")
    with pytest.raises(ValueError, match=r"reads \$\{QKVNAS_STORAGE_PASSWORD\}.*export QKVNAS_STORAGE_PASSWORD"):
        connect_url("postgresql+psycopg2://ann:${QKVNAS_STORAGE_PASSWORD}@h/db")
    with pytest.raises(ValueError, match=r"password is not stored.*export QKVNAS_STORAGE_PASSWORD"):
        connect_url("postgresql+psycopg2://ann:***@h/db")  # a masked URL from config.json ...
    monkeypatch.setenv("QKVNAS_STORAGE_PASSWORD", "s3cret")  # ... takes its password from the environment
    assert connect_url("postgresql+psycopg2://ann:***@h/db") == "postgresql+psycopg2://ann:s3cret@h/db"


# ---- the PostgreSQL driver ------------------------------------------------------------------
def only(*modules: str):
    """``find_spec`` as if exactly ``modules`` of the PostgreSQL drivers were installed."""
    real = importlib.util.find_spec
    drivers = ("psycopg2", "psycopg")
    return lambda name, *a: real(name, *a) if name not in drivers else (object() if name in modules else None)


@pytest.mark.parametrize(("installed", "dialect"), [(("psycopg2", "psycopg"), "postgresql+psycopg2"),
                                                    (("psycopg",), "postgresql+psycopg")])
def test_postgresql_takes_whichever_driver_is_installed(monkeypatch, installed, dialect) -> None:
    monkeypatch.setattr(storage.importlib.util, "find_spec", only(*installed))
    assert connect_url(URL) == f"{dialect}://ann:s3cret@db.example:5432/nas"
    assert connect_url("postgres://h/db") == f"{dialect}://h/db"


def test_postgresql_without_a_driver_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(storage.importlib.util, "find_spec", only())
    with pytest.raises(ValueError, match=r"no PostgreSQL driver.*pip install psycopg2-binary") as err:
        connect_url(URL)
    assert "s3cret" not in str(err.value) and "ann:***@" in str(err.value)
    with pytest.raises(ValueError, match=r"names the driver 'psycopg'.*pip install psycopg\[binary\]"):
        connect_url("postgresql+psycopg://h/db")


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    if not any(importlib.util.find_spec(m) for m in ("psycopg2", "psycopg")):
        pytest.skip("no PostgreSQL driver")
    with pytest.raises(ValueError, match="cannot be opened") as err:
        open_storage("postgresql://ann:s3cret@127.0.0.1:1/nas?connect_timeout=2")
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value) and "ann:***@" in str(err.value)


# ---- paths that cannot be written -------------------------------------------------------------
@pytest.mark.parametrize(("storage_url", "path"), [("sqlite:////proc/x/study.db", "/proc/x/study.db"),
                                                   ("journal:/proc/x.journal", "/proc/x.journal")])
def test_a_storage_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys, storage_url,
                                                                    path) -> None:
    (tmp_path / "s.toml").write_text(f'storage = "{storage_url}"\n' + tiny_study(name="nowhere"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "s.toml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path in err[0] and "cannot be written" in err[0], err
    assert not (tmp_path / "studies").exists()  # nothing was started
    with pytest.raises(ValueError, match="cannot be written"):
        check_writable(storage_url)


def test_a_journal_in_a_new_folder_is_created(tmp_path) -> None:
    url = f"journal:{tmp_path / 'new' / 'deeper' / 's.journal'}"
    optuna.create_study(study_name="x", storage=open_storage(url))
    assert (tmp_path / "new" / "deeper" / "s.journal").is_file()


# ---- a password is never printed or stored -------------------------------------------------------
def test_a_literal_password_is_neither_stored_nor_printed(postgres_url, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    from nas.config import load_config
    from nas.export import export_study
    from nas.study.job import StudyJob
    from nas.study.open import save_config_file

    password = postgres_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    name = f"pw-{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.toml").write_text(f'storage = "{postgres_url}"\n' + tiny_study(name=name, trials=1))
    monkeypatch.chdir(tmp_path)
    config = load_config(tmp_path / "s.toml")
    job = StudyJob(config)
    study = job.open_study(open_storage(job.storage_url))
    job.prepare(study)
    save_config_file(config)
    export_study(study, tmp_path / "export")
    for path in [tmp_path / "studies" / name / "config.json", tmp_path / "export" / "study.json"]:
        text = path.read_text()
        assert password not in text and "qkvnas:***@" in text, path
    assert password not in json.dumps(study.user_attrs)
    for argv in (["status", postgres_url, "--study", name], ["status", postgres_url, "--study", name, "--json"]):
        assert main(argv) == 0
        out = capsys.readouterr()
        assert password not in out.out + out.err and "***" in out.out, argv
    # By name, config.json's URL has its password masked: one line says where to put it ...
    monkeypatch.delenv("QKVNAS_STORAGE_PASSWORD", raising=False)
    assert main(["status", name]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "export QKVNAS_STORAGE_PASSWORD" in err and password not in err
    monkeypatch.setenv("QKVNAS_STORAGE_PASSWORD", password)  # ... and from there it works
    assert main(["status", name]) == 0
    out = capsys.readouterr()
    assert password not in out.out + out.err and f"study '{name}'" in out.out


# ---- the calibration file --------------------------------------------------------------------
def test_the_calibration_lives_per_user_and_machine(tmp_path, monkeypatch) -> None:
    import socket

    from nas.measure import reference as R

    for var in ("QKVNAS_CALIBRATION_DIR", "QKVNAS_LOCK_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    host = socket.gethostname()
    assert R.calibration_dir() == str(tmp_path / "home" / ".cache" / "qkvnas" / host)
    assert not R.calibration_dir().startswith(tempfile.gettempdir() + os.sep) or str(tmp_path).startswith(
        tempfile.gettempdir())  # (the test's own HOME is under the temp dir; a real one is not)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert R.calibration_dir() == str(tmp_path / "cache" / "qkvnas" / host)
    # Another process of the user on the node (a Ray worker) reads the same file.
    other = subprocess.run([sys.executable, "-c", "from nas.measure.reference import calibration_dir as c; print(c())"],
                           env=os.environ.copy(), capture_output=True, text=True, check=True)
    assert other.stdout.strip() == R.calibration_dir()
    ref = R.reference("small_ops", R.torch.device("cpu"))
    R.calibrated_rate(ref, R.torch.device("cpu"), R.torch.float32, R.calibration_dir())
    made = Path(R.calibration_dir())
    assert (made / R.CALIBRATION_FILE).is_file() and (made.stat().st_mode & 0o077) == 0  # the user's own
    monkeypatch.setenv("QKVNAS_LOCK_DIR", str(tmp_path / "lock"))  # a private lock folder keeps its calibration
    assert R.calibration_dir() == str(tmp_path / "lock")
    monkeypatch.setenv("QKVNAS_CALIBRATION_DIR", str(tmp_path / "cal"))
    assert R.calibration_dir() == str(tmp_path / "cal")

"""An export is written as a whole: a reader sees one generation, complete (its manifest lists
exactly the files there, at their sizes), never files of two; an export that fails or is
killed part-way leaves the previous one as it was, and the next export leaves no leftovers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

import nas.export
from nas.config import load_config
from nas.export import FILES, OPTIONAL_FILES, export_study
from nas.study import create_or_load_study, storage_url, tell_record
from nas.swap import MANIFEST
from nas.trial import run_trial
from search_spaces import get_space
from tests.conftest import tiny_study

ROOT = Path(__file__).resolve().parents[1]


def _study(folder: Path, name: str, trials: int) -> tuple[optuna.Study, str]:
    (folder / f"{name}.toml").write_text(tiny_study(name=name, trials=trials, tokens=512))
    config = load_config(folder / f"{name}.toml", [f"directory={folder / name}"])
    study = create_or_load_study(config)
    for _ in range(trials):
        add_trial(study, config)
    return study, storage_url(config)


def add_trial(study: optuna.Study, config=None) -> None:
    from nas.study import study_config

    config = config or study_config(study)
    trial = study.ask()
    spec = get_space(config.space.name, **config.space.options).sample(trial)
    tell_record(study, trial, run_trial(spec, config, seed=0).to_dict())


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atomic")
    return _study(folder, "two", 2), _study(folder, "three", 3)


def generation(out: Path) -> dict:
    """The one generation a reader sees at ``out``, checked whole: the folder resolved once,
    its files exactly those of its manifest at their sizes, trials.parquet and study.json of
    the same export. Returns study.json."""
    gen = out.resolve()
    manifest = json.loads((gen / MANIFEST).read_text())["files"]
    files = {str(p.relative_to(gen)): p.stat().st_size for p in gen.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert files == manifest
    assert set(FILES) | {MANIFEST} <= {p.name for p in gen.iterdir()} <= set(FILES) | set(OPTIONAL_FILES) | {MANIFEST}
    summary = json.loads((gen / "study.json").read_text())
    rows = pq.read_table(gen / "trials.parquet").num_rows
    assert rows == total(summary), (rows, summary["counts"])
    assert pq.read_table(gen / "pareto.parquet").num_rows == len(summary["front"])
    return summary


def total(summary: dict) -> int:
    """Trials in an export's study.json (its infeasible ones are among the complete ones)."""
    return sum(n for key, n in summary["counts"].items() if key != "infeasible")


def leftovers(out: Path, previous: Path | None = None) -> list[str]:
    """Anything beside the export's link, its current generation and the ``previous`` one
    (kept until the next export, for readers that resolved it), and any .tmp file."""
    keep = {out.resolve().name if out.is_symlink() else None, previous.name if previous else None}
    beside = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and p.name not in keep]
    return beside + [str(p) for p in out.parent.rglob("*.tmp")]


def test_each_export_replaces_the_last_as_a_whole(studies, tmp_path) -> None:
    (study, _), _ = studies
    out = tmp_path / "export"
    first = generation(export_study(study, out).out_dir)
    assert out.is_symlink() and total(first) == len(study.trials)
    old = out.resolve()
    add_trial(study)
    second = generation(export_study(study, out).out_dir)
    assert total(second) == total(first) + 1 and out.resolve() != old
    assert old.is_dir() and not leftovers(out, old)  # the replaced one stays, for readers, until the next export
    middle = out.resolve()
    generation(export_study(study, out).out_dir)
    assert not old.exists() and not leftovers(out, middle)


def test_an_export_that_fails_part_way_changes_nothing(studies, tmp_path, monkeypatch) -> None:
    (study, _), _ = studies
    out = tmp_path / "export"
    before = generation(export_study(study, out).out_dir)
    gen = out.resolve()

    def broken(*args, **kwargs):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(nas.export, "plot_front", broken)  # after the Parquet files and specs are written
    with pytest.raises(RuntimeError, match="the plot failed"):
        export_study(study, out)
    assert out.resolve() == gen and generation(out) == before and not leftovers(out)  # nothing half-written left


KILLED = textwrap.dedent("""
    import os, sys
    import nas.export
    from nas.export import export_study
    def die(*args, **kwargs):
        os._exit(9)  # as a SIGKILL would: no clean-up runs
    nas.export.plot_front = die  # the Parquet files and specs of the new export are written by then
    export_study(sys.argv[1], sys.argv[2])
""")


def test_an_export_killed_part_way_leaves_the_previous_one_whole(studies, tmp_path) -> None:
    _, (study, url) = studies
    out = tmp_path / "export"
    before = generation(export_study(study, out).out_dir)
    add_trial(study)  # the killed export would have had one trial more
    killed = subprocess.run([sys.executable, "-c", KILLED, url, str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == 9, killed.stderr
    assert generation(out) == before  # the old generation, whole
    partial = leftovers(out)
    assert len(partial) == 1 and "trials.parquet" in os.listdir(out.parent / partial[0])  # the new one, not swapped in
    old = out.resolve()
    after = generation(export_study(study, out).out_dir)
    assert total(after) == total(before) + 1
    assert not leftovers(out, old)  # the dead export's folder was removed by the next one


def test_a_reader_never_sees_two_generations(studies, tmp_path) -> None:
    """Two studies exported by turns into one folder while a reader checks every generation it
    sees. A generation is removed two exports after it was swapped out: a reader slower than
    that may see it go (and resolves again), never see it mixed."""
    (two, _), (three, _) = studies
    out = tmp_path / "export"
    export_study(two, out)
    seen: list[str] = []
    errors: list[BaseException] = []
    swaps = [0]
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            before = swaps[0]
            try:
                seen.append(generation(out)["study"])
            except (AssertionError, FileNotFoundError) as err:
                if swaps[0] - before < 2:  # its generation was still kept: a real error
                    errors.append(err)
                    return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for study in (three, two, three, two):
            export_study(study, out)
            swaps[0] += 1
    finally:
        done.set()
        reader.join()
    assert not errors, errors[0]
    assert {"two", "three"} <= set(seen)


def test_an_older_export_folder_is_replaced_and_a_foreign_one_refused(studies, tmp_path) -> None:
    (study, _), _ = studies
    old = tmp_path / "old"
    old.mkdir()
    for name in ("pareto.parquet", "trials.parquet", "study.json", "pareto.png"):
        (old / name).write_text("an export of an older qkvnas")
    (old / "specs").mkdir()
    (old / ".study.json.abc.tmp").write_text("")  # what an older export killed mid-file left
    generation(export_study(study, old).out_dir)
    assert old.is_symlink() and not leftovers(old)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes\.txt.*give a new or empty folder"):
        export_study(study, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not leftovers(mine)

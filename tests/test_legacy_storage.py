"""A study written by qkvnas before the engine restructuring (tests/fixtures/legacy_study:
its config.json and SQLite storage, 2 complete trials of a tiny study made by commit 38c11de)
resumes with today's code: nothing lost, the target reached, the front exported."""
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.api import resume_study
from nas.study import load_existing

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_study"


@pytest.mark.slow
def test_a_study_written_before_the_engine_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "studies" / "legacy"
    shutil.copytree(FIXTURE, folder)
    monkeypatch.chdir(tmp_path)
    before = {t.number: t.values for t in load_existing("legacy").trials}
    assert len(before) == 2

    summary = resume_study("legacy", ["trials=3"], progress=False)

    assert not summary.interrupted and summary.counts.complete == 3
    after = optuna.load_study(study_name="legacy", storage=f"sqlite:///{folder / 'study.db'}").trials
    assert all(t.state == TrialState.COMPLETE for t in after) and len(after) == 3
    assert {t.number: t.values for t in after[:2]} == before  # the old trials, untouched
    assert summary.export is not None and summary.export.pareto.is_file()

"""Watching a run: a live line while a trial runs (its design, time so far, phase, tokens), and
Ray's trials, actors and job named after the study."""
from __future__ import annotations

import io
import json
import os

import pytest

import nas.engine.live
from nas.api import run_study
from tests.conftest import tiny_study


def test_a_live_line_shows_the_running_trial(tmp_path, monkeypatch):
    monkeypatch.setattr(nas.engine.live, "LIVE_EVERY", 0.05)
    (tmp_path / "study.toml").write_text(tiny_study(name="live", trials=2, tokens=8192))
    shown = io.StringIO()
    result = run_study(tmp_path / "study.toml", [f"directory={tmp_path / 'live'}"], executor="local", out=shown)
    assert not result.interrupted
    lines = [line for line in shown.getvalue().splitlines() if line.startswith("running: trial ")]
    assert lines, shown.getvalue()
    hashes = {t.user_attrs["spec_hash"][:6] for t in result.study.trials}
    assert any(line.split()[3] in hashes for line in lines), lines  # "running: trial N <hash> <design> ..."
    from nas.study.display import design_label

    assert any(design_label(t) in line for t in result.study.trials for line in lines), lines
    assert any(" train " in line and line.endswith(" tokens") for line in lines), lines  # phase and tokens trained
    assert not list((tmp_path / "live" / ".live").glob("*.json"))  # each live file is removed with its trial


def test_the_live_file_follows_the_trial(tmp_path):
    from nas.engine import live

    with live.tracking(tmp_path, 7, spec_hash="abc123def456"):
        live.phase("train")
        live.tokens(1024)
        state = live.running(tmp_path)[7]
        assert state["phase"] == "train" and state["tokens"] == 1024 and state["spec_hash"] == "abc123def456"
    assert live.running(tmp_path) == {}
    live.phase("probe")  # no trial tracked: nothing written
    assert live.running(tmp_path) == {}


@pytest.mark.slow
def test_ray_names_the_job_and_its_trials(tmp_path):
    pytest.importorskip("ray")
    import ray

    from nas.config import load_config
    from nas.engine import tune
    from nas.study.job import StudyJob

    (tmp_path / "study.toml").write_text(tiny_study(name="named", trials=1, tokens=1024))
    config = load_config(tmp_path / "study.toml", [f"directory={tmp_path / 'named'}"])
    job = StudyJob(config)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tune.ray_session(job.resources, name=job.name):
        assert ray.get_runtime_context().namespace == "qkvnas-named"
        # The job's metadata as the cluster holds it (``ray list jobs`` reads it through the dashboard).
        metadata = ray._private.worker.global_worker.core_worker.get_job_config().metadata
        assert dict(metadata) == {"qkvnas_job": "named"}
    assert tune.named_trainable("my study").__name__ == "qkvnas_my_study"

    class Trial:
        trial_id = "abc_00000"
        config = {tune.PAYLOAD_KEY: json.dumps({"trial": 3})}

    assert tune.trial_name("named", Trial()) == "named-trial3"


def test_tunes_failed_trial_tracebacks_are_dropped_and_other_messages_kept() -> None:
    import logging

    from nas.engine.tune import _tune_failures_unlogged

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    controller, tune_log = logging.getLogger("ray.tune.execution.tune_controller"), logging.getLogger("ray.tune.tune")
    handler = Keep()
    for logger in (controller, tune_log):  # Ray's loggers may not propagate to the root
        logger.addHandler(handler)
    try:
        with _tune_failures_unlogged():
            controller.error("Trial task failed for trial x", exc_info=ValueError("boom"))
            tune_log.error("Trials did not complete: %s", ["x"])
            controller.error("Ray lost its GCS")  # anything else still gets through
        assert seen == ["Ray lost its GCS"]
        controller.error("Trial task failed after the run")  # the filter is gone with the run
        assert seen[-1] == "Trial task failed after the run"
    finally:
        for logger in (controller, tune_log):
            logger.removeHandler(handler)

"""Noisy measurements caught (nas/measure/noise.py, nas/study/remeasure.py): a neighbour that
takes the machine during some repeats flags the measurement, the protocol measures again at most
`max_remeasures` times, the flag shows in the progress line, `qkvnas status` and the export, and
`qkvnas remeasure` puts new figures into a real study without counting a trial twice.

The neighbours are real measurement paths with a slow repeat injected: a training step that
sleeps through one timed call, or a clock that loses time during one repeat (a neighbour that
held the CPU for that long), never a stubbed result. Limits are set far from what a loaded
2-core machine does by itself, so that the natural noise of a shared test machine cannot flip
an assertion."""
from __future__ import annotations

import json
import math
import time
import types

import optuna
import pyarrow.parquet as pq
import pytest

import nas.measure.protocol as protocol
import nas.measure.timing as timing
from nas.cli import main
from nas.config import load_config
from nas.engine import attrs
from nas.engine.record import ATTR_REMEASURE_OF, count_done, counts, pareto_front, superseded
from nas.export import export_study
from nas.measure import MeasureSettings, Stat, measure
from nas.measure.noise import contention, spread
from nas.study import create_or_load_study, save_config_file, tell_record
from nas.study.job import StudyJob, fills_target
from nas.trial import run_trial
from search_spaces import get_space
from search_spaces.spec import ArchSpec, uniform
from tests.conftest import tiny_study

SPEC = ArchSpec(vocab_size=256, context=32, d_model=32, n_heads=4, ffn_dim=64, layers=uniform(2))
# Only the spread is checked in the measurement tests, at a limit no quiet or busy machine reaches by itself.
ONLY_SPREAD = dict(max_drift=None, min_machine_speed=None)
WARMUP = 1


@pytest.fixture(scope="module", autouse=True)
def private_lock_dir(tmp_path_factory):
    # Away from other measurements on this node; the calibration lives there too, made once.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QKVNAS_LOCK_DIR", str(tmp_path_factory.mktemp("lock")))
        yield


def settings(**kw) -> MeasureSettings:
    base = dict(include=("train",), batch_size=2, warmup=WARMUP, repeats=3, min_repeat_s=0.0, threads=1) | ONLY_SPREAD
    return MeasureSettings(**(base | kw))


def count_tries(monkeypatch) -> list[int]:
    """The protocol builds one training step per try (include=("train",)): count them."""
    real, built = protocol._train_step, []

    def build(*args):
        built.append(len(built))
        return real(*args)

    monkeypatch.setattr(protocol, "_train_step", build)
    return built


def sleeping_neighbour(monkeypatch, seconds: float, tries: int | None = None) -> list[int]:
    """Each try's training step sleeps `seconds` in its first timed call (one call per repeat at
    min_repeat_s=0), in the first `tries` tries (None: every try)."""
    real, built = protocol._train_step, []

    def build(*args):
        step, k = real(*args), len(built)
        built.append(k)
        calls = iter(range(10**9))

        def slowed() -> None:
            if next(calls) == WARMUP and (tries is None or k < tries):
                time.sleep(seconds)
            step()

        return slowed

    monkeypatch.setattr(protocol, "_train_step", build)
    return built


def thieving_clock(monkeypatch, steal_s: float, tries: int | None = None, warmup: int = WARMUP, repeats: int = 3) -> None:
    """The timing clock loses `steal_s` during the first repeat of the first `tries` tries (None:
    every try): what a neighbour that held the CPU for that long does to the design's timer. The
    reference kernel's own clock (nas/measure/reference.py) sees nothing."""
    per_try = 2 * (warmup + repeats)  # a start and an end reading per timed call
    state = {"calls": 0, "lost": 0.0}

    def perf_counter() -> float:
        state["calls"] += 1
        n = state["calls"] - 1
        if n % per_try == 2 * warmup + 1 and (tries is None or n // per_try < tries):
            state["lost"] += steal_s  # the end of the first repeat comes this much later
        return time.perf_counter() + state["lost"]

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=perf_counter))


# ---- the protocol ---------------------------------------------------------------------------
def test_a_neighbour_sleeping_through_a_repeat_flags_the_measurement(monkeypatch):
    built = sleeping_neighbour(monkeypatch, seconds=1.5)
    m = measure(SPEC, settings(max_spread=3.0, max_remeasures=1))
    assert len(built) == 2 and len(m.tries) == 2  # measured again once, no more
    assert m.noisy["train_tokens_per_s"].endswith("> limit 300%"), m.noisy
    assert spread(m.stats["train_tokens_per_s"].samples) > 3.0
    d = m.to_dict()
    assert d["noisy"] == m.noisy and d["tries"] == list(m.tries) and m.noisy in d["tries"]  # the quieter try, kept
    assert "noisy after 2 tries: train_tokens_per_s" in m.table()


def test_a_quiet_try_ends_the_remeasures(monkeypatch):
    built = count_tries(monkeypatch)
    thieving_clock(monkeypatch, steal_s=1000.0, tries=1)
    m = measure(SPEC, settings(min_repeat_s=0.02, max_spread=100.0, max_remeasures=2))
    assert len(built) == 2 and len(m.tries) == 2
    # The reference kernel's clock never lost the time: the corrected figure is as noisy.
    assert {"train_tokens_per_s", "train_tokens_per_s_corrected"} <= set(m.tries[0]) and m.tries[1] == {}
    assert m.noisy == {} and spread(m.stats["train_tokens_per_s"].samples) <= 100.0  # the quiet try is the one kept


def test_remeasures_stop_at_the_limit(monkeypatch):
    built = count_tries(monkeypatch)
    thieving_clock(monkeypatch, steal_s=1000.0)
    m = measure(SPEC, settings(min_repeat_s=0.02, max_spread=100.0, max_remeasures=0))
    assert len(built) == 1 and len(m.tries) == 1 and "train_tokens_per_s" in m.noisy
    built.clear()
    m = measure(SPEC, settings(min_repeat_s=0.02, max_spread=100.0, max_remeasures=2))
    assert len(built) == 3 and len(m.tries) == 3 and all("train_tokens_per_s" in t for t in m.tries)


def test_contention_rules_on_known_figures():
    s = MeasureSettings()  # the defaults: spread 25%, drift 25%, speed 0.7
    stats = {"train_tokens_per_s": Stat.of([100.0, 100.0, 150.0]), "mfu": Stat.of([0.1, 0.5]),
             "prefill_tokens_per_s_ctx32": Stat.of([1.0, 9.0]),  # the first context: same repeats as unsuffixed
             "prefill_tokens_per_s_corrected_ctx64": Stat.of([10.0, 11.0])}
    speeds = {"matmul": [[0.5, 0.5], [0.52]], "small_ops": [[1.0, 1.4], [1.2]]}  # per timed phase
    noise = contention(stats, speeds, s, first_context=32)
    assert noise.reasons["train_tokens_per_s"] == "spread 50% > limit 25%"
    assert noise.reasons["machine_speed"] == ("matmul reference ran at 0.50x its calibrated speed < limit 0.70x; "
                                              "small_ops reference drifted 40% > limit 25%")
    calm = contention({}, {"small_ops": [[1.0, 1.1], [1.3, 1.4]]}, s, first_context=32)  # 40% apart, not within a phase
    assert not calm.noisy
    assert set(noise.reasons) == {"train_tokens_per_s", "machine_speed"}  # mfu is no throughput; 10% is within
    assert noise.worst == pytest.approx(2.0)  # the spread: 50% over 25%
    off = MeasureSettings(max_spread=math.inf, max_drift=None, min_machine_speed=0)
    assert not contention(stats, {"matmul": [[0.1, 0.9]]}, off, first_context=32).noisy
    assert spread([5.0]) == 0.0 and spread([2.0, 1.0, 4.0]) == pytest.approx(3.0)


def test_limits_are_checked_and_left_out_of_a_stored_config_at_their_defaults(tmp_path):
    for bad, field in ((dict(max_spread=0), "max_spread"), (dict(min_machine_speed=1.5), "min_machine_speed"),
                       (dict(max_remeasures=-1), "max_remeasures"), (dict(max_drift=True), "max_drift")):
        with pytest.raises(ValueError, match=field):
            MeasureSettings(**bad)
    path = tmp_path / "s.toml"
    path.write_text(tiny_study())
    stored = load_config(path, []).to_dict()["measure"]
    assert not {"max_spread", "max_drift", "min_machine_speed", "max_remeasures"} & set(stored)
    changed = load_config(path, ["measure.max_remeasures=0", "measure.max_drift=inf"]).to_dict()["measure"]
    assert changed["max_remeasures"] == 0 and changed["max_drift"] == math.inf


# ---- a study: display, export, remeasure --------------------------------------------------
STUDY = tiny_study(name="noisy", objectives=("val_loss", "train_tokens_per_s"), trials=3, tokens=1024, extra="""
[sampler]
name = "random"
seed = 1
[measure]
include = ["train"]
batch_size = 2
warmup = 1
repeats = 3
min_repeat_s = 0.02
threads = 1
max_spread = 100.0
max_drift = inf
min_machine_speed = 0
max_remeasures = 0
""")
NOISY = 1  # the trial a neighbour spoils


@pytest.fixture
def study(tmp_path, monkeypatch):
    """Three real trials of a tiny measuring study; a neighbour steals 1000 s from a repeat of
    trial 1's measurement, so that it alone is noisy."""
    (tmp_path / "study.toml").write_text(STUDY)
    config = load_config(tmp_path / "study.toml", [f"directory={tmp_path / 'noisy'}"])
    study = create_or_load_study(config)
    save_config_file(config)
    space = get_space(config.space.name, **config.space.options)
    for number in range(3):
        with monkeypatch.context() as mp:
            if number == NOISY:
                thieving_clock(mp, steal_s=1000.0)
            trial = study.ask()
            record = run_trial(space.sample(trial), config, seed=0)
        assert record.status == "complete", record.reason
        tell_record(study, trial, record.to_dict())
    return study, config


def test_noisy_trials_are_shown_in_progress_status_and_export(study, tmp_path, capsys):
    study, config = study
    trials = study.get_trials(deepcopy=False)
    assert [bool(attrs.read(t)["measure"]["noisy"]) for t in trials] == [False, True, False]
    line = StudyJob(config).outcome(study, trials[NOISY])
    assert "[noisy: train_tokens_per_s spread" in line and "> limit 10000%" in line
    assert "noisy" not in StudyJob(config).outcome(study, trials[0])
    assert main(["status", str(config.study_dir)]) == 0
    text = capsys.readouterr().out
    assert "noisy measurements: 1 trial(s), measure them again with: qkvnas remeasure noisy" in text
    assert f"trial {NOISY}: noisy: train_tokens_per_s spread" in text
    assert main(["status", str(config.study_dir), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["noisy"]) == [str(NOISY)]
    rows = pq.read_table(export_study(study, tmp_path / "export").trials).to_pylist()
    assert [r["noisy"] for r in rows] == [False, True, False]
    assert rows[NOISY]["noise"].startswith("train_tokens_per_s: spread") and rows[0]["noise"] is None
    assert str(pq.read_table(tmp_path / "export" / "pareto.parquet").schema.field("noisy").type) == "bool"


def test_remeasure_updates_the_study_without_counting_twice(study, tmp_path, capsys):
    study, config = study
    old = study.trials[NOISY]
    assert main(["remeasure", str(config.study_dir)]) == 0
    out = capsys.readouterr().out
    assert f"trial {NOISY} -> trial 3: train_tokens_per_s" in out and "quiet" in out and "1 of 1 trial(s)" in out
    study = optuna.load_study(study_name="noisy", storage=f"sqlite:///{config.study_dir / 'study.db'}")
    trials = study.trials
    new = trials[3]
    assert len(trials) == 4 and superseded(trials) == {NOISY: 3} and new.user_attrs[ATTR_REMEASURE_OF] == NOISY
    assert trials[NOISY].values == old.values and trials[NOISY].user_attrs == old.user_attrs  # history kept
    measured = attrs.read(new)["measure"]
    assert measured["noisy"] == {} and len(measured["tries"]) == 1
    assert new.values == [old.values[0], measured["train_tokens_per_s"]]  # the loss is kept, the speed is new
    assert new.params == old.params and new.user_attrs["spec_hash"] == old.user_attrs["spec_hash"]
    assert attrs.read(new)["objective_values"]["train_tokens_per_s"] == measured["train_tokens_per_s"]
    # One trial per design in every count and front; the target is not filled early.
    assert count_done(study) == 3 and counts(study).complete == 3
    assert NOISY not in {t.number for t in pareto_front(study)}
    assert fills_target(study, 4, 3) and not fills_target(study, 4, 4)
    rows = pq.read_table(export_study(study, tmp_path / "export").trials).to_pylist()
    assert rows[NOISY]["superseded_by"] == 3 and not rows[NOISY]["on_front"] and rows[3]["remeasure_of"] == NOISY
    assert rows[3]["noisy"] is False
    assert main(["status", str(config.study_dir)]) == 0
    assert "noisy measurements" not in capsys.readouterr().out
    assert main(["remeasure", str(config.study_dir)]) == 0  # nothing noisy is left
    assert "no noisy trials" in capsys.readouterr().out
    assert main(["remeasure", str(config.study_dir), "--all"]) == 0  # every current trial, the new one included
    assert "3 of 3 trial(s) measured again" in capsys.readouterr().out
    study = optuna.load_study(study_name="noisy", storage=f"sqlite:///{config.study_dir / 'study.db'}")
    assert len(study.trials) == 7 and count_done(study) == 3 and set(superseded(study.trials)) == {0, 1, 2, 3}


def test_remeasure_refuses_a_study_that_measures_nothing(tmp_path, capsys):
    (tmp_path / "study.toml").write_text(tiny_study(name="plain", trials=1))
    config = load_config(tmp_path / "study.toml", [f"directory={tmp_path / 'plain'}"])
    create_or_load_study(config)
    save_config_file(config)
    assert main(["remeasure", str(config.study_dir)]) == 2
    assert "measures nothing" in capsys.readouterr().err

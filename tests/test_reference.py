"""The machine's own speed: reference kernels around every repeat, the drift correction, and
the node's calibration file (nas/measure/reference.py, nas.measure.time_calls)."""
from __future__ import annotations

import json
import time

import pytest
import torch

import nas.measure as M
import nas.measure.reference as R

CPU = torch.device("cpu")


def test_reference_runs_around_every_repeat_outside_the_timed_windows():
    log = []

    def energy_mj():
        log.append("energy")
        return 0

    def reference():
        log.append("ref")
        return 0.002 if len([x for x in log if x == "ref"]) % 2 else 0.004

    t = M.time_calls(lambda: log.append("step"), device=CPU, warmup=1, repeats=3, energy_mj=energy_mj,
                     reference=reference)
    # warm-up step, then a reference before the first repeat and after each one; the energy
    # counter is read around the timed steps only.
    assert [x for x in log if x != "energy"] == ["step", "ref", "step", "ref", "step", "ref", "step", "ref"]
    assert log[log.index("ref") + 1] == "energy"
    assert t.reference_seconds == pytest.approx((0.003, 0.003, 0.003))  # the mean of the two around it
    assert M.time_calls(lambda: None, device=CPU, warmup=0, repeats=2).reference_seconds is None


def test_corrected_rate_scales_each_repeat_by_the_machine_speed_around_it():
    t = M.Timing(seconds=(0.1, 0.2, 0.4), calls_per_repeat=1, energy_j=None, reference_seconds=(0.01, 0.02, 0.04))
    assert t.rate(10).samples == pytest.approx((100, 50, 25))
    assert t.reference_rate(1).samples == pytest.approx((100, 50, 25))
    corrected = t.corrected_rate(10, 1, calibrated_rate=100)
    assert corrected.samples == pytest.approx((100, 100, 100)) and corrected.cv == pytest.approx(0)
    with pytest.raises(ValueError, match="reference="):
        M.Timing(seconds=(0.1,), calls_per_repeat=1, energy_j=None).reference_rate(1)


def test_correction_removes_a_drift_that_slows_step_and_reference_alike():
    # A machine that slows down steadily: every call (step or reference) takes longer than the
    # last. The raw rate falls with it; the corrected one stays put.
    calls = {"n": 0}

    def slowed(seconds):
        def run():
            calls["n"] += 1
            factor = 1 + 0.25 * calls["n"]
            t0 = time.perf_counter()
            time.sleep(seconds * factor)
            return time.perf_counter() - t0
        return run

    # Sleeps long enough that a loaded machine's scheduling jitter (a millisecond or two) is
    # small beside them: at 10 ms it alone reached a CV of 0.07.
    step, ref = slowed(0.04), slowed(0.02)
    t = M.time_calls(step, device=CPU, warmup=1, repeats=6, reference=ref)
    raw, corrected = t.rate(1), t.corrected_rate(1, 1, calibrated_rate=1)
    assert raw.cv > 0.2, raw
    assert corrected.cv < 0.05, corrected


def test_kernels_do_the_work_they_claim():
    mm = R.reference("matmul", CPU)
    assert mm.units == 2 * 1024**3 and mm.unit == "FLOP"
    assert R.reference("matmul", CPU) is mm  # built once per process
    small = R.reference("small_ops", CPU)
    assert small.units == 2 * R.SMALL_OPS_STEPS and small.fn().shape == (1, 256)
    assert R.sample(small, CPU, min_s=0.0) > 0
    with pytest.raises(ValueError, match="matmul"):
        R.reference("fft", CPU)


def test_calibration_is_measured_once_per_node_and_setup(tmp_path, monkeypatch):
    ref = R.reference("small_ops", CPU)
    rate = R.calibrated_rate(ref, CPU, torch.float32, str(tmp_path))
    table = json.loads((tmp_path / R.CALIBRATION_FILE).read_text())
    key = R.calibration_key(ref, CPU, torch.float32)
    assert rate > 0 and table[key]["rate"] == rate and table[key]["unit"] == "op/s"
    assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key

    def no_sampling(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(R, "sample", no_sampling)
    assert R.calibrated_rate(ref, CPU, torch.float32, str(tmp_path)) == rate  # read back, not re-measured
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="calibrated again"):  # another dtype is another setup
        monkeypatch.setattr(R, "sample", no_sampling)
        R.calibrated_rate(ref, CPU, torch.bfloat16, str(tmp_path))
    monkeypatch.undo()
    (tmp_path / R.CALIBRATION_FILE).write_text("{torn")  # a torn file is recalibrated, not fatal
    assert R.calibrated_rate(ref, CPU, torch.float32, str(tmp_path)) > 0
    assert key in json.loads((tmp_path / R.CALIBRATION_FILE).read_text())

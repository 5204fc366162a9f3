"""Objectives: every registered one reads its value from a trial record; stability scores spikes."""
import math

import numpy as np
import pytest

from objectives import OBJECTIVES, get_objective, stability_report
from objectives.base import NEEDS
from objectives.probes import PROBE_TASKS


def record():
    """A trial record as nas.trial builds it (plain data), with one value per source."""
    rng = np.random.default_rng(0)
    t = np.arange(200)
    losses = (4.0 * np.exp(-t / 50) + 1.5 + rng.normal(0, 0.03, 200)).tolist()
    return {
        "costs": {"params": 1000, "attention_params": 300, "kv_cache_bytes_per_token": 256,
                  "flops_per_token": 6000, "flops_per_token_decode": 2100},
        "measure": {"train_tokens_per_s": 5e4, "prefill_tokens_per_s": 2e5, "decode_tokens_per_s": 900.0,
                    "train_tokens_per_s_corrected": 4.8e4, "prefill_tokens_per_s_corrected": 1.9e5,
                    "decode_tokens_per_s_corrected": 870.0, "mfu": 0.31,
                    "peak_memory_mb": 12.5, "decode_memory_mb": 3.0, "energy_j_per_token": None,
                    "unavailable": {"energy_j_per_token": "no NVML on this machine"}},
        "train": {"val_loss": 1.9, "bits_per_byte": 2.74, "train_losses": losses,
                  "grad_norms": np.exp(rng.normal(0, 0.1, 200)).tolist()},
        "probes": {"mqar": {"accuracy": 0.75}},
    }


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_reads_the_record(name):
    objective = get_objective(name)
    assert objective.direction in ("minimize", "maximize") and objective.needs <= NEEDS
    assert objective.unit and objective.description
    if name == "energy_j_per_token":
        with pytest.raises(ValueError, match="no NVML on this machine"):
            objective.value(record())
        return
    value = objective.value(record())
    assert math.isfinite(value)
    assert objective.worst == (math.inf if objective.direction == "minimize" else -math.inf)
    assert objective.better(value, objective.worst)


def test_directions_and_needs_of_the_core_objectives():
    expected = {"val_loss": ("minimize", {"train"}), "train_tokens_per_s": ("maximize", {"measure"}),
                "peak_memory_mb": ("minimize", {"measure"}), "kv_cache_bytes_per_token": ("minimize", {"costs"}),
                "params": ("minimize", {"costs"}), "stability": ("minimize", {"train"}),
                "decode_tokens_per_s": ("maximize", {"measure"})}
    for name, (direction, needs) in expected.items():
        objective = get_objective(name)
        assert (objective.direction, set(objective.needs)) == (direction, needs), name
    assert get_objective("params").analytic and not get_objective("val_loss").analytic


def test_probe_objectives():
    for task in PROBE_TASKS:
        objective = get_objective(f"probe:{task}")
        assert objective.direction == "maximize" and objective.needs == {"probe"}
    assert get_objective("probe:mqar").value(record()) == 0.75
    with pytest.raises(ValueError, match="unknown probe task"):
        get_objective("probe:telepathy")
    with pytest.raises(ValueError, match="has no 'induction'"):
        get_objective("probe:induction").value(record())


def test_unknown_objective_and_missing_parts():
    with pytest.raises(ValueError, match="use one of"):
        get_objective("speed")
    with pytest.raises(ValueError, match="needs \\['measure'\\]"):
        get_objective("peak_memory_mb").value({"costs": {}})
    bad = record()
    bad["train"]["val_loss"] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        get_objective("val_loss").value(bad)


# ---- stability ----------------------------------------------------------------------------
def curve(seed, n=300):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = 5.5 * np.exp(-t / 80) + 1.5 + rng.normal(0, 0.05, n)
    grad = np.exp(rng.normal(0, 0.2, n))
    return loss, grad


@pytest.mark.parametrize("seed", range(6))
def test_smooth_noisy_runs_score_zero(seed):
    loss, grad = curve(seed)
    report = stability_report(loss, grad)
    assert report["score"] == 0, report


def test_spikes_are_counted_and_sized():
    loss, grad = curve(0)
    small, large = loss.copy(), loss.copy()
    small[150] += 0.4
    large[150] += 1.2
    r_small, r_large = stability_report(small, grad), stability_report(large, grad)
    assert r_small["loss_spikes"] == 1 and r_small["loss_spike_steps"] == [150]
    assert r_large["score"] > r_small["score"] > 0
    spiky = grad.copy()
    spiky[[60, 200]] *= 10
    r_grad = stability_report(loss, spiky)
    assert r_grad["grad_spikes"] == 2 and r_grad["grad_spike_steps"] == [60, 200]
    assert r_grad["grad_spike_size"] == pytest.approx(2 * math.log2(10), rel=0.25)


def test_stability_objective_reads_the_learning_curve():
    rec = record()
    assert get_objective("stability").value(rec) == 0
    rec["train"]["train_losses"][120] *= 1.5
    assert get_objective("stability").value(rec) > 0

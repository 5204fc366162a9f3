"""The GPU path: the CUDA tests (named `test_cuda_*`, which benchmarks/gpu_check.sh runs with
`pytest -k cuda`; they skip without a GPU), `budget.compile`, and the GPU check script's CPU dry run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import nas.measure as M
from nas.config.base import validate
from nas.config.study import StudyConfig
from nas.data import load_corpus
from nas.model import build_model
from nas.train import TrainBudget, autocast_for, make_optimizer, train
from search_spaces.spec import ArchSpec, uniform
from tests.conftest import zoo_spec

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SMALL = ArchSpec(vocab_size=256, context=64, d_model=64, n_heads=4, ffn_dim=128, layers=uniform(2, proj="q_kv"))


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QKVNAS_LOCK_DIR", str(tmp_path))
    return tmp_path


# ---- CUDA -------------------------------------------------------------------------------
@needs_cuda
def test_cuda_training_runs_bf16_autocast_with_fused_adamw() -> None:
    device = torch.device("cuda:0")
    model = build_model(SMALL).to(device)
    assert make_optimizer(model, TrainBudget(tokens=1), device).defaults["fused"] is True
    with autocast_for(device)():
        assert model(torch.zeros(2, 8, dtype=torch.long, device=device)).dtype == torch.bfloat16
    result = train(SMALL, load_corpus(), TrainBudget(tokens=64 * 16 * 20, batch_size=16, device="cuda"))
    assert result.device == "cuda:0" and not result.diverged and result.train_tokens_per_s > 0


@needs_cuda
def test_cuda_compile_budget_records_the_compile_time_apart() -> None:
    result = train(SMALL, load_corpus(), TrainBudget(tokens=64 * 16 * 6, batch_size=16, device="cuda", compile=True))
    assert result.compile_s is not None and result.compile_s > 0 and not result.diverged


@needs_cuda
@pytest.mark.parametrize("name", ["qkv", "q_kv+mqa", "qkv+window5", "qkv+latent16", "q_kv+cla2+mqa", "mixer"])
def test_cuda_static_cache_gives_the_same_logits_as_recomputation(name: str) -> None:
    model = build_model(zoo_spec(name)).cuda().eval()
    idx = torch.randint(0, 64, (2, 20), device="cuda")
    cache = model.new_cache(2, 20)
    with torch.no_grad():
        full = model(idx)
        inc = torch.cat([model(idx[:, :7], cache)] + [model(idx[:, t:t + 1], cache) for t in range(7, 20)], dim=1)
    err = (full - inc).abs().max().item()
    assert err < 1e-3, f"{name}: max |cached - recomputed| = {err:.3e}"


@needs_cuda
@pytest.mark.parametrize("proj", ["qkv", "q_kv"])
def test_cuda_decode_runs_on_sdpa_fused_kernels(proj: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = build_model(SMALL.with_layers(uniform(2, proj=proj))).cuda().eval()
    prefix = torch.randint(0, 256, (4, 40), device="cuda")
    # The math backend is excluded: prefill and each one-token step must find a fused kernel.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), torch.autocast("cuda", torch.bfloat16):
        state = M.start_decode(model, prefix, use_cache=True, max_tokens=56)
        M.decode(model, state, 16)
    assert state.cache.seen == 56 and state.cache.layers[0].buffers[0].dtype == torch.bfloat16


@needs_cuda
def test_cuda_measure_reports_memory_energy_mfu_and_the_roofline(lock_dir: Path) -> None:
    s = M.MeasureSettings(device="cuda", dtype="bfloat16", batch_size=4, decode_contexts=(64, 32), decode_batch=4,
                          decode_tokens=8, warmup=1, repeats=2, min_repeat_s=0.0)
    m = M.measure(SMALL, s).to_dict()
    assert m["cuda_max_memory_allocated_mb"] > 0 and m["peak_memory_mb"] > 0 and m["decode_peak_memory_mb"] > 0
    assert 0 < m["mfu"] < 1 and m["kv_cache_bytes_match"] is True
    assert m["energy_j_per_token"] is not None or m["unavailable"]["energy_j_per_token"]  # NVML, where the driver allows
    assert m["memory_bandwidth_bytes_per_s"] > 1e10 and 0 < m["decode_roofline_frac_ctx32"]
    assert m["fingerprint"]["device"] == "cuda:0"


# ---- budget.compile: a study-file key, stored only when on --------------------------------
def test_compile_is_a_budget_key_left_out_of_stored_configs_while_off() -> None:
    def config(**budget: object) -> StudyConfig:
        raw = {"name": "x", "objectives": ["val_loss", "params"], "trials": 1, "budget": {"tokens": 10, **budget}}
        return validate(StudyConfig, raw, "study.toml")

    assert "compile" not in config().to_dict()["budget"]  # studies stored before the key compare equal on resume
    on = config(compile=True)
    assert on.budget.compile is True and on.to_dict()["budget"]["compile"] is True
    with pytest.raises(ValueError, match="budget.compile"):
        config(compile="yes")


# ---- the GPU check script, dry-run on the CPU ----------------------------------------------
@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_writes_every_figure(tmp_path: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="qkg", dir="/tmp"))  # short: Ray's socket paths
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "TMPDIR": str(scratch), "PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out"), "--device",
                               "cpu"], env=env, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = tmp_path / "out"
    report = json.loads((out / "gpu_check.json").read_text())
    assert done.returncode == 0 and report["ok"], json.dumps(report, indent=1)[-4000:]
    assert set(report["steps"]) == {"tests", "bench_train", "bench_measure", "study", "bench_train_compiled"}
    figures = {name: json.loads((out / f"{name}.json").read_text())
               for name in ("tests", "bench_train", "bench_measure", "study", "bench_train_compiled")}
    assert figures["tests"]["counts"]["failure"] == 0 and figures["tests"]["cases"]
    assert figures["bench_train"]["mfu"]["mfu_qkvnas"] > 0
    assert figures["bench_train_compiled"]["throughput"]["compile_s"] > 0
    decode = figures["bench_measure"]["decode"]
    assert decode["q_kv"]["decode_roofline_frac_ctx128"] > 0 and decode["ratio_q_kv_over_qkv"]
    layouts = figures["bench_measure"]["cache_layouts"]["ctx128"]
    assert layouts["qkv"]["static"]["tokens_per_s"] > 0 and layouts["qkv"]["concat"]["tokens_per_s"] > 0
    study = figures["study"]
    assert [t["state"] for t in study["trials"]] == ["COMPLETE", "COMPLETE"]
    assert study["measurements_overlap"] is False  # two trials at once, one measurement at a time

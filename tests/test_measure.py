"""The measurement protocol, memory, KV cache, decoding, absent GPU/NVML, and the per-node lock.

CPU-only and fast: tiny models, one torch thread (a loaded 2-core machine makes two threads
slower than one), few repeats. Timing checks are ratios with wide margins, never thresholds.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
import torch

import nas.measure as M
import nas.measure.fingerprint as fingerprint_mod
from nas.costs import kv_cache_bytes
from nas.device import resolve_device
from nas.measure.memory import _CpuMemory
from nas.model import build_model
from search_spaces.spec import ArchSpec, LayerSpec, uniform
from tests.conftest import ZOO, zoo_spec

# One try each: these tests check the figures; contention and its remeasures are tests/test_noisy.py's.
FAST = dict(warmup=1, repeats=2, min_repeat_s=0.0, threads=1, max_remeasures=0)


def tiny(**kw) -> ArchSpec:
    base = dict(vocab_size=256, context=32, d_model=32, n_heads=4, ffn_dim=64, layers=uniform(2))
    base.update(kw)
    return ArchSpec(**base)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def private_lock_dir(tmp_path_factory):
    # Other test runs on this node must not serialise with ours (or we with theirs). One folder
    # for the module, so the reference kernels are calibrated once, not in every test.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QKVNAS_LOCK_DIR", str(tmp_path_factory.mktemp("lock")))
        yield


# ---- statistics and the timing protocol -------------------------------------------------
def test_stat_median_and_cv_on_known_inputs():
    s = M.Stat.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s.median == 3.0
    assert s.cv == pytest.approx(math.sqrt(2.5) / 3.0)  # sample std / mean
    assert M.Stat.of([2.0, 4.0]).median == 3.0
    assert M.Stat.of([7.0]).cv is None  # one repeat has no spread
    assert M.Stat.of([1.0, 1.0, 1.0]).cv == 0.0
    with pytest.raises(ValueError):
        M.Stat.of([])


def test_time_calls_warms_up_calibrates_and_excludes_prepare():
    calls = {"step": 0, "prepare": 0}

    def step():
        calls["step"] += 1
        time.sleep(0.01)

    t = M.time_calls(step, device=torch.device("cpu"), warmup=2, repeats=3, min_repeat_s=0.05)
    assert t.calls_per_repeat >= 3  # ~0.05 / 0.01, calibrated on the warm-up
    assert calls["step"] == 2 + 3 * t.calls_per_repeat
    assert all(0.009 < s < 0.1 for s in t.seconds)
    assert t.energy_j is None

    def prepare():
        calls["prepare"] += 1
        time.sleep(0.1)  # untimed: must not show in the figure

    t = M.time_calls(step, device=torch.device("cpu"), warmup=1, repeats=3, min_repeat_s=0.0, prepare=prepare)
    assert calls["prepare"] == 1 + 3
    assert max(t.seconds) < 0.07
    assert t.rate(100).median == pytest.approx(100 / sorted(t.seconds)[1])


def test_energy_is_summed_over_the_timed_windows_only():
    counter = {"mj": 0}

    def energy_mj():
        counter["mj"] += 1000  # every reading advances 1 J: two readings per timed window
        return counter["mj"]

    t = M.time_calls(lambda: None, device=torch.device("cpu"), warmup=3, repeats=4, energy_mj=energy_mj)
    assert t.energy_j == pytest.approx(4.0)  # one J per repeat; warm-up not counted


def test_settings_errors_name_the_field():
    with pytest.raises(ValueError, match="repeats"):
        M.MeasureSettings(repeats=0)
    with pytest.raises(ValueError, match="dtype"):
        M.MeasureSettings(dtype="float8")
    with pytest.raises(ValueError, match="include"):
        M.MeasureSettings(include=("train", "speed"))
    with pytest.raises(ValueError, match="decode_contexts"):
        M.MeasureSettings(decode_contexts=(512, 0))
    with pytest.raises(ValueError, match="sdpa_backend"):
        M.MeasureSettings(sdpa_backend="fast")
    with pytest.raises(ValueError, match="warmup"):
        M.MeasureSettings(compile=True, warmup=0)
    with pytest.raises(ValueError, match="seq_len=64 exceeds"):
        M.measure(tiny(), M.MeasureSettings(seq_len=64, **FAST))
    with pytest.raises(ValueError, match="float16"):
        M.measure(tiny(), M.MeasureSettings(device="cpu", dtype="float16", **FAST))
    assert M.MeasureSettings(decode_contexts=[64, 32]).decode_contexts == (64, 32)  # JSON lists


# ---- memory -----------------------------------------------------------------------------
def test_cpu_peak_resets_between_phases():
    tracker = _CpuMemory()
    assert tracker.reason is None, tracker.reason
    tracker.start()
    big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
    del big
    big_peak = tracker.peak_mb()
    tracker.start()
    small = torch.ones(4 * 1024 * 1024 // 4)  # 4 MB
    small_peak, small_held = tracker.peak_mb(), tracker.held_mb()
    del small
    assert big_peak > 60, big_peak
    assert 3.5 < small_peak < 12, small_peak  # the 64 MB high-water mark was reset
    assert 3.5 < small_held < 12, small_held


def test_training_peak_memory_grows_with_batch_and_returns_to_baseline():
    spec = tiny(context=128, d_model=64, layers=uniform(1))

    def peak(batch):
        m = M.measure(spec, M.MeasureSettings(batch_size=batch, include=("memory",), **FAST))
        return m["peak_memory_mb"]

    small, large, small_again = peak(2), peak(64), peak(2)
    assert large > small + 20, (small, large)  # logits alone are 64*128*256*4 B = 8 MB, plus grads
    assert small_again < large / 3, (small, large, small_again)
    assert small_again == pytest.approx(small, abs=8), (small, small_again)


def test_decode_memory_holds_the_cache():
    spec = tiny(context=256, d_model=64, layers=uniform(2))
    m = M.measure(spec, M.MeasureSettings(decode_batch=8, include=("memory",), **FAST)).to_dict()
    cache_mb = m["kv_cache_bytes"] / 2**20  # 2 layers x K,V x 64 x 256 tokens x 8 x 4 B = 2 MB
    assert m["kv_cache_bytes_match"] and "kv_cache_bytes" not in m["unavailable"]
    assert cache_mb * 0.8 < m["decode_memory_mb"] < cache_mb * 1.5 + 1, (m["decode_memory_mb"], cache_mb)
    assert m["decode_peak_memory_mb"] >= m["decode_memory_mb"]


# ---- the KV cache: measured bytes equal the analytic figure for every family -------------
# The project's zoo of every design family, plus a few layouts it does not name.
FAMILIES = {name: zoo_spec(name) for name in ZOO} | {
    "kv_from_then_q_kv": tiny(layers=(LayerSpec(), LayerSpec(kv_from=0), LayerSpec(proj="q_kv"))),
    "attn_none_first": tiny(layers=(LayerSpec(attn="none"), LayerSpec())),
    "mixer_then_qkv": tiny(layers=(LayerSpec(attn="mixer"), LayerSpec())),
    "learned_pos_qk_v": tiny(pos="learned", layers=uniform(2, proj="qk_v")),
    "q_kv+latent+window": tiny(layers=uniform(2, proj="q_kv", kv_latent=8, n_kv_heads=2, window=8)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_measured_kv_bytes_equal_analytic(family):
    spec = FAMILIES[family]
    s = M.MeasureSettings(include=("decode",), decode_contexts=(32, 20), decode_batch=2, decode_tokens=4,
                          warmup=0, repeats=1, min_repeat_s=0.0, threads=1)
    m = M.measure(spec, s).to_dict()
    for ctx in (32, 20):
        expected = kv_cache_bytes(spec, ctx, batch=2, dtype="float32")
        assert m[f"kv_cache_bytes_ctx{ctx}"] == expected, (family, ctx, m[f"kv_cache_bytes_ctx{ctx}"], expected)
        assert m[f"kv_cache_bytes_analytic_ctx{ctx}"] == expected
        assert m[f"kv_cache_bytes_match_ctx{ctx}"] is True
    assert m["kv_cache_bytes"] == m["kv_cache_bytes_ctx32"]
    assert m["decode_tokens_per_s"] > 0


def test_kv_mismatch_is_flagged(monkeypatch):
    monkeypatch.setattr("nas.costs.kv_cache_bytes", lambda *a, **k: 1)
    with pytest.warns(UserWarning, match="KV cache holds"):
        m = M.measure(tiny(), M.MeasureSettings(include=("decode",), decode_tokens=4, **FAST)).to_dict()
    assert m["kv_cache_bytes_match"] is False
    assert m["kv_cache_bytes_analytic"] == 1


# ---- decoding uses the cache ------------------------------------------------------------
def test_cached_decode_beats_recomputing_the_prefix(one_thread):
    torch.manual_seed(0)
    model = build_model(tiny(context=512, d_model=64, layers=uniform(2))).eval()
    args = dict(context=512, decode_tokens=32, warmup=1, repeats=3)
    cached, _, state = M.measure_decode(model, use_cache=True, **args)
    recompute, _, plain = M.measure_decode(model, use_cache=False, **args)
    assert state.cache is not None and state.cache.seen == 512  # the cache holds the whole context
    assert plain.cache is None and plain.tokens.shape == (1, 512)
    ratio = cached.median / recompute.median
    assert ratio > 2.0, f"cached decode only {ratio:.2f}x the recomputing loop"


def test_cached_and_recomputed_decoding_agree():
    torch.manual_seed(0)
    model = build_model(tiny(layers=uniform(2, proj="q_kv"))).eval()
    prefix = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        a, b = M.start_decode(model, prefix, use_cache=True), M.start_decode(model, prefix, use_cache=False)
        M.decode(model, a, 8)
        M.decode(model, b, 8)
    assert torch.equal(a.nxt, b.nxt)


# ---- whole measurement on a CPU-only machine: GPU figures absent, never faked -------------
def test_measure_on_cpu_reports_gpu_figures_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = tiny(layers=uniform(2, proj="q_kv"))
    m = M.measure(spec, M.MeasureSettings(batch_size=2, decode_contexts=(32, 16), decode_tokens=4, **FAST))
    d = json.loads(json.dumps(m.to_dict()))  # JSON-able
    for key in ("train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s", "decode_tokens_per_s_ctx16"):
        for name in (key, key.replace("_per_s", "_per_s_corrected")):
            assert d[name] > 0 and d[f"{name}_cv"] is not None and len(d["samples"][name]) == 2
    assert d["peak_memory_mb"] > 0 and d["decode_memory_mb"] >= 0
    assert 0 < d["mfu"] < 1 and d["mfu_cv"] is not None
    # MFU is per repeat: the design's FLOP rate over the matmul reference timed around it.
    flops = [f / p for f, p in zip(d["samples"]["model_flops_per_s"], d["samples"]["peak_flops_per_s"])]
    assert d["mfu"] == pytest.approx(sorted(flops)[0] / 2 + sorted(flops)[1] / 2)
    # Three timed phases at two contexts (train, prefill x2, decode x2), two repeats each.
    assert len(d["samples"]["machine_speed"]) == 10 and d["machine_speed"] > 0
    assert set(d["fingerprint"]["settings"]["reference_calibrated"]) == {"matmul", "small_ops"}
    for key in ("energy_j_per_token", "decode_energy_j_per_token", "cuda_max_memory_allocated_mb",
                "cuda_max_memory_reserved_mb", "nvml_used_memory_mb"):
        assert d[key] is None and "\n" not in d["unavailable"][key]
    assert not [k for k, v in d.items() if v is None and k not in d["unavailable"]]
    assert not [k for k in d["unavailable"] if d[k] is not None]
    fp = d["fingerprint"]
    assert fp["device"] == "cpu" and fp["cuda"] is None or isinstance(fp["cuda"], str)
    assert fp["threads"] == 1 and fp["cpu_model"] and fp["torch"] == torch.__version__
    assert fp["settings"]["decode_contexts"] == [32, 16] and fp["settings"]["compile"] is False
    assert "train_tokens_per_s" in m.table()


def test_encoder_has_prefill_but_no_decoding():
    m = M.measure(tiny(causal=False), M.MeasureSettings(batch_size=2, **FAST)).to_dict()
    assert m["prefill_tokens_per_s"] > 0 and m["train_tokens_per_s"] > 0
    for key in ("decode_tokens_per_s", "kv_cache_bytes", "decode_memory_mb"):
        assert m[key] is None and "encoder" in m["unavailable"][key]


def test_include_skips_phases_with_a_reason():
    m = M.measure(tiny(), M.MeasureSettings(include=("prefill",), **FAST)).to_dict()
    assert m["prefill_tokens_per_s"] > 0
    for key in ("train_tokens_per_s", "train_tokens_per_s_corrected", "decode_tokens_per_s",
                "decode_tokens_per_s_corrected", "peak_memory_mb", "mfu", "kv_cache_bytes"):
        assert m[key] is None and m["unavailable"][key]
    assert m["prefill_tokens_per_s_corrected"] > 0
    assert len(m["tries"]) == 1 and m["noisy"] == m["tries"][0]  # checked for contention, whatever it found


def test_a_phase_without_timed_repeats_is_never_noisy():
    m = M.measure(tiny(), M.MeasureSettings(include=("memory",), warmup=1, repeats=2, min_repeat_s=0.0, threads=1))
    assert m.noisy == {} and m.tries == ({},)  # nothing to disagree, no reference: one try, quiet


def test_measure_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    M.measure(tiny(), M.MeasureSettings(include=("prefill",), **FAST))
    assert torch.equal(torch.rand(3), expected)


def test_bfloat16_autocast_on_cpu_when_asked():
    m = M.measure(tiny(), M.MeasureSettings(dtype="bfloat16", include=("train", "decode"), decode_tokens=4, **FAST))
    d = m.to_dict()
    assert d["train_tokens_per_s"] > 0
    assert d["kv_cache_bytes_analytic"] == kv_cache_bytes(tiny(), 32, dtype="bfloat16")
    assert d["kv_cache_bytes_match"] is True  # K and V come out of bf16 matmuls
    assert d["fingerprint"]["settings"]["autocast"] is True


def test_explicit_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        M.measure(tiny(), M.MeasureSettings(device="cuda", **FAST))
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_nvml_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    nvml = fingerprint_mod.Nvml(torch.device("cuda:0"))
    assert nvml.handle is None and "nvidia-ml-py" in nvml.reason
    assert nvml.energy_mj() is None and nvml.used_memory_mb() is None and nvml.driver() is None
    assert nvml.energy_reason() == nvml.reason


def _fake_pynvml(*, init_error: str | None = None, energy: bool = True) -> types.ModuleType:
    fake = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    fake.NVMLError = NVMLError

    def init():
        if init_error:
            raise NVMLError(init_error)

    def energy_mj(handle):
        if not energy:
            raise NVMLError("Not Supported")
        return 123456

    fake.nvmlInit = init
    fake.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    fake.nvmlDeviceGetHandleByUUID = lambda u: ("handle", u)
    fake.nvmlDeviceGetTotalEnergyConsumption = energy_mj
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 * 2**20)
    fake.nvmlSystemGetDriverVersion = lambda: "555.42"
    return fake


def test_nvml_without_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_error="NVML Shared Library Not Found"))
    nvml = fingerprint_mod.Nvml(torch.device("cuda:0"))
    assert nvml.handle is None and nvml.reason == "NVML unavailable: NVML Shared Library Not Found"
    assert nvml.energy_reason() == nvml.reason


def test_nvml_readings_and_unsupported_energy(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    nvml = fingerprint_mod.Nvml(torch.device("cuda:0"))
    assert nvml.reason is None and nvml.handle is not None
    assert (nvml.energy_mj(), nvml.used_memory_mb(), nvml.driver()) == (123456, 3.0, "555.42")
    assert nvml.energy_reason() is None
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(energy=False))
    nvml = fingerprint_mod.Nvml(torch.device("cuda:0"))
    assert nvml.energy_mj() is None and "energy counter" in nvml.energy_reason()
    assert nvml.used_memory_mb() == 3.0


def test_nvml_on_cpu_device():
    nvml = fingerprint_mod.Nvml(torch.device("cpu"))
    assert nvml.handle is None and "not CUDA" in nvml.reason


# ---- the per-node lock ------------------------------------------------------------------
def _overlaps(intervals):
    intervals = sorted(intervals)
    return any(b0 < a1 for (_, a1), (b0, _) in zip(intervals, intervals[1:]))


def test_lock_serialises_threads():
    intervals = []

    def hold():
        with M.measurement_lock():
            t0 = time.monotonic()
            time.sleep(0.15)
            intervals.append((t0, time.monotonic()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(intervals) == 3 and not _overlaps(intervals), intervals


def test_lock_serialises_processes(tmp_path):
    # Each process imports, says it is ready, and waits for "go": both then race for the lock.
    script = textwrap.dedent("""
        import sys, time
        from nas.measure import measurement_lock
        print("ready", flush=True)
        sys.stdin.readline()
        with measurement_lock():
            t0 = time.time()
            time.sleep(0.3)
            print(t0, time.time(), flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    intervals = [tuple(map(float, p.communicate(timeout=120)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert not _overlaps(intervals), intervals
    assert os.path.exists(M.lock_path())


def test_lock_is_reentrant_and_measure_waits_for_a_holder():
    with M.measurement_lock():
        with M.measurement_lock() as waited:  # no deadlock in the same thread
            assert waited == 0.0
    held = threading.Event()

    def neighbour():
        with M.measurement_lock():
            held.set()
            time.sleep(0.5)

    t = threading.Thread(target=neighbour)
    t.start()
    held.wait()
    m = M.measure(tiny(), M.MeasureSettings(include=("prefill",), **FAST))
    t.join()
    assert m.lock_wait_s > 0.3


# ---- the command ------------------------------------------------------------------------
def test_measure_command(tmp_path, capsys):
    from nas.cli import main

    path = tmp_path / "spec.json"
    path.write_text(tiny(layers=uniform(2, proj="q_kv")).to_json())
    rc = main(["measure", str(path), "--batch-size", "2", "--decode-contexts", "32,16", "--decode-tokens", "4",
               "--repeats", "2", "--warmup", "1", "--threads", "1", "--include", "train,decode"])
    out, err = capsys.readouterr()
    assert rc == 0
    d = json.loads(out)
    assert d["decode_tokens_per_s_ctx16"] > 0 and d["kv_cache_bytes_match"] is True
    assert "decode_tokens_per_s" in err and "unavailable" in err
    assert main(["measure", str(path), "--decode-contexts", "32,x"]) == 2
    assert "--decode-contexts" in capsys.readouterr().err

"""Benchmark of the measurement protocol and of decoding, in one run:

1. repeatability: the spread of each figure over 5 independent `measure()` calls of one design
   (target: CV <= 5% on an idle CPU), beside the spread within each call; for every throughput
   both as measured and `_corrected` for the machine's drift (nas/measure/reference.py), and the drift
   itself (`machine_speed`: the reference kernels' rates over the node's calibration);
2. the decode speed-up from the KV cache at long context (cached steps vs a loop that re-runs
   the whole prefix for every token);
3. the cache layouts side by side, in this one process: cached decode tokens/s at contexts 512
   and 2048 (batch 8) with the cache of before (`concat`: grown by torch.cat, every step copies
   every past entry) and the preallocated one written in place (`static`, nas/kv_cache.py), for
   qkv, q_kv (V = K before RoPE, the default) and q_kv with `v_rotated` (V = K after RoPE); each
   beside its decode roofline (nas/measure/roofline.py) and the fraction of it reached;
4. decoding through `measure()` at contexts 512 and 2048, batch 8, for the same three designs:
   decode tokens/s, `decode_roofline_frac`, the cache bytes held (q_kv/qkv target <= 0.55x), the
   process memory that decoding holds and peaks at, and q_kv/qkv decode tokens/s at context 2048
   (target >= 1.0: V = K reads half the cached bytes).

    python benchmarks/bench_measure.py [--quick] [--threads N] [--device auto] [--dtype D] [--out result.json]

`--quick` shrinks every size (a smoke run of a few seconds, as benchmarks/gpu_check.sh --device cpu
does). Prints a summary and writes every figure (with the fingerprint) as JSON.

Figures of one run (2-core Intel Xeon VM shared with other work, load average 3.7 before and 3.4
after, `--threads 1`, float32, 291 s; section 3 at context 2048, where the repeats' cv was <= 2.2%):

    decode tok/s, batch 8     concat   static   static/concat   roofline   static frac
    qkv                        151.1    327.8        2.17x        660.9       0.496
    q_kv (V = unrotated K)      78.9     86.5        1.10x       1231.1       0.070
    q_kv + v_rotated           253.8    448.0        1.77x       1231.1       0.364

q_kv/qkv with the static cache at 2048: 0.264 (unrotated K: the per-step rotation of the whole
cache costs more than the halved reads save), 1.367 with `v_rotated`; through `measure()`: 0.276
and 1.486, `decode_roofline_frac` 0.457 (qkv), 0.068 (q_kv), 0.365 (q_kv + v_rotated). At
context 512 the machine drifted (repeat cv up to 18%): see the JSON's samples.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nas.device import resolve_device  # noqa: E402
from nas.measure import (  # noqa: E402
    AUTOCAST, Machine, MeasureSettings, coefficient_of_variation, decode_roofline_tokens_per_s, decode_steps_for,
    measure, measure_decode, measurement_lock,
)
from nas.measure.reference import calibrated_rate, calibration_dir, memory_bandwidth, reference  # noqa: E402
from nas.model import build_model  # noqa: E402
from search_spaces.spec import ArchSpec, uniform  # noqa: E402

TIMED = ("train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",
         "train_tokens_per_s_corrected", "prefill_tokens_per_s_corrected", "decode_tokens_per_s_corrected",
         "mfu", "machine_speed")
MEMORY = ("peak_memory_mb", "decode_memory_mb")
DESIGNS = ("qkv", "q_kv", "q_kv+v_rotated")


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """d_model 256, 4 layers, 8 heads: big enough for stable CPU timings, small enough for 2 cores."""

    d_model: int = 256
    layers: int = 4
    heads: int = 8
    context: int = 2048
    decode_contexts: tuple[int, ...] = (512, 2048)
    decode_batch: int = 8
    decode_tokens: int = 32
    repeats: int = 5  # of each repeatability measurement
    decode_repeats: int = 3  # of each decode figure in sections 3 and 4
    min_repeat_s: float = 0.5
    runs: int = 5  # repeatability: independent measurements
    batch_size: int = 4  # training throughput in the repeatability runs
    seq_len: int = 256
    recompute_tokens: int = 8  # section 2: tokens decoded by re-running the prefix


QUICK = Sizes(d_model=64, layers=2, heads=4, context=128, decode_contexts=(32, 128), decode_batch=2, decode_tokens=8,
              repeats=2, decode_repeats=2, min_repeat_s=0.0, runs=2, batch_size=2, seq_len=64, recompute_tokens=4)


def design(sizes: Sizes, name: str = "qkv") -> ArchSpec:
    proj, _, option = name.partition("+")
    return ArchSpec(vocab_size=256, context=sizes.context, d_model=sizes.d_model, n_heads=sizes.heads,
                    ffn_dim=4 * sizes.d_model, layers=uniform(sizes.layers, proj=proj, v_rotated=option == "v_rotated"))


def repeatability(sizes: Sizes, settings: MeasureSettings) -> dict:
    runs = [measure(design(sizes), settings).to_dict() for _ in range(sizes.runs)]
    out = {}
    for name in TIMED + MEMORY:
        values = [r[name] for r in runs]
        within = [r.get(f"{name}_cv") for r in runs]
        out[name] = {
            "values": values,
            "median": statistics.median(values),
            "cv_between_runs": coefficient_of_variation(values),
            "cv_within_run_median": statistics.median(within) if None not in within else None,
        }
    out["fingerprint"] = runs[0]["fingerprint"]
    return out


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    torch_dtype = AUTOCAST[dtype]
    return contextlib.nullcontext() if torch_dtype is None else torch.autocast(device.type, dtype=torch_dtype)


def cache_speedup(sizes: Sizes, device: torch.device, dtype: str) -> dict:
    torch.manual_seed(0)
    model = build_model(design(sizes)).to(device).eval()
    context = sizes.decode_contexts[-1]
    args = dict(context=context, decode_tokens=sizes.recompute_tokens, device=device, warmup=1, repeats=3)
    with autocast(device, dtype):
        cached, _, _ = measure_decode(model, use_cache=True, **args)
        recompute, _, _ = measure_decode(model, use_cache=False, **args)
    return {
        "context": context,
        "decode_tokens": sizes.recompute_tokens,
        "cached_tokens_per_s": cached.median,
        "cached_cv": cached.cv,
        "recompute_tokens_per_s": recompute.median,
        "recompute_cv": recompute.cv,
        "speedup": cached.median / recompute.median,
    }


def node_machine(device: torch.device, dtype: str) -> Machine:
    """The roofline's rates: the node's calibrated copy bandwidth and matmul peak (nas/measure/reference.py)."""
    torch_dtype = AUTOCAST[dtype] or torch.float32
    directory = calibration_dir()
    with measurement_lock():
        peak = calibrated_rate(reference("matmul", device, torch_dtype), device, torch_dtype, directory)
        return Machine(bandwidth=memory_bandwidth(device, directory), peak_flops=peak)


def cache_layouts(sizes: Sizes, device: torch.device, dtype: str) -> dict:
    """Section 3: each design's decode with either cache layout, interleaved so that drift hits both."""
    machine = node_machine(device, dtype)
    cache_dtype = "float32" if AUTOCAST[dtype] is None else dtype
    out: dict[str, Any] = {"decode_batch": sizes.decode_batch, "dtype": cache_dtype,
                           "bandwidth_bytes_per_s": machine.bandwidth, "peak_flops_per_s": machine.peak_flops}
    models = {}
    for name in DESIGNS:
        torch.manual_seed(0)
        models[name] = build_model(design(sizes, name)).to(device).eval()
    for context in sizes.decode_contexts:
        steps = decode_steps_for(context, sizes.decode_tokens)
        row: dict[str, Any] = {}
        for name, model in models.items():
            roof = decode_roofline_tokens_per_s(model.spec, context=context, steps=steps, batch=sizes.decode_batch,
                                                dtype=cache_dtype, machine=machine)
            row[name] = {"roofline_tokens_per_s": roof}
            for layout in ("concat", "static"):
                with autocast(device, dtype), measurement_lock():
                    stat, _, _ = measure_decode(model, context=context, batch=sizes.decode_batch,
                                                decode_tokens=sizes.decode_tokens, layout=layout, device=device,
                                                warmup=1, repeats=sizes.decode_repeats)
                row[name][layout] = {"tokens_per_s": stat.median, "cv": stat.cv, "samples": list(stat.samples),
                                     "roofline_frac": stat.median / roof}
            row[name]["static_over_concat"] = row[name]["static"]["tokens_per_s"] / row[name]["concat"]["tokens_per_s"]
        for name in DESIGNS[1:]:
            row[f"{name}_over_qkv"] = {layout: row[name][layout]["tokens_per_s"] / row["qkv"][layout]["tokens_per_s"]
                                       for layout in ("concat", "static")}
        out[f"ctx{context}"] = row
    return out


def decode_through_measure(sizes: Sizes, base: MeasureSettings) -> dict:
    """Section 4: `measure()`'s own decode figures and memory, per design."""
    settings = dataclasses.replace(base, include=("decode", "memory"), decode_contexts=sizes.decode_contexts,
                                   decode_batch=sizes.decode_batch, repeats=sizes.decode_repeats, warmup=1,
                                   min_repeat_s=0.0)
    keys = ("decode_tokens_per_s", "decode_roofline_tokens_per_s", "decode_roofline_frac", "kv_cache_bytes",
            "kv_cache_bytes_match")
    figures: dict[str, Any] = {}
    for name in DESIGNS:
        m = measure(design(sizes, name), settings).to_dict()
        figures[name] = {f"{k}_ctx{c}": m[f"{k}_ctx{c}"] for k in keys for c in sizes.decode_contexts}
        figures[name].update({k: m[k] for k in ("decode_memory_mb", "decode_peak_memory_mb", "memory_bandwidth_bytes_per_s",
                                                "roofline_peak_flops_per_s")})
    last = sizes.decode_contexts[-1]
    ratio = {k: _ratio(figures["q_kv"][k], figures["qkv"][k])
             for k in (f"kv_cache_bytes_ctx{sizes.decode_contexts[0]}", "decode_memory_mb", "decode_peak_memory_mb",
                       f"decode_tokens_per_s_ctx{last}")}
    rotated = _ratio(figures["q_kv+v_rotated"][f"decode_tokens_per_s_ctx{last}"],
                     figures["qkv"][f"decode_tokens_per_s_ctx{last}"])
    return {"contexts": list(sizes.decode_contexts), "decode_batch": sizes.decode_batch, **figures,
            "ratio_q_kv_over_qkv": ratio, f"ratio_q_kv_v_rotated_over_qkv_decode_ctx{last}": rotated}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the whole benchmark")
    parser.add_argument("--threads", type=int, default=None, help="torch threads while measuring (default: leave)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, choices=list(AUTOCAST),
                        help="autocast dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--out", default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    base = MeasureSettings(batch_size=sizes.batch_size, seq_len=sizes.seq_len, decode_contexts=sizes.decode_contexts[:1],
                           decode_tokens=sizes.decode_tokens, warmup=2, repeats=sizes.repeats,
                           min_repeat_s=sizes.min_repeat_s, device=str(device), dtype=dtype, threads=args.threads)
    result = {
        "sizes": dataclasses.asdict(sizes),
        "repeatability": repeatability(sizes, base),
        "cache_speedup": cache_speedup(sizes, device, dtype),
        "cache_layouts": cache_layouts(sizes, device, dtype),
        "decode": decode_through_measure(sizes, base),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
    }
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(_summary(result), file=sys.stderr)
    return 0


def _summary(r: dict) -> str:
    lines = ["repeatability over the measurements (target cv <= 5% on an idle CPU; machine_speed is the "
             "machine's own drift):"]
    for name in TIMED + MEMORY:
        f = r["repeatability"][name]
        within = f["cv_within_run_median"]
        lines.append(f"  {name:<30} median {f['median']:>12.4g}   cv between runs {100 * f['cv_between_runs']:5.1f}%"
                     + ("" if within is None else f"   cv within a run {100 * within:5.1f}%"))
    s = r["cache_speedup"]
    lines.append(f"decode at context {s['context']}: cached {s['cached_tokens_per_s']:.4g} tok/s, recomputing "
                 f"{s['recompute_tokens_per_s']:.4g} tok/s, speed-up {s['speedup']:.1f}x")
    lines += _layout_lines(r["cache_layouts"])
    d = r["decode"]
    for k, v in d["ratio_q_kv_over_qkv"].items():
        lines.append(f"measure(): q_kv/qkv {k}: {d['q_kv'][k]} / {d['qkv'][k]} = " + ("n/a" if v is None else f"{v:.3f}")
                     + (" (target <= 0.55)" if k.startswith("kv_cache_bytes") else "")
                     + (" (target >= 1.0)" if k.startswith("decode_tokens") else ""))
    for name in DESIGNS:
        fracs = ", ".join(f"ctx {c}: {d[name][f'decode_roofline_frac_ctx{c}']:.3f}" for c in d["contexts"])
        lines.append(f"measure(): {name} decode_roofline_frac {fracs}")
    lines.append(f"load average before {r['load_average_before']}, after {r['load_average_after']}; "
                 f"{r['wall_s']:.0f} s; threads {r['repeatability']['fingerprint']['threads']}")
    return "\n".join(lines)


def _layout_lines(c: dict) -> list[str]:
    lines = [f"cached decode tok/s, batch {c['decode_batch']}, {c['dtype']}: concat (torch.cat) vs static (in place); "
             f"roofline at {c['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, {c['peak_flops_per_s'] / 1e9:.0f} GFLOP/s"]
    for key, row in c.items():
        if not key.startswith("ctx"):
            continue
        for name in DESIGNS:
            f = row[name]
            lines.append(f"  {key:<8} {name:<15} concat {f['concat']['tokens_per_s']:9.1f}  static "
                         f"{f['static']['tokens_per_s']:9.1f}  ({f['static_over_concat']:.2f}x)  roofline "
                         f"{f['roofline_tokens_per_s']:9.1f}  frac {f['static']['roofline_frac']:.3f}")
        for name in DESIGNS[1:]:
            ratio = row[f"{name}_over_qkv"]
            lines.append(f"  {key:<8} {name}/qkv: concat {ratio['concat']:.3f}, static {ratio['static']:.3f}")
    return lines


if __name__ == "__main__":
    sys.exit(main())

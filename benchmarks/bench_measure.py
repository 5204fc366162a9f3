"""Benchmark of the measurement protocol itself, in one run:

1. repeatability: the spread of each figure over 5 independent `measure()` calls of one design
   (target: CV <= 5% on an idle CPU), beside the spread within each call; for every throughput
   both as measured and `_corrected` for the machine's drift (nas/measure/reference.py), and the drift
   itself (`machine_speed`: the reference kernels' rates over the node's calibration);
2. the decode speed-up from the KV cache at long context (cached steps vs a loop that re-runs
   the whole prefix for every token);
3. decode memory of `q_kv` vs `qkv`: the cache bytes held (target <= 0.55x), and the process
   memory that decoding holds and peaks at.

    python benchmarks/bench_measure.py [--threads N] [--device auto] [--out result.json]

Prints a summary and writes every figure (with the fingerprint) as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import torch

from nas.device import resolve_device
from nas.measure import MeasureSettings, coefficient_of_variation, measure, measure_decode
from nas.model import build_model
from search_spaces.spec import ArchSpec, uniform

TIMED = ("train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",
         "train_tokens_per_s_corrected", "prefill_tokens_per_s_corrected", "decode_tokens_per_s_corrected",
         "mfu", "machine_speed")
MEMORY = ("peak_memory_mb", "decode_memory_mb")


def design(proj: str = "qkv") -> ArchSpec:
    """d_model 256, 4 layers, 8 heads: big enough for stable CPU timings, small enough for 2 cores."""
    return ArchSpec(vocab_size=256, context=2048, d_model=256, n_heads=8, ffn_dim=1024, layers=uniform(4, proj=proj))


def repeatability(settings: MeasureSettings, n: int = 5) -> dict:
    runs = [measure(design(), settings).to_dict() for _ in range(n)]
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


def cache_speedup(device: torch.device, context: int, decode_tokens: int) -> dict:
    torch.manual_seed(0)
    model = build_model(design()).to(device).eval()
    args = dict(context=context, decode_tokens=decode_tokens, device=device, warmup=1, repeats=3)
    cached, _, _ = measure_decode(model, use_cache=True, **args)
    recompute, _, _ = measure_decode(model, use_cache=False, **args)
    return {
        "context": context,
        "decode_tokens": decode_tokens,
        "cached_tokens_per_s": cached.median,
        "cached_cv": cached.cv,
        "recompute_tokens_per_s": recompute.median,
        "recompute_cv": recompute.cv,
        "speedup": cached.median / recompute.median,
    }


def decode_memory(settings: MeasureSettings) -> dict:
    figures = {}
    for proj in ("qkv", "q_kv"):
        m = measure(design(proj), settings).to_dict()
        figures[proj] = {k: m[k] for k in ("kv_cache_bytes", "kv_cache_bytes_analytic", "kv_cache_bytes_match",
                                           "decode_memory_mb", "decode_peak_memory_mb")}
    ratio = {k: _ratio(figures["q_kv"][k], figures["qkv"][k])
             for k in ("kv_cache_bytes", "decode_memory_mb", "decode_peak_memory_mb")}
    return {"context": settings.decode_contexts, "decode_batch": settings.decode_batch, **figures,
            "ratio_q_kv_over_qkv": ratio}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads while measuring (default: leave)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    base = MeasureSettings(batch_size=4, seq_len=256, decode_contexts=(512,), decode_tokens=32, warmup=2, repeats=5,
                           min_repeat_s=0.5, device=str(device), threads=args.threads)
    result = {
        "repeatability": repeatability(base),
        "cache_speedup": cache_speedup(device, context=2048, decode_tokens=8),
        "decode_memory": decode_memory(dataclasses.replace(
            base, include=("memory",), decode_contexts=(2048,), decode_batch=8)),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
    }
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    print(_summary(result), file=sys.stderr)
    return 0


def _summary(r: dict) -> str:
    lines = ["repeatability over 5 measurements (target cv <= 5% on an idle CPU; machine_speed is the "
             "machine's own drift):"]
    for name in TIMED + MEMORY:
        f = r["repeatability"][name]
        within = f["cv_within_run_median"]
        lines.append(f"  {name:<30} median {f['median']:>12.4g}   cv between runs {100 * f['cv_between_runs']:5.1f}%"
                     + ("" if within is None else f"   cv within a run {100 * within:5.1f}%"))
    s = r["cache_speedup"]
    lines.append(f"decode at context {s['context']}: cached {s['cached_tokens_per_s']:.4g} tok/s, recomputing "
                 f"{s['recompute_tokens_per_s']:.4g} tok/s, speed-up {s['speedup']:.1f}x")
    m = r["decode_memory"]
    for k, v in m["ratio_q_kv_over_qkv"].items():
        lines.append(f"decode memory q_kv/qkv, {k}: {m['q_kv'][k]} / {m['qkv'][k]} = "
                     + ("n/a" if v is None else f"{v:.3f}") + (" (target <= 0.55)" if k == "kv_cache_bytes" else ""))
    lines.append(f"load average before {r['load_average_before']}, after {r['load_average_after']}; "
                 f"{r['wall_s']:.0f} s; threads {r['repeatability']['fingerprint']['threads']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

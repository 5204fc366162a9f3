"""Training speed: ``nas.train.train`` against a bare hand-written PyTorch loop, its model FLOP
utilisation, and the step time of each ``proj`` mode relative to ``qkv``.

    python benchmarks/bench_train.py [--quick] [--size small|gpt2|tiny] [--compile] [--out results.json] [--device auto]

``--size gpt2`` is the GPU check's model (benchmarks/gpu_check.sh): GPT-2 small's shape, d_model 768,
12 layers of 12 heads, context 1024, a 50304-entry table (124M parameters; the corpus is bytes, so
most rows are never looked up, but the LM head multiplies by all of them). ``--size tiny`` is a
smoke run of a few seconds. ``--compile`` runs both sides under ``torch.compile``
(``TrainBudget.compile``; the compile time, excluded from the throughput, is reported apart).

(a) Throughput ratio. Both sides train the same model (same spec and seed), batch, seq_len and
    number of steps, with AdamW and gradient clipping at 1.0; the bare loop is the nanoGPT
    pattern (``torch.randint`` windows, forward, loss, backward, clip, step). The first step of
    every run is not timed (optimiser state allocation), nor is ``train``'s evaluation, and one
    untimed run of each side warms the process up. Runs alternate between the two sides and the
    median of ``--repeats`` is reported. Target: ratio >= 0.95.
(b) MFU: ``costs.flops_per_token`` x tokens/s over the rate of a large matmul in the training
    dtype (bf16 on CUDA, where training autocasts; fp32 on the CPU), timed in the same run right
    after the throughput runs (nas/measure/reference.py). Target on a GPU: >= 40% in bf16 at gpt2.
(c) Step time per proj mode: the bare loop over uniform specs that differ only in ``proj``, at
    equal d_model and heads; median over repeats, modes interleaved within each repeat.

Never run this beside other work on the same cores: neighbours distort both sides.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nas.costs import costs  # noqa: E402
from nas.data import Corpus, load_corpus  # noqa: E402
from nas.measure.reference import reference, sample  # noqa: E402
from nas.model import build_model  # noqa: E402
from nas.train import TrainBudget, autocast_for, resolve_device, train  # noqa: E402
from search_spaces.spec import PROJ_MODES, ArchSpec, uniform  # noqa: E402


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    d_model: int = 256
    n_heads: int = 4
    layers: int = 4
    context: int = 256
    vocab_size: int = 256
    batch_size: int = 8
    steps: int = 16  # per timed run, the first of which is not timed
    repeats: int = 5
    compile: bool = False


SIZES = {
    "small": Setup(),
    "gpt2": Setup(d_model=768, n_heads=12, layers=12, context=1024, vocab_size=50304, batch_size=8),
    "tiny": Setup(d_model=64, n_heads=2, layers=2, context=64, batch_size=4, steps=4, repeats=2),
}


def spec_for(setup: Setup, proj: str) -> ArchSpec:
    return ArchSpec(vocab_size=setup.vocab_size, context=setup.context, d_model=setup.d_model, n_heads=setup.n_heads,
                    ffn_dim=4 * setup.d_model, layers=uniform(setup.layers, proj=proj))


def bare_loop(spec: ArchSpec, data: torch.Tensor, setup: Setup, device: torch.device) -> float:
    """Training tokens per second of a plain loop, steps 2..N."""
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    if setup.compile:  # compiled at step 1, which is not timed
        model = torch.compile(model)  # type: ignore[assignment]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    autocast, B, T = autocast_for(device), setup.batch_size, setup.context
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for step in range(setup.steps):
        if step == 1:
            sync()
            t0 = time.perf_counter()
        ix = torch.randint(len(data) - T - 1, (B,))
        x = torch.stack([data[i:i + T] for i in ix]).to(device)  # (B, T)
        y = torch.stack([data[i + 1:i + 1 + T] for i in ix]).to(device)
        with autocast():
            logits = model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return (setup.steps - 1) * B * T / (time.perf_counter() - t0)


def qkvnas_loop(spec: ArchSpec, corpus: Corpus, setup: Setup, device: torch.device) -> float:
    """``nas.train.train``'s own figure: training steps only, first step excluded."""
    return qkvnas_run(spec, corpus, setup, device)[0]


def qkvnas_run(spec: ArchSpec, corpus: Corpus, setup: Setup, device: torch.device) -> tuple[float, float | None]:
    """(tokens/s, compile seconds or None) of one ``nas.train.train`` run."""
    budget = TrainBudget(tokens=setup.steps * setup.batch_size * setup.context, batch_size=setup.batch_size,
                         eval_every=setup.steps, eval_batches=1, device=str(device), compile=setup.compile)
    result = train(spec, corpus, budget)
    assert result.steps == setup.steps and not result.diverged, result.reason
    return result.train_tokens_per_s, result.compile_s


def throughput_ratio(setup: Setup, corpus: Corpus, data: torch.Tensor, device: torch.device) -> dict[str, Any]:
    spec = spec_for(setup, "qkv")
    warm = dataclasses.replace(setup, steps=3)
    _, compile_s = qkvnas_run(spec, corpus, warm, device)
    bare_loop(spec, data, warm, device)
    ours, bare = [], []
    for _ in range(setup.repeats):
        ours.append(qkvnas_loop(spec, corpus, setup, device))
        bare.append(bare_loop(spec, data, setup, device))
    ratios = [o / b for o, b in zip(ours, bare)]
    return {
        "qkvnas_tokens_per_s": statistics.median(ours),
        "bare_tokens_per_s": statistics.median(bare),
        "ratio_of_medians": statistics.median(ours) / statistics.median(bare),
        "median_paired_ratio": statistics.median(ratios),
        "best_ratio": max(ours) / max(bare),  # noise only slows a run: the best runs are the cleanest
        "runs_qkvnas": ours,
        "runs_bare": bare,
        "params": sum(p.numel() for p in build_model(spec).parameters()),
        "compile_s": compile_s,  # of the warm-up run, the first to compile
    }


def mfu(setup: Setup, device: torch.device, throughput: dict[str, Any]) -> dict[str, Any]:
    """Model FLOP utilisation of both loops against a large matmul timed now, in the training dtype."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what nas.train autocasts to
    ref = reference("matmul", device, dtype)
    sample(ref, device)  # warm-up
    peak = statistics.median(ref.units / sample(ref, device, 0.1) for _ in range(5))
    flops = costs(spec_for(setup, "qkv"), seq_len=setup.context).flops_per_token
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "peak_flops_per_s": peak,
        "flops_per_token": flops,
        "mfu_qkvnas": flops * throughput["qkvnas_tokens_per_s"] / peak,
        "mfu_bare": flops * throughput["bare_tokens_per_s"] / peak,
    }


def proj_step_times(setup: Setup, data: torch.Tensor, device: torch.device) -> dict[str, Any]:
    specs = {mode: spec_for(setup, mode) for mode in PROJ_MODES}
    warm = dataclasses.replace(setup, steps=3)
    for spec in specs.values():
        bare_loop(spec, data, warm, device)
    runs: dict[str, list[float]] = {mode: [] for mode in PROJ_MODES}
    for _ in range(setup.repeats):
        for mode, spec in specs.items():
            tokens_per_s = bare_loop(spec, data, setup, device)
            runs[mode].append(1000 * setup.batch_size * setup.context / tokens_per_s)  # ms per step
    base = statistics.median(runs["qkv"])
    return {
        mode: {
            "step_ms": statistics.median(ms),
            "relative_to_qkv": statistics.median(ms) / base,
            "best_step_ms": min(ms),
            "best_relative_to_qkv": min(ms) / min(runs["qkv"]),
            "params": sum(p.numel() for p in build_model(specs[mode]).parameters()),
            "runs_ms": ms,
        }
        for mode, ms in runs.items()
    }


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def print_table(report: dict[str, Any]) -> None:
    a = report["throughput"]
    env = report["environment"]
    print(f"setup: {report['setup']}")
    print(f"on {env['device']}, torch {env['torch']}, {env['torch_threads']} threads, "
          f"load average {env['load_average_at_start'][0]:.1f} at start, {env['load_average_at_end'][0]:.1f} at end")
    print(f"(a) qkvnas train {a['qkvnas_tokens_per_s']:,.0f} tok/s  vs bare loop {a['bare_tokens_per_s']:,.0f} tok/s"
          f"  ratio {a['ratio_of_medians']:.3f} (median paired {a['median_paired_ratio']:.3f}, "
          f"best runs {a['best_ratio']:.3f}; target >= 0.95); {a['params']:,} parameters"
          + ("" if a["compile_s"] is None else f"; compiled in {a['compile_s']:.1f} s"))
    m = report["mfu"]
    print(f"(b) MFU against a {m['dtype']} matmul at {m['peak_flops_per_s'] / 1e12:.3g} TFLOP/s: qkvnas "
          f"{100 * m['mfu_qkvnas']:.1f}%, bare loop {100 * m['mfu_bare']:.1f}%")
    if not report["proj_modes"]:
        return
    print("(c) proj mode   median step ms   vs qkv   best step ms   vs qkv   params")
    for mode, row in report["proj_modes"].items():
        print(f"    {mode:<11} {row['step_ms']:14.1f}   {row['relative_to_qkv']:6.3f}   {row['best_step_ms']:12.1f}"
              f"   {row['best_relative_to_qkv']:6.3f}   {row['params']:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    parser.add_argument("--size", default="small", choices=list(SIZES), help="the model and batch (default: small)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both loops")
    parser.add_argument("--no-proj-modes", action="store_true", help="skip (c), the step time per proj mode")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON to this path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = SIZES[args.size]
    setup = dataclasses.replace(setup, steps=6, repeats=3) if args.quick else setup
    setup = dataclasses.replace(setup, steps=args.steps or setup.steps, repeats=args.repeats or setup.repeats,
                                compile=args.compile)
    device = resolve_device(args.device)
    corpus = load_corpus()
    data = torch.from_numpy(corpus.train.astype(np.int64))
    report = {"setup": dataclasses.asdict(setup), "environment": environment(device)}
    report["throughput"] = throughput_ratio(setup, corpus, data, device)
    report["mfu"] = mfu(setup, device, report["throughput"])
    report["proj_modes"] = {} if args.no_proj_modes else proj_step_times(setup, data, device)
    report["environment"]["load_average_at_end"] = os.getloadavg()
    print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

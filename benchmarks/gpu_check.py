"""The GPU path run for real, in one go (under 8 minutes on one GPU); every figure as JSON under OUT.

    benchmarks/gpu_check.sh OUT [--device cuda|cpu]      (this script, via its shell wrapper)

Steps, in order, each bounded by what is left of the 8 minutes (a step that would start with under
20 s left is skipped, and says so):

  tests.json                  the CUDA tests (`pytest -k cuda`; on a CPU they skip, or check the message)
  bench_train.json            bench_train.py: nas.train against a bare loop at GPT-2 small's shape
                              (~124M parameters), MFU against the same run's bf16 matmul
  bench_measure.json          bench_measure.py: repeatability, old vs preallocated cache, decode roofline
                              fraction, q_kv vs qkv memory and decode speed (bf16)
  study.json                  a 2-trial study with gpus_per_trial = 0.5 and max_concurrent = 2 (two trials
                              share the GPU; measurement stays exclusive): its trials, the times each
                              measurement held the node's lock, whether two of them overlapped
  bench_train_compiled.json   bench_train.py under torch.compile (budget.compile): compile time apart, MFU
  gpu_check.json              the device, each step's exit status, seconds and output tail, the total

`--device cpu` runs the same steps at tiny sizes (a smoke run of a minute or two, as the test suite
does), so the script is known to work before a GPU is lent; its figures say nothing of a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
MIN_STEP_S = 20
CUDA_TEST_FILES = ["tests/test_gpu_check.py", "tests/test_measure.py", "tests/test_train.py", "tests/test_model.py"]


def study_toml(out: Path, gpu: bool) -> str:
    """Two trials at once on one node; on a GPU each takes half of it. The measured objective makes
    every trial measure, under the node's exclusive lock, while the other may be training."""
    size = ("context = 256\nd_model = 128\nn_heads = 4\nffn_dim = 512\nn_layers = 2" if gpu
            else "context = 32\nd_model = 32\nn_heads = 4\nffn_dim = 64\nn_layers = 1")
    budget = "tokens = 2_000_000\nbatch_size = 32" if gpu else "tokens = 4096\nbatch_size = 8"
    measure = ('decode_contexts = [256]\ndecode_batch = 8\nrepeats = 3\nwarmup = 1\nmin_repeat_s = 0.1\n'
               'dtype = "bfloat16"' if gpu else
               "decode_contexts = [32]\ndecode_tokens = 4\nrepeats = 1\nwarmup = 0\nmin_repeat_s = 0.0\nthreads = 1")
    return f"""name = "gpu-check"
objectives = ["val_loss", "decode_tokens_per_s"]
trials = 2
directory = "{out / 'study'}"
[space]
name = "paper"
[space.options.base]
{size}
[budget]
{budget}
eval_batches = 2
[measure]
{measure}
[sampler]
name = "random"
seed = 0
[resources]
cpus_per_trial = 1
gpus_per_trial = {0.5 if gpu else 0}
max_concurrent = 2
"""


def steps(out: Path, device: str) -> list[tuple[str, list[str]]]:
    py, gpu = sys.executable, device != "cpu"
    train_size = ["--size", "gpt2"] if gpu else ["--size", "tiny"]
    smoke = [] if gpu else ["--quick", "--threads", "1"]
    return [
        ("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", f"--junitxml={out / 'tests.xml'}",
                   *CUDA_TEST_FILES]),
        ("bench_train", [py, "benchmarks/bench_train.py", "--device", device, *train_size, "--out",
                         str(out / "bench_train.json")] + ([] if gpu else ["--threads", "1"])),
        ("bench_measure", [py, "benchmarks/bench_measure.py", "--device", device, *smoke, "--out",
                           str(out / "bench_measure.json")]),
        ("study", [py, "-m", "nas.cli", "run", str(out / "study.toml")]),
        ("bench_train_compiled", [py, "benchmarks/bench_train.py", "--device", device, *train_size, "--compile",
                                  "--no-proj-modes", "--repeats", "3" if gpu else "1", "--out",
                                  str(out / "bench_train_compiled.json")] + ([] if gpu else ["--threads", "1"])),
    ]


def run_step(name: str, argv: list[str], left_s: float, env: dict[str, str]) -> dict[str, Any]:
    if left_s < MIN_STEP_S:
        return {"rc": None, "skipped": f"{left_s:.0f} s left of the {BUDGET_S} s budget"}
    print(f"gpu_check: {name} ({left_s:.0f} s left)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left_s)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as err:
        rc, tail = None, f"timed out after {left_s:.0f} s: {str(err.stdout or '')[-1500:]}"
    return {"rc": rc, "seconds": time.perf_counter() - t0, "argv": argv, "output_tail": tail}


def tests_json(xml: Path) -> dict[str, Any]:
    """The junit report as counts and one entry per test."""
    if not xml.is_file():
        return {"error": "pytest wrote no report"}
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        detail = next((child.get("message", "") for child in case if child.tag in ("failure", "error", "skipped")), "")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": detail[:500]})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
    return {"counts": counts, "cases": cases}


def study_json(folder: Path) -> dict[str, Any]:
    """The two trials from storage: states, values, where and when each measured."""
    import optuna

    from nas.engine import attrs

    storage = f"sqlite:///{folder / 'study.db'}"
    if not (folder / "study.db").is_file():
        return {"error": f"no study storage in {folder}"}
    trials = []
    for t in optuna.load_study(study_name="gpu-check", storage=storage).trials:
        record = attrs.read(t)  # user attributes and the bulk (nas/engine/attrs.py)
        m = record.get("measure") or {}
        trials.append({
            "number": t.number, "state": t.state.name, "values": t.values, "status": t.user_attrs.get("status"),
            "reason": t.user_attrs.get("reason"), "start": _epoch(t.datetime_start),
            "complete": _epoch(t.datetime_complete), "timings": record.get("timings"),
            "measure_held": [m.get("held_from"), m.get("held_to")], "measure_lock_wait_s": m.get("lock_wait_s"),
            "measure_device": (m.get("fingerprint") or {}).get("device_name"),
            "decode_tokens_per_s": m.get("decode_tokens_per_s"), "decode_roofline_frac": m.get("decode_roofline_frac"),
        })
    return {"trials": trials, "measurements_overlap": _overlap([t["measure_held"] for t in trials]),
            "trials_overlap": _overlap([[t["start"], t["complete"]] for t in trials])}


def _epoch(when: Any) -> float | None:
    return None if when is None else when.timestamp()


def _overlap(intervals: list[list[float | None]]) -> bool | None:
    """Whether any two of the intervals overlap; None when one is unknown."""
    if any(a is None or b is None for a, b in intervals):
        return None
    spans = sorted((float(a), float(b)) for a, b in intervals if a is not None and b is not None)
    return any(start < end for (_, end), (start, _) in zip(spans, spans[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder for the JSON figures")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.toml").write_text(study_toml(out, args.device != "cpu"), encoding="utf-8")
    # A private lock and calibration folder: the figures are this run's, and no other run waits on it.
    env = os.environ | {"QKVNAS_LOCK_DIR": str(out / "lock"), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    (out / "lock").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"device": args.device, "budget_s": BUDGET_S, "steps": {}}
    for name, step_argv in steps(out, args.device):
        report["steps"][name] = run_step(name, step_argv, BUDGET_S - (time.perf_counter() - t0), env)
    (out / "tests.json").write_text(json.dumps(tests_json(out / "tests.xml"), indent=2), encoding="utf-8")
    (out / "study.json").write_text(json.dumps(study_json(out / "study"), indent=2), encoding="utf-8")
    report["total_s"] = time.perf_counter() - t0
    report["ok"] = all(s["rc"] == 0 for s in report["steps"].values())
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} in {report['total_s']:.0f} s; figures in {out}",
          file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

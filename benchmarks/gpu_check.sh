#!/usr/bin/env bash
# The GPU check: the CUDA tests, bench_train.py (nas.train vs a bare loop at ~124M parameters, MFU in
# bf16), bench_measure.py (repeatability, old vs preallocated KV cache, decode roofline fraction, q_kv vs
# qkv memory) and a two-trial study sharing one GPU (gpus_per_trial = 0.5), in under 8 minutes; every
# figure as JSON under OUT (gpu_check.json lists the steps). See benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh OUT                  # on a GPU machine
#   benchmarks/gpu_check.sh OUT --device cpu     # the same steps at tiny sizes: a smoke run anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"

"""The machine's own speed: fixed reference kernels timed beside every measurement.

A shared or virtual machine does not run at one speed. On our 2-core development VM a fixed 1024²
matmul swings by ±10% over seconds (neighbours, host frequency), and every timed figure swings
with it, so two designs measured a minute apart are not comparable. The protocol therefore
times a fixed reference kernel before and after every timed repeat (`nas.measure.time_calls`)
and reports each throughput twice: as measured, and corrected to the node's calibrated speed,

    corrected_i = measured_i x calibrated_rate / reference_rate_i      (one sample per repeat)

so a design measured while the machine ran slow is not ranked below one measured while it ran
fast. Two kernels correct the figures, for the two regimes a design's figures fall in:

- `matmul`: a large square matmul in the measured dtype, bound by arithmetic. It corrects the
  training and prefill throughputs, and is the denominator of MFU.
- `small_ops`: a chain of 300 tiny matmul + GELU steps, bound by per-operator overhead, as
  decoding one token at a time is (on a CPU; on a GPU, by kernel launches).

A third, `copy` (a large memory copy, bound by bandwidth), corrects nothing: its calibrated rate
is the memory bandwidth of the decode roofline (nas/measure/roofline.py), beside the matmul's
peak FLOP rate.

The calibrated rate is measured once per node and setup (device, torch, dtype, threads) and kept
in a JSON file (``calibration_dir()``), so every process of a study on the node (each Ray worker)
corrects to the same constant. Its own error is a common scale factor: it moves all corrected
figures of the node together and leaves their ranking alone.
"""
from __future__ import annotations

import json
import math
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nas.common import atomic_write_json
from nas.measure.fingerprint import cpu_model

CALIBRATION_FILE = "qkvnas-reference.json"
CALIBRATION_DIR_ENV = "QKVNAS_CALIBRATION_DIR"
SMALL_OPS_STEPS = 300
CALIBRATION_SAMPLES = 9
CALIBRATION_SAMPLE_S = 0.1  # 9 x 0.1 s: the calibration spans about a second
# Each of the copy's two buffers: far past any CPU cache or a GPU's L2.
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30}


@dataclass(frozen=True)
class Reference:
    """One fixed kernel: `fn` does `units` of work (`unit`) per call."""

    name: str
    fn: Callable[[], object]
    units: float
    unit: str


_KERNELS: dict[tuple[str, str, str], Reference] = {}


def reference(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Reference:
    """The reference kernel `name` ('matmul' or 'small_ops') on `device`, built once per process."""
    key = (name, str(device), str(dtype))
    if key not in _KERNELS:
        _KERNELS[key] = _build(name, device, dtype)
    return _KERNELS[key]


def _build(name: str, device: torch.device, dtype: torch.dtype) -> Reference:
    # Random operands, not constants: a GPU draws (and throttles) more on toggling bits.
    gen = torch.Generator(device=device).manual_seed(0)
    if name == "matmul":
        n = 8192 if device.type == "cuda" else 1024  # a CPU reaches its matmul peak by ~1024
        a, b = (torch.randn(n, n, generator=gen, device=device).to(dtype) for _ in range(2))
        out = torch.empty_like(a)
        return Reference("matmul", lambda: torch.mm(a, b, out=out), 2.0 * n**3, "FLOP")
    if name == "small_ops":
        w = torch.randn(256, 256, generator=gen, device=device).to(dtype) / 16
        x0 = torch.randn(1, 256, generator=gen, device=device).to(dtype)

        def chain() -> torch.Tensor:
            x = x0
            for _ in range(SMALL_OPS_STEPS):
                x = F.gelu(x @ w)  # each step depends on the last: no batching across steps
            return x

        return Reference("small_ops", chain, 2.0 * SMALL_OPS_STEPS, "op")
    raise ValueError(f"reference kernel {name!r} is not known; use 'matmul' or 'small_ops'")


def copy_kernel(device: torch.device) -> Reference:
    """A large copy: bytes read plus bytes written per call. Not kept with the other kernels:
    its buffers are made at its first call and freed with it, so a measurement (or a trial
    sharing a GPU) does not hold them once the bandwidth is known."""
    n = COPY_BYTES["cuda" if device.type == "cuda" else "cpu"]
    buffers: list[torch.Tensor] = []

    def run() -> torch.Tensor:
        if not buffers:
            buffers.extend(torch.full((n,), 1, dtype=torch.uint8, device=device) for _ in range(2))
        return buffers[1].copy_(buffers[0])

    return Reference("copy", run, 2.0 * n, "B")


def memory_bandwidth(device: torch.device, directory: str) -> float:
    """The node's calibrated memory bandwidth (bytes/s of a large copy), measured once per node and
    setup like the other kernels' rates; call it while holding the measurement lock."""
    return calibrated_rate(copy_kernel(device), device, torch.uint8, directory)


def sample(ref: Reference, device: torch.device, min_s: float = 0.05) -> float:
    """Seconds per call of the kernel, over enough back-to-back calls to last `min_s`."""
    first = _timed(ref.fn, device)
    k = math.ceil(min_s / first) if first > 0 else 1
    if k <= 1:
        return first
    return _timed(lambda: [ref.fn() for _ in range(k)], device) / k


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, enabled=False):  # the kernel runs in its own dtype, always
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


# ---- the node's calibration -------------------------------------------------------------
def calibration_dir() -> str:
    """Where the node's calibration file is kept: ``$QKVNAS_CALIBRATION_DIR``; else a private lock
    folder (``$QKVNAS_LOCK_DIR``: a run that isolates its lock isolates its calibration too); else
    ``$XDG_CACHE_HOME/qkvnas/<host>`` (``~/.cache/qkvnas/<host>``). Per user, not the shared temp
    dir, where any user could write (or plant) the constant every figure is corrected to; per
    machine, as a home folder may be shared by machines of different speeds. Every process of the
    user on the node (each Ray worker of a study) reads the same file. Without a home folder: a
    folder of the user's own in the temp dir."""
    explicit = os.environ.get(CALIBRATION_DIR_ENV) or os.environ.get("QKVNAS_LOCK_DIR")
    if explicit:
        return explicit
    host = socket.gethostname() or "localhost"
    cache = os.environ.get("XDG_CACHE_HOME") or (os.path.join(os.path.expanduser("~"), ".cache")
                                                  if os.path.expanduser("~") != "~" else "")
    if cache:
        return os.path.join(cache, "qkvnas", host)
    return os.path.join(tempfile.gettempdir(), f"qkvnas-{os.getuid() if hasattr(os, 'getuid') else 'user'}", host)


def calibration_key(ref: Reference, device: torch.device, dtype: torch.dtype) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return f"{ref.name} | {device} {name} | torch {torch.__version__} | {dtype} | {torch.get_num_threads()} threads"


def calibrated_rate(ref: Reference, device: torch.device, dtype: torch.dtype, directory: str) -> float:
    """The node's reference rate (units/s) for this setup: read from the calibration file, or
    measured now (the median of 9 samples of 0.1 s after a warm-up) and stored there.

    Call it while holding the measurement lock: the lock is what keeps two processes from
    calibrating (or measuring) at once, and the file is replaced atomically.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, CALIBRATION_FILE)
    key = calibration_key(ref, device, dtype)
    table = _read(path)
    if isinstance(table.get(key), dict) and table[key].get("rate", 0) > 0:
        return float(table[key]["rate"])
    sample(ref, device)  # warm-up
    rate = statistics.median(ref.units / sample(ref, device, CALIBRATION_SAMPLE_S)
                             for _ in range(CALIBRATION_SAMPLES))
    table = _read(path)  # re-read: the file may have other setups' entries by now
    table[key] = {"rate": rate, "unit": f"{ref.unit}/s", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(path, table, indent=1)
    return rate


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):  # absent or torn: recalibrate rather than fail a measurement
        return {}
    return data if isinstance(data, dict) else {}

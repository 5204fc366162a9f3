"""Hardware objectives measured honestly: throughput, memory, KV cache, energy and MFU of one design.

The protocol (`time_calls`): warm-up calls, then `repeats` timed repeats, each long enough to
last `min_repeat_s`; a figure is the median over the repeats, stored with its coefficient of
variation. CUDA is timed with events and synchronisation, the CPU with `perf_counter`. A fixed
reference kernel (nas/reference.py) is timed around every repeat, so each throughput also comes
corrected for the machine's drift (`*_corrected`), and MFU is a per-repeat ratio.

`measure(spec, settings)` builds its own fresh, seeded model from the spec (never the model a
study trains) and holds `measurement_lock()` throughout, so trials that share a node never
measure at the same time. A figure this machine cannot measure is None, with a one-line reason
in `Measurement.unavailable`; nothing is estimated in its place.

The figures (`Measurement.to_dict()`; per decode context also as `<name>_ctx<C>`):
- `train_tokens_per_s`: batch x seq_len tokens per second of full steps (forward, backward, AdamW).
- `<throughput>_corrected`: the same repeats, each scaled by the node's calibrated reference
  rate over the reference's rate around it (nas/reference.py): comparable across time on a
  machine whose speed drifts. `machine_speed`: those reference rates over the calibrated one.
- `prefill_tokens_per_s`: prompt tokens per second of one forward over decode_batch x C tokens
  that fills a fresh cache; `decode_tokens_per_s`: tokens per second of greedy one-token steps
  with the KV cache, which holds C tokens at the end.
- `peak_memory_mb`: peak growth over two training steps of a fresh model (parameters, gradients,
  optimizer state, activations): CUDA `max_memory_allocated`, CPU VmHWM, over the baseline.
- `decode_memory_mb`: what the process still holds after prefill + decode at the first context
  (the cache, as allocated); `decode_peak_memory_mb`: the peak growth during them.
- `kv_cache_bytes`: `cache.nbytes()` after decoding, beside `kv_cache_bytes_analytic`
  (`nas.costs.kv_cache_bytes` in the dtype the cache is computed in) and `kv_cache_bytes_match`.
- `energy_j_per_token`: NVML total energy of the whole device over the timed training calls
  (idle power included) per token; `decode_energy_j_per_token` likewise for decoding.
- `mfu`: `costs.flops_per_token` x training tokens/s / `peak_flops_per_s`, per repeat, where the
  peak is the rate of a large matmul in the same dtype timed around that repeat.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.device import resolve_device
from nas.fingerprint import MB, Nvml, fingerprint
from nas.reference import Reference, calibrated_rate, reference, sample
from search_spaces.spec import ArchSpec

try:  # POSIX: a per-node lock that other processes see
    import fcntl
except ImportError:  # pragma: no cover - Windows: serialise within this process only
    fcntl = None  # type: ignore[assignment]

PHASES: tuple[str, ...] = ("train", "prefill", "decode", "memory")
AUTOCAST: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
SDPA_BACKENDS: tuple[str, ...] = ("math", "flash", "efficient", "cudnn")
LOCK_FILE = "qkvnas-measure.lock"
_TIMED = ("prefill_tokens_per_s", "prefill_tokens_per_s_corrected", "decode_tokens_per_s",
          "decode_tokens_per_s_corrected")  # figures stored with their spread
_DECODE_FIGURES = ("decode_tokens_per_s", "decode_tokens_per_s_corrected", "decode_energy_j_per_token",
                   "kv_cache_bytes", "kv_cache_bytes_analytic", "kv_cache_bytes_match")


# ---- settings -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class MeasureSettings:
    """How one design is measured. The settings are stored in the fingerprint beside the figures."""

    batch_size: int = 8  # training throughput and peak memory
    seq_len: int | None = None  # None → spec.context
    decode_contexts: tuple[int, ...] | None = None  # tokens in the cache at the end; None → (spec.context,)
    decode_batch: int = 1  # batch of prefill and decode
    decode_tokens: int = 32  # tokens decoded per timed call (at most half the context)
    warmup: int = 2
    repeats: int = 5
    min_repeat_s: float = 0.2  # a repeat runs the step enough times to last this long
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"  # autocast dtype; "float32" runs without autocast
    compile: bool = False  # torch.compile the model
    sdpa_backend: str | None = None  # torch.nn.attention.sdpa_kernel: math | flash | efficient | cudnn
    threads: int | None = None  # torch intra-op threads while measuring; None leaves them
    include: tuple[str, ...] = PHASES
    seed: int = 0
    lock: bool = True  # hold measurement_lock(); off only for callers that hold it themselves

    def __post_init__(self) -> None:
        # JSON and the command line give lists; the frozen record keeps tuples.
        for name in ("decode_contexts", "include"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("batch_size", "decode_batch", "decode_tokens", "repeats"):
            _check_int(name, getattr(self, name), 1)
        _check_int("warmup", self.warmup, 0)
        for name in ("seq_len", "threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.decode_contexts is not None:
            if not self.decode_contexts:
                raise ValueError("decode_contexts is empty; give at least one context, e.g. [512, 2048], or null")
            for c in self.decode_contexts:
                _check_int("decode_contexts", c, 2)
        if not isinstance(self.min_repeat_s, (int, float)) or self.min_repeat_s < 0:
            raise ValueError(f"min_repeat_s={self.min_repeat_s!r} must be a number >= 0 (seconds)")
        if self.dtype not in AUTOCAST:
            raise ValueError(f"dtype={self.dtype!r} is not known; use one of {list(AUTOCAST)}")
        if self.sdpa_backend is not None and self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(
                f"sdpa_backend={self.sdpa_backend!r} is not known; use one of {list(SDPA_BACKENDS)} or null")
        unknown = sorted(set(self.include) - set(PHASES))
        if unknown or not self.include:
            raise ValueError(f"include={list(self.include)} must be a non-empty subset of {list(PHASES)}")
        if self.compile and self.warmup < 1:
            raise ValueError("compile=true needs warmup >= 1, so that compilation is not timed")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def seq_len_for(self, spec: ArchSpec) -> int:
        T = spec.context if self.seq_len is None else self.seq_len
        if T > spec.context:
            raise ValueError(f"seq_len={T} exceeds the design's context={spec.context}; use at most {spec.context}")
        return T

    def contexts_for(self, spec: ArchSpec) -> tuple[int, ...]:
        return (spec.context,) if self.decode_contexts is None else self.decode_contexts


def _check_int(name: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer >= {least}")


# ---- statistics -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Stat:
    """A measured figure: the median over repeats, its spread, and the repeats themselves."""

    median: float
    cv: float | None  # sample standard deviation / mean; None with a single repeat
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float] | tuple[float, ...]) -> "Stat":
        if not samples:
            raise ValueError("a figure needs at least one sample")
        return cls(median=statistics.median(samples), cv=coefficient_of_variation(samples), samples=tuple(samples))


def coefficient_of_variation(samples: list[float] | tuple[float, ...]) -> float | None:
    if len(samples) < 2:
        return None
    mean = statistics.fmean(samples)
    return statistics.stdev(samples) / mean if mean else None


# ---- the timing protocol --------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Timing:
    seconds: tuple[float, ...]  # per call, one entry per repeat
    calls_per_repeat: int
    energy_j: float | None  # over all timed calls; None without an energy counter
    reference_seconds: tuple[float, ...] | None = None  # per repeat: a reference call around it

    @property
    def calls(self) -> int:
        return self.calls_per_repeat * len(self.seconds)

    def rate(self, units_per_call: float) -> Stat:
        """Units (tokens, FLOPs) per second, one sample per repeat."""
        return Stat.of([units_per_call / s for s in self.seconds])

    def reference_rate(self, reference_units: float) -> Stat:
        """The reference kernel's units per second, one sample per repeat: the machine's speed."""
        if self.reference_seconds is None:
            raise ValueError("this timing has no reference: pass reference= to time_calls")
        return Stat.of([reference_units / r for r in self.reference_seconds])

    def corrected_rate(self, units_per_call: float, reference_units: float, calibrated_rate: float) -> Stat:
        """Units per second as if the machine ran the reference at `calibrated_rate`: each repeat's
        rate scaled by calibrated / (the reference's rate around that repeat)."""
        speeds = self.reference_rate(reference_units).samples
        return Stat.of([units_per_call / s * calibrated_rate / r for s, r in zip(self.seconds, speeds)])


class _Clock:
    """Times one callable on a device, and adds up the energy counter over the timed windows."""

    def __init__(self, device: torch.device, energy_mj: Callable[[], int | None] | None = None) -> None:
        self.device, self.energy_mj = device, energy_mj
        self.energy_j: float | None = 0.0 if energy_mj is not None else None

    def time(self, fn: Callable[[], object]) -> float:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)  # earlier, untimed work must not leak into this window
        e0 = self.energy_mj() if self.energy_mj else None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        if e0 is not None and self.energy_mj is not None:
            e1 = self.energy_mj()
            self.energy_j = None if e1 is None or self.energy_j is None else self.energy_j + (e1 - e0) / 1000
        return seconds


def time_calls(
    step: Callable[[], object],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    min_repeat_s: float = 0.0,
    prepare: Callable[[], object] | None = None,
    energy_mj: Callable[[], int | None] | None = None,
    reference: Callable[[], float] | None = None,
) -> Timing:
    """Warm up, then time `repeats` repeats of `step`.

    A repeat runs `step` enough times to last `min_repeat_s` (calibrated on the last warm-up
    call). `prepare` runs untimed before every call (a fresh cache and its prefill, say); without
    it the calls of a repeat run back to back under one timer, as a training loop does.
    `reference` (seconds of one reference-kernel sample, see nas/reference.py) runs before the
    first repeat and after each one; a repeat's reference time is the mean of the two around it,
    so the machine's speed is sampled where the repeat ran. It is outside the timed windows.
    """
    clock = _Clock(device)
    last = 0.0
    for _ in range(warmup):
        if prepare is not None:
            prepare()
        last = clock.time(step)
    calls = max(1, math.ceil(min_repeat_s / last)) if warmup and last > 0 else 1
    clock = _Clock(device, energy_mj)
    seconds, around = [], []
    before = reference() if reference is not None else 0.0
    for _ in range(repeats):
        if prepare is None:
            seconds.append(clock.time(lambda: [step() for _ in range(calls)]) / calls)
        else:
            total = 0.0
            for _ in range(calls):
                prepare()
                total += clock.time(step)
            seconds.append(total / calls)
        if reference is not None:
            after = reference()
            around.append((before + after) / 2)
            before = after
    return Timing(seconds=tuple(seconds), calls_per_repeat=calls, energy_j=clock.energy_j,
                  reference_seconds=tuple(around) if reference is not None else None)


# ---- memory ---------------------------------------------------------------------------
class _CpuMemory:
    """Resident-set growth of this process over a phase (Linux /proc).

    Writing "5" to /proc/self/clear_refs resets VmHWM to the current VmRSS, so the high-water
    mark of one phase is not hidden by an earlier, larger one. Freed heap is trimmed first, so
    the baseline is what is really held.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.base_kb = 0
        if not sys.platform.startswith("linux"):
            self.reason = f"peak RSS needs Linux /proc (VmHWM, clear_refs); not measured on {sys.platform}"

    def start(self) -> None:
        if self.reason:
            return
        _release_freed_memory()
        self.base_kb = _proc_status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError as err:
            self.reason = f"cannot reset the peak RSS (/proc/self/clear_refs: {err.strerror}); not measured"

    def peak_mb(self) -> float | None:
        return None if self.reason else (_proc_status_kb("VmHWM") - self.base_kb) / 1024

    def held_mb(self) -> float | None:
        if self.reason:
            return None
        _release_freed_memory()
        return (_proc_status_kb("VmRSS") - self.base_kb) / 1024


class _CudaMemory:
    """Allocator statistics of one CUDA device over a phase: growth of the peak and of what is held."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.reason, self.base = device, None, 0

    def start(self) -> None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # so that the reserved peak is this phase's, not an earlier one's
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def peak_mb(self) -> float:
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - self.base) / MB

    def held_mb(self) -> float:
        gc.collect()
        return (torch.cuda.memory_allocated(self.device) - self.base) / MB

    def reserved_peak_mb(self) -> float:
        return torch.cuda.max_memory_reserved(self.device) / MB


def _memory_for(device: torch.device) -> _CpuMemory | _CudaMemory:
    return _CudaMemory(device) if device.type == "cuda" else _CpuMemory()


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


_LIBC: Any = None


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so RSS means memory in use."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        _LIBC = ctypes.CDLL(name) if name else False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


# ---- the per-node lock ----------------------------------------------------------------
_held = threading.local()
_process_lock = threading.Lock()


def lock_path() -> str:
    return os.path.join(os.environ.get("QKVNAS_LOCK_DIR") or tempfile.gettempdir(), LOCK_FILE)


@contextlib.contextmanager
def measurement_lock() -> Iterator[float]:
    """Exclusive use of this node for one measurement; yields the seconds spent waiting.

    An flock on a file in the system temp dir (or $QKVNAS_LOCK_DIR): every process and thread
    on the node that measures takes it, so no two measurements overlap. Re-entrant within a
    thread, so a caller may hold it around `measure()`, which takes it too.
    """
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield 0.0
        finally:
            _held.depth -= 1
        return
    path = lock_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.perf_counter()
    # Read-only with O_CREAT: another user's lock file (mode 0644) can still be locked.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:  # pragma: no cover
            _process_lock.acquire()
        _held.depth = 1
        try:
            yield time.perf_counter() - t0
        finally:
            _held.depth = 0
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:  # pragma: no cover
                _process_lock.release()
    finally:
        os.close(fd)


# ---- decoding, with and without the cache ---------------------------------------------
@dataclass
class DecodeState:
    cache: Any  # nas.model.KVCache, or None when every step recomputes the prefix
    tokens: Tensor  # (B, S) tokens so far (only grown without a cache)
    nxt: Tensor  # (B, 1) the token to feed next


def start_decode(model: nn.Module, prefix: Tensor, *, use_cache: bool) -> DecodeState:
    """Run the prefix once (the prefill) and pick the first token greedily."""
    cache = model.new_cache() if use_cache else None
    logits = model(prefix, cache)  # (B, P, V)
    return DecodeState(cache=cache, tokens=prefix, nxt=logits[:, -1].argmax(-1, keepdim=True))


def decode(model: nn.Module, state: DecodeState, n_tokens: int) -> None:
    """Greedy decoding of `n_tokens`: one token per step with the cache, else the whole sequence."""
    for _ in range(n_tokens):
        if state.cache is not None:
            logits = model(state.nxt, state.cache)  # (B, 1, V)
        else:
            state.tokens = torch.cat([state.tokens, state.nxt], dim=1)
            logits = model(state.tokens)  # (B, S, V): the prefix is recomputed every step
        state.nxt = logits[:, -1].argmax(-1, keepdim=True)


def decode_steps_for(context: int, decode_tokens: int) -> int:
    """Tokens decoded at `context`: at most half of it, so the steps run near that context."""
    return max(1, min(decode_tokens, context // 2))


def measure_decode(
    model: nn.Module,
    *,
    context: int,
    batch: int = 1,
    decode_tokens: int = 32,
    use_cache: bool = True,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    min_repeat_s: float = 0.0,
    seed: int = 0,
    energy_mj: Callable[[], int | None] | None = None,
    reference: Callable[[], float] | None = None,
) -> tuple[Stat, Timing, DecodeState]:
    """Decode tokens/s at `context`: the prefix (context - n tokens) runs untimed, then n greedy
    steps are timed, so the cache holds `context` tokens at the end. Returns the last state."""
    device = torch.device(device)
    n = decode_steps_for(context, decode_tokens)
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, model.spec.vocab_size, (batch, context - n), generator=gen).to(device)
    box: dict[str, DecodeState] = {}

    def prepare() -> None:
        box.pop("state", None)  # free the last cache before the next prefill
        box["state"] = start_decode(model, prefix, use_cache=use_cache)

    with torch.no_grad():
        timing = time_calls(lambda: decode(model, box["state"], n), device=device, warmup=warmup, repeats=repeats,
                            min_repeat_s=min_repeat_s, prepare=prepare, energy_mj=energy_mj, reference=reference)
    return timing.rate(batch * n), timing, box["state"]


# ---- the result -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Measurement:
    """Every figure of one design. `figures` holds plain values (None where unavailable);
    `stats` the timed figures with their spread; `unavailable` a reason for each None."""

    spec_hash: str
    settings: MeasureSettings
    fingerprint: dict[str, Any]
    stats: dict[str, Stat] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    lock_wait_s: float = 0.0

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-able: each timed figure `x` as its median, with `x_cv` beside it."""
        out: dict[str, Any] = {"spec_hash": self.spec_hash, "wall_s": self.wall_s, "lock_wait_s": self.lock_wait_s}
        out.update(self.figures)
        for name, stat in self.stats.items():
            out[name], out[f"{name}_cv"] = stat.median, stat.cv
        out["samples"] = {name: list(stat.samples) for name, stat in self.stats.items()}
        out["unavailable"] = dict(self.unavailable)
        out["fingerprint"] = self.fingerprint
        return out

    def table(self) -> str:
        """A small human-readable table: each figure, its spread, and where it came from."""
        rows = [("figure", "median", "cv")]
        for name, stat in self.stats.items():
            if name.endswith(f"_ctx{self.fingerprint['settings']['decode_contexts'][0]}"):
                continue  # the first context is shown unsuffixed
            rows.append((name, _fmt(stat.median), "-" if stat.cv is None else f"{100 * stat.cv:.1f}%"))
        for name, value in self.figures.items():
            if "_ctx" not in name and value is not None:
                rows.append((name, str(value) if isinstance(value, bool) else _fmt(value), ""))
        width = max(len(r[0]) for r in rows)
        lines = [f"{a:<{width}}  {b:>14}  {c:>7}" for a, b, c in rows]
        fp = self.fingerprint
        lines.append(f"on {fp['device_name']} ({fp['device']}), torch {fp['torch']}, {fp['threads']} threads; "
                     f"{len(self.unavailable)} figure(s) unavailable (see 'unavailable')")
        return "\n".join(lines)


def _fmt(value: float | int) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


# ---- measuring one design -------------------------------------------------------------
def measure(spec: ArchSpec, settings: MeasureSettings | None = None) -> Measurement:
    """Measure one design on this machine; see the module docstring for the protocol."""
    s = settings or MeasureSettings()
    device = resolve_device(s.device)
    if device.type == "cpu" and s.dtype == "float16":
        raise ValueError("dtype='float16' autocast is for CUDA; on the CPU use 'bfloat16' or 'float32'")
    s.seq_len_for(spec)
    t0 = time.perf_counter()
    lock = measurement_lock() if s.lock else contextlib.nullcontext(0.0)
    with (lock as waited, _torch_threads(s.threads), _current_device(device),
          torch.random.fork_rng(devices=_rng_devices(device))):
        run = _Run(spec, s, device)
        run.train_phase()
        run.inference_phase()
        run.record_machine_speed()
        fp = fingerprint(device, run.resolved_settings(), run.nvml)
    return Measurement(spec_hash=spec.hash, settings=s, fingerprint=fp, stats=run.stats, figures=run.figures,
                       unavailable=run.unavailable, wall_s=time.perf_counter() - t0, lock_wait_s=waited)


class _Run:
    """The state of one measurement: the spec, settings, device, and the figures so far."""

    def __init__(self, spec: ArchSpec, settings: MeasureSettings, device: torch.device) -> None:
        self.spec, self.s, self.device = spec, settings, device
        self.contexts = settings.contexts_for(spec)
        self.nvml = Nvml(device)
        self.energy_reason = self.nvml.energy_reason()
        self.stats: dict[str, Stat] = {}
        self.figures: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        self.refs: dict[str, tuple[Reference, float]] = {}  # kernel name → (kernel, calibrated rate)
        self.speed: list[float] = []  # every repeat's reference rate / calibrated rate

    # ---- helpers
    def put(self, name: str, value: Any, reason: str | None = None) -> None:
        self.figures[name] = value
        if value is None:
            self.unavailable[name] = reason or "not measured"
        else:  # a later phase measured what an earlier one skipped
            self.unavailable.pop(name, None)

    def put_stat(self, name: str, stat: Stat | None, reason: str | None = None) -> None:
        if stat is not None:
            self.stats[name] = stat
        else:
            self.put(name, None, reason)
            self.put(f"{name}_cv", None, reason)

    def wants(self, phase: str) -> bool:
        return phase in self.s.include

    def energy(self) -> Callable[[], int | None] | None:
        return self.nvml.energy_mj if self.energy_reason is None else None

    def fresh_model(self) -> nn.Module:
        """A new model from the spec, seeded: never the one a study trains."""
        from nas.model import build_model

        torch.manual_seed(self.s.seed)
        model = build_model(self.spec).to(self.device)
        return torch.compile(model) if self.s.compile else model

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = AUTOCAST[self.s.dtype]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def accelerated(self) -> Iterator[None]:
        """The SDPA backend asked for; a backend that cannot run this design is a user error."""
        with contextlib.ExitStack() as stack:
            if self.s.sdpa_backend is not None:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                names = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                         "cudnn": "CUDNN_ATTENTION"}
                stack.enter_context(sdpa_kernel(getattr(SDPBackend, names[self.s.sdpa_backend])))
            try:
                yield
            except RuntimeError as err:
                if self.s.sdpa_backend is None or "kernel" not in str(err).lower():
                    raise
                raise ValueError(
                    f"sdpa_backend={self.s.sdpa_backend!r} cannot run this design on {self.device}: "
                    f"{str(err).splitlines()[0]}; choose another backend or null"
                ) from None

    def reference_sampler(self, name: str) -> Callable[[], float]:
        """Seconds per call of reference kernel `name` (nas/reference.py), for `time_calls`'s
        `reference`; the kernel is calibrated on this node on first use."""
        dtype = AUTOCAST[self.s.dtype] or torch.float32
        if name not in self.refs:
            ref = reference(name, self.device, dtype)
            self.refs[name] = (ref, calibrated_rate(ref, self.device, dtype, os.path.dirname(lock_path())))
        ref = self.refs[name][0]
        # A sample lasts a quarter of a repeat, at most 50 ms: long enough to be steady, short
        # enough that the reference stays a small share of the measurement's time.
        min_s = min(0.05, self.s.min_repeat_s / 4)
        return lambda: sample(ref, self.device, min_s)

    def corrected(self, timing: Timing, name: str, units_per_call: float) -> Stat:
        """`timing`'s rate corrected to the node's calibrated speed of kernel `name`."""
        ref, calibrated = self.refs[name]
        self.speed.extend(r / calibrated for r in timing.reference_rate(ref.units).samples)
        return timing.corrected_rate(units_per_call, ref.units, calibrated)

    def record_machine_speed(self) -> None:
        """How fast the machine ran during this measurement, relative to its calibration (1.0):
        the spread is the drift the corrected figures took out."""
        if self.speed:
            self.stats["machine_speed"] = Stat.of(self.speed)
        else:
            self.put_stat("machine_speed", None, "no timed phase in include")

    def cache_dtype(self) -> str:
        return "float32" if AUTOCAST[self.s.dtype] is None else self.s.dtype

    def resolved_settings(self) -> dict[str, Any]:
        out = self.s.to_dict()
        out.update(device=str(self.device), seq_len=self.s.seq_len_for(self.spec),
                   decode_contexts=list(self.contexts), autocast=AUTOCAST[self.s.dtype] is not None,
                   reference_calibrated={name: {"rate": rate, "unit": f"{ref.unit}/s"}
                                         for name, (ref, rate) in self.refs.items()})
        return out

    # ---- training: throughput, peak memory, energy
    def train_phase(self) -> None:
        """Timed training steps on one fresh model, then peak memory of two steps on another."""
        B, T = self.s.batch_size, self.s.seq_len_for(self.spec)
        timing = None
        if self.wants("train"):
            step = _train_step(self.fresh_model().train(), B, T, self)
            sampler = self.reference_sampler("matmul")
            with self.accelerated():
                timing = time_calls(step, device=self.device, warmup=self.s.warmup, repeats=self.s.repeats,
                                    min_repeat_s=self.s.min_repeat_s, energy_mj=self.energy(), reference=sampler)
            del step
        self.record_train_speed(timing, B * T)
        if not self.wants("memory"):
            return self.record_train_memory(None)
        if timing is None:  # load code and kernels untracked, so their pages are not counted
            self.train_steps(1, B, T)
        tracker = _memory_for(self.device)
        tracker.start()  # before the model: parameters and optimizer state count too
        model = self.train_steps(2, B, T)  # the first step allocates the optimizer state
        self.record_train_memory(tracker)
        del model

    def train_steps(self, n: int, batch: int, seq_len: int) -> nn.Module:
        model = self.fresh_model().train()
        step = _train_step(model, batch, seq_len, self)
        with self.accelerated():
            for _ in range(n):
                step()
        return model

    def record_train_speed(self, timing: Timing | None, tokens_per_step: int) -> None:
        reason = "not asked for: 'train' is not in include"
        self.put_stat("train_tokens_per_s", None if timing is None else timing.rate(tokens_per_step), reason)
        self.put_stat("train_tokens_per_s_corrected",
                      None if timing is None else self.corrected(timing, "matmul", tokens_per_step), reason)
        self.put_stat("train_step_s", None if timing is None else Stat.of(timing.seconds), reason)
        self.record_mfu(timing, tokens_per_step)
        energy = None
        if timing is not None and timing.energy_j is not None:
            energy = timing.energy_j / (timing.calls * tokens_per_step)
        self.put("energy_j_per_token", energy, reason if timing is None else self.energy_reason)

    def record_train_memory(self, tracker: _CpuMemory | _CudaMemory | None) -> None:
        off = "not asked for: 'memory' is not in include"
        cuda_off = off if tracker is None else f"device is {self.device.type}, not CUDA"
        peak = None if tracker is None else tracker.peak_mb()
        self.put("peak_memory_mb", peak, off if tracker is None else tracker.reason)
        cuda = isinstance(tracker, _CudaMemory)
        self.put("cuda_max_memory_allocated_mb",
                 None if not cuda else torch.cuda.max_memory_allocated(self.device) / MB, cuda_off)
        self.put("cuda_max_memory_reserved_mb", tracker.reserved_peak_mb() if cuda else None, cuda_off)
        used = self.nvml.used_memory_mb() if tracker is not None else None
        self.put("nvml_used_memory_mb", used, off if tracker is None else self.nvml.reason)

    # ---- inference: prefill and decode at each context, the cache and its memory
    def inference_phase(self) -> None:
        if not any(self.wants(p) for p in ("prefill", "decode", "memory")):
            return self.skip_inference("not asked for: none of 'prefill', 'decode', 'memory' is in include")
        model = self.fresh_model().eval()
        for context in self.contexts:
            self.at_context(model, context)
        self.decode_memory(model, self.contexts[0])

    def skip_inference(self, reason: str) -> None:
        for context in self.contexts:
            for name in ("prefill_tokens_per_s", "prefill_tokens_per_s_corrected", *_DECODE_FIGURES):
                self.put_at(name, None, context, reason)
        for name in ("kv_cache_state_bytes", "decode_memory_mb", "decode_peak_memory_mb"):
            self.put(name, None, reason)

    def put_at(self, name: str, value: Any, context: int, reason: str | None = None) -> None:
        """A figure at one decode context, named `name_ctxC`; the first context's also as `name`."""
        for key in [f"{name}_ctx{context}"] + ([name] if context == self.contexts[0] else []):
            if isinstance(value, Stat) or name in _TIMED:
                self.put_stat(key, value, reason)
            else:
                self.put(key, value, reason)

    def at_context(self, model: nn.Module, context: int) -> None:
        off = "not asked for: '{}' is not in include"
        with self.accelerated(), self.autocast(), torch.no_grad():
            prefill, corrected = self.prefill(model, context) if self.wants("prefill") else (None, None)
            self.put_at("prefill_tokens_per_s", prefill, context, off.format("prefill"))
            self.put_at("prefill_tokens_per_s_corrected", corrected, context, off.format("prefill"))
            if not self.spec.causal:
                reason = "causal=false: an encoder has no incremental decoding"
            elif not self.wants("decode"):
                reason = off.format("decode")
            else:
                return self.decode_speed(model, context)
        for name in _DECODE_FIGURES:
            self.put_at(name, None, context, reason)
        if context == self.contexts[0]:
            self.put("kv_cache_state_bytes", None, reason)

    def decode_speed(self, model: nn.Module, context: int) -> None:
        sampler = self.reference_sampler("small_ops")  # one token at a time is bound by per-op overhead
        stat, timing, state = measure_decode(
            model, context=context, batch=self.s.decode_batch, decode_tokens=self.s.decode_tokens,
            device=self.device, warmup=self.s.warmup, repeats=self.s.repeats,
            min_repeat_s=self.s.min_repeat_s, seed=self.s.seed, energy_mj=self.energy(), reference=sampler)
        n = decode_steps_for(context, self.s.decode_tokens)
        self.put_at("decode_tokens_per_s", stat, context)
        self.put_at("decode_tokens_per_s_corrected", self.corrected(timing, "small_ops", self.s.decode_batch * n),
                    context)
        tokens = timing.calls * self.s.decode_batch * n
        energy = None if timing.energy_j is None else timing.energy_j / tokens
        self.put_at("decode_energy_j_per_token", energy, context, self.energy_reason)
        self.record_cache(state, context)

    def prefill(self, model: nn.Module, context: int) -> tuple[Stat, Stat]:
        """Prefill tokens/s at `context`: as measured, and corrected to the calibrated speed."""
        gen = torch.Generator().manual_seed(self.s.seed)
        prompt = torch.randint(0, self.spec.vocab_size, (self.s.decode_batch, context), generator=gen).to(self.device)
        causal = self.spec.causal

        def step() -> None:  # a causal model fills a fresh cache, as serving does
            model(prompt, model.new_cache() if causal else None)

        sampler = self.reference_sampler("matmul")
        timing = time_calls(step, device=self.device, warmup=self.s.warmup, repeats=self.s.repeats,
                            min_repeat_s=self.s.min_repeat_s, reference=sampler)
        tokens = self.s.decode_batch * context
        return timing.rate(tokens), self.corrected(timing, "matmul", tokens)

    def record_cache(self, state: DecodeState, context: int) -> None:
        """The bytes the cache holds after decoding, beside the analytic figure they must equal."""
        from nas.costs import kv_cache_bytes

        measured = state.cache.nbytes()
        analytic = kv_cache_bytes(self.spec, context, batch=self.s.decode_batch, dtype=self.cache_dtype())
        self.put_at("kv_cache_bytes", measured, context)
        self.put_at("kv_cache_bytes_analytic", analytic, context)
        self.put_at("kv_cache_bytes_match", measured == analytic, context)
        if context == self.contexts[0]:
            self.put("kv_cache_state_bytes", state.cache.state_nbytes())
        if measured != analytic:
            warnings.warn(f"{self.spec.hash}: the KV cache holds {measured} bytes at context {context}, but "
                          f"costs.kv_cache_bytes says {analytic} ({self.cache_dtype()})", stacklevel=2)

    def decode_memory(self, model: nn.Module, context: int) -> None:
        """Memory of one prefill + decode at the first context: the peak, and what the cache holds."""
        names = ("decode_memory_mb", "decode_peak_memory_mb")
        if not self.wants("memory") or not self.spec.causal:
            reason = ("causal=false: an encoder has no incremental decoding" if not self.spec.causal
                      else "not asked for: 'memory' is not in include")
            for name in names:
                self.put(name, None, reason)
            return
        n = decode_steps_for(context, self.s.decode_tokens)
        gen = torch.Generator().manual_seed(self.s.seed)
        prefix = torch.randint(0, self.spec.vocab_size, (self.s.decode_batch, context - n), generator=gen)
        prefix = prefix.to(self.device)
        tracker = _memory_for(self.device)
        with self.accelerated(), self.autocast(), torch.no_grad():
            if not self.wants("decode"):  # load code and kernels untracked, as the timed runs would have
                decode(model, start_decode(model, prefix, use_cache=True), n)
            tracker.start()
            state = start_decode(model, prefix, use_cache=True)
            decode(model, state, n)
        held, peak = tracker.held_mb(), tracker.peak_mb()  # the cache is still alive here
        self.put("decode_memory_mb", held, tracker.reason)
        self.put("decode_peak_memory_mb", peak, tracker.reason)
        if self.figures.get("kv_cache_bytes") is None:  # decode speed was not asked for
            self.record_cache(state, context)

    # ---- model FLOP utilisation
    def record_mfu(self, timing: Timing | None, tokens_per_step: int) -> None:
        """Analytic model FLOP/s over the matmul reference's FLOP/s, repeat by repeat: the
        reference runs around each repeat, so MFU is free of the machine's drift."""
        from nas.costs import costs

        if timing is None:
            for name in ("peak_flops_per_s", "model_flops_per_s", "mfu"):
                self.put_stat(name, None, "needs the training throughput: 'train' is not in include")
            return
        ref, _ = self.refs["matmul"]
        peak = timing.reference_rate(ref.units)
        flops = costs(self.spec, seq_len=self.s.seq_len_for(self.spec)).flops_per_token * tokens_per_step
        self.put_stat("peak_flops_per_s", peak)
        self.put_stat("model_flops_per_s", timing.rate(flops))
        self.put_stat("mfu", Stat.of([flops / s / p for s, p in zip(timing.seconds, peak.samples)]))


def _train_step(model: nn.Module, batch: int, seq_len: int, run: _Run) -> Callable[[], None]:
    """One full training step (forward, backward, AdamW) on a fixed random batch."""
    gen = torch.Generator().manual_seed(run.s.seed)
    data = torch.randint(0, run.spec.vocab_size, (batch, seq_len + 1), generator=gen).to(run.device)
    x, y = data[:, :-1], data[:, 1:]  # (B, T) inputs and next-token targets
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    # fp16 training needs loss scaling; its cost is part of a real step.
    scaler = torch.amp.GradScaler(run.device.type) if run.s.dtype == "float16" else None

    def step() -> None:
        with run.autocast():
            logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def _current_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """CUDA events record on the current device's stream: make it the measured device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""`measure(spec, settings)`: one design's figures, phase by phase, on a fresh seeded model.

The protocol and the figures are described in nas/measure/__init__.py. A figure this machine
cannot measure is None, with a one-line reason in `Measurement.unavailable`.
"""
from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from nas.common import torch_threads
from nas.device import resolve_device
from nas.measure.decoding import DecodeState, decode, decode_steps_for, measure_decode, start_decode
from nas.measure.fingerprint import MB, Nvml, fingerprint
from nas.measure.fits import check_measure_fits
from nas.measure.lock import measurement_lock
from nas.measure.memory import _CpuMemory, _CudaMemory, _memory_for
from nas.measure.noise import Noise, contention
from nas.measure.reference import Reference, calibrated_rate, calibration_dir, memory_bandwidth, reference, sample
from nas.measure.result import Measurement
from nas.measure.roofline import Machine, decode_roofline_tokens_per_s
from nas.measure.settings import AUTOCAST, MeasureSettings
from nas.measure.timing import Stat, Timing, time_calls
from search_spaces.spec import ArchSpec

if TYPE_CHECKING:  # nas.model is imported where a model is built, not with this module
    from nas.model import Transformer

_TIMED = ("prefill_tokens_per_s", "prefill_tokens_per_s_corrected", "decode_tokens_per_s",
          "decode_tokens_per_s_corrected")  # figures stored with their spread
_DECODE_FIGURES = ("decode_tokens_per_s", "decode_tokens_per_s_corrected", "decode_energy_j_per_token",
                   "decode_roofline_tokens_per_s", "decode_roofline_frac",
                   "kv_cache_bytes", "kv_cache_bytes_analytic", "kv_cache_bytes_match")


def measure(spec: ArchSpec, settings: MeasureSettings | None = None) -> Measurement:
    """Measure one design on this machine; the protocol is described in nas/measure/__init__.py."""
    s = settings or MeasureSettings()
    device = resolve_device(s.device)
    if device.type == "cpu" and s.dtype == "float16":
        raise ValueError("dtype='float16' autocast is for CUDA; on the CPU use 'bfloat16' or 'float32'")
    check_measure_fits(spec, batch=s.batch_size, seq_len=s.seq_len_for(spec), phases=s.include,
                       decode_batch=s.decode_batch, contexts=s.contexts_for(spec),
                       cache_dtype="float32" if AUTOCAST[s.dtype] is None else s.dtype, device=device)
    t0 = time.perf_counter()
    lock = measurement_lock() if s.lock else contextlib.nullcontext(0.0)
    with (lock as waited, torch_threads(s.threads), _current_device(device),
          torch.random.fork_rng(devices=_rng_devices(device))):
        held_from = time.time()
        run, tries = _quietest(spec, s, device)
        fp = fingerprint(device, run.resolved_settings(), run.nvml)
        held_to = time.time()
    return Measurement(spec_hash=spec.hash, settings=s, fingerprint=fp, stats=run.stats, figures=run.figures,
                       unavailable=run.unavailable, wall_s=time.perf_counter() - t0, lock_wait_s=waited,
                       held_from=held_from, held_to=held_to, noisy=run.noise.reasons,
                       tries=tuple(n.reasons for n in tries))


def _quietest(spec: ArchSpec, s: MeasureSettings, device: torch.device) -> tuple[_Run, list[Noise]]:
    """Measure until a try is within the contention limits (nas/measure/noise.py), at most
    1 + max_remeasures tries; the quietest try is kept whole (figures of one try, never mixed),
    with every try's noise beside it."""
    kept: _Run | None = None
    tries: list[Noise] = []
    for _ in range(1 + s.max_remeasures):
        run = _Run(spec, s, device)
        run.train_phase()
        run.inference_phase()
        run.record_machine_speed()
        tries.append(run.noise)
        if kept is None or run.noise.worst < kept.noise.worst:
            kept = run
        if not run.noise.noisy:
            break
    assert kept is not None
    return kept, tries


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
        # kernel name → for each timed phase, every repeat's reference rate / calibrated rate
        self.speed: dict[str, list[list[float]]] = {}
        self.machine: Machine | None = None  # the decode roofline's bandwidth and peak, once known
        for name in ("memory_bandwidth_bytes_per_s", "roofline_peak_flops_per_s"):
            self.put(name, None, "read for the decode roofline only, and no decoding was measured")

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

    def fresh_model(self) -> Transformer:
        """A new model from the spec, seeded: never the one a study trains."""
        from nas.model import build_model

        torch.manual_seed(self.s.seed)
        model = build_model(self.spec).to(self.device)
        # A compiled model forwards attribute access (new_cache, spec) to the model it wraps.
        return cast("Transformer", torch.compile(model)) if self.s.compile else model

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
        """Seconds per call of reference kernel `name` (nas/measure/reference.py), for `time_calls`'s
        `reference`; the kernel is calibrated on this node on first use."""
        dtype = AUTOCAST[self.s.dtype] or torch.float32
        if name not in self.refs:
            ref = reference(name, self.device, dtype)
            self.refs[name] = (ref, calibrated_rate(ref, self.device, dtype, calibration_dir()))
        ref = self.refs[name][0]
        # A sample lasts a quarter of a repeat, at most 50 ms: long enough to be steady, short
        # enough that the reference stays a small share of the measurement's time.
        min_s = min(0.05, self.s.min_repeat_s / 4)
        return lambda: sample(ref, self.device, min_s)

    def corrected(self, timing: Timing, name: str, units_per_call: float) -> Stat:
        """`timing`'s rate corrected to the node's calibrated speed of kernel `name`."""
        ref, calibrated = self.refs[name]
        self.speed.setdefault(name, []).append([r / calibrated for r in timing.reference_rate(ref.units).samples])
        return timing.corrected_rate(units_per_call, ref.units, calibrated)

    def record_machine_speed(self) -> None:
        """How fast the machine ran during this measurement, relative to its calibration (1.0):
        the spread is the drift the corrected figures took out."""
        if self.speed:
            self.stats["machine_speed"] = Stat.of([x for phases in self.speed.values() for speeds in phases for x in speeds])
        else:
            self.put_stat("machine_speed", None, "no timed phase in include")

    @functools.cached_property
    def noise(self) -> Noise:
        """Which figures of this try its neighbours spoiled, and why (nas/measure/noise.py)."""
        return contention(self.stats, self.speed, self.s, self.contexts[0])

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

    def train_steps(self, n: int, batch: int, seq_len: int) -> Transformer:
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
        cuda = tracker if isinstance(tracker, _CudaMemory) else None
        self.put("cuda_max_memory_allocated_mb",
                 None if cuda is None else torch.cuda.max_memory_allocated(self.device) / MB, cuda_off)
        self.put("cuda_max_memory_reserved_mb", None if cuda is None else cuda.reserved_peak_mb(), cuda_off)
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

    def at_context(self, model: Transformer, context: int) -> None:
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

    def decode_speed(self, model: Transformer, context: int) -> None:
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
        self.record_roofline(stat, context, n)
        self.record_cache(state, context)

    def record_roofline(self, measured: Stat, context: int, steps: int) -> None:
        """The decode roofline at `context` (nas/measure/roofline.py) and how close the median comes."""
        if self.machine is None:
            self.reference_sampler("matmul")  # calibrated on first use
            directory = calibration_dir()
            self.machine = Machine(bandwidth=memory_bandwidth(self.device, directory), peak_flops=self.refs["matmul"][1])
            self.put("memory_bandwidth_bytes_per_s", self.machine.bandwidth)
            self.put("roofline_peak_flops_per_s", self.machine.peak_flops)
        roof = decode_roofline_tokens_per_s(self.spec, context=context, steps=steps, batch=self.s.decode_batch,
                                            dtype=self.cache_dtype(), machine=self.machine)
        self.put_at("decode_roofline_tokens_per_s", roof, context)
        self.put_at("decode_roofline_frac", measured.median / roof, context)

    def prefill(self, model: Transformer, context: int) -> tuple[Stat, Stat]:
        """Prefill tokens/s at `context`: as measured, and corrected to the calibrated speed."""
        gen = torch.Generator().manual_seed(self.s.seed)
        prompt = torch.randint(0, self.spec.vocab_size, (self.s.decode_batch, context), generator=gen).to(self.device)
        causal = self.spec.causal

        def step() -> None:  # a causal model fills a fresh cache, as serving does
            model(prompt, model.new_cache(self.s.decode_batch, context) if causal else None)

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

    def decode_memory(self, model: Transformer, context: int) -> None:
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
                decode(model, start_decode(model, prefix, use_cache=True, max_tokens=context), n)
            tracker.start()
            state = start_decode(model, prefix, use_cache=True, max_tokens=context)
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


def _train_step(model: Transformer, batch: int, seq_len: int, run: _Run) -> Callable[[], None]:
    """One full training step (forward, backward, AdamW) on a fixed random batch."""
    gen = torch.Generator().manual_seed(run.s.seed)
    data = torch.randint(0, run.spec.vocab_size, (batch, seq_len + 1), generator=gen).to(run.device)
    x, y = data[:, :-1], data[:, 1:]  # (B, T) inputs and next-token targets
    # Fused on CUDA (one kernel for every parameter), as nas.train's optimiser is.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=run.device.type == "cuda")
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

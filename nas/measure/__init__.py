"""Hardware objectives measured honestly: throughput, memory, KV cache, energy and MFU of one design.

The protocol (`time_calls`): warm-up calls, then `repeats` timed repeats, each long enough to
last `min_repeat_s`; a figure is the median over the repeats, stored with its coefficient of
variation. CUDA is timed with events and synchronisation, the CPU with `perf_counter`. A fixed
reference kernel (nas/measure/reference.py) is timed around every repeat, so each throughput also comes
corrected for the machine's drift (`*_corrected`), and MFU is a per-repeat ratio.

`measure(spec, settings)` builds its own fresh, seeded model from the spec (never the model a
study trains) and holds `measurement_lock()` throughout, so trials that share a node never
measure at the same time. A measurement that neighbours spoiled (repeats that disagree, a
machine speed that drifts or sags: nas/measure/noise.py) is made again, up to `max_remeasures`
times; the quietest try is kept, with `noisy` saying which figures are still past their limits.
A figure this machine cannot measure is None, with a one-line reason in
`Measurement.unavailable`; nothing is estimated in its place.

The figures (`Measurement.to_dict()`; per decode context also as `<name>_ctx<C>`):
- `train_tokens_per_s`: batch x seq_len tokens per second of full steps (forward, backward, AdamW).
- `<throughput>_corrected`: the same repeats, each scaled by the node's calibrated reference
  rate over the reference's rate around it (nas/measure/reference.py): comparable across time on a
  machine whose speed drifts. `machine_speed`: those reference rates over the calibrated one.
- `prefill_tokens_per_s`: prompt tokens per second of one forward over decode_batch x C tokens
  that fills a fresh cache; `decode_tokens_per_s`: tokens per second of greedy one-token steps
  with the KV cache (preallocated for C tokens, written in place: nas/kv_cache.py), which holds
  C tokens at the end.
- `peak_memory_mb`: peak growth over two training steps of a fresh model (parameters, gradients,
  optimizer state, activations): CUDA `max_memory_allocated`, CPU VmHWM, over the baseline.
- `decode_memory_mb`: what the process still holds after prefill + decode at the first context
  (the cache, as allocated); `decode_peak_memory_mb`: the peak growth during them.
- `kv_cache_bytes`: `cache.nbytes()` after decoding, beside `kv_cache_bytes_analytic`
  (`nas.costs.kv_cache_bytes` in the dtype the cache is computed in) and `kv_cache_bytes_match`.
- `decode_roofline_tokens_per_s`: the tokens/s this machine allows those decode steps
  (nas/measure/roofline.py): each must read its weights and the cached entries it attends to
  (`nas.costs.decode_step_bytes`, in the cache's dtype) and do its FLOPs, at the node's calibrated
  copy bandwidth (`memory_bandwidth_bytes_per_s`) and matmul peak (`roofline_peak_flops_per_s`);
  `decode_roofline_frac`: the measured median over it.
- `energy_j_per_token`: NVML total energy of the whole device over the timed training calls
  (idle power included) per token; `decode_energy_j_per_token` likewise for decoding.
- `mfu`: `costs.flops_per_token` x training tokens/s / `peak_flops_per_s`, per repeat, where the
  peak is the rate of a large matmul in the same dtype timed around that repeat.

The package, one module per part of the protocol: `settings` (MeasureSettings), `timing`
(Stat, time_calls), `noise` (contention), `memory`, `lock` (the per-node lock), `decoding`, `result` (Measurement),
`protocol` (measure), `reference` (the reference kernels and the node's calibration), `roofline`
(the decode roofline) and `fingerprint` (the machine, NVML).
"""
from __future__ import annotations

from nas.measure.decoding import DecodeState, decode, decode_steps_for, measure_decode, start_decode
from nas.measure.lock import LOCK_FILE, lock_path, measurement_lock, node_lock
from nas.measure.protocol import measure
from nas.measure.result import Measurement
from nas.measure.roofline import Machine, decode_roofline_tokens_per_s, decode_step_s
from nas.measure.settings import AUTOCAST, PHASES, SDPA_BACKENDS, MeasureSettings
from nas.measure.timing import Stat, Timing, coefficient_of_variation, time_calls

__all__ = [
    "AUTOCAST", "LOCK_FILE", "PHASES", "SDPA_BACKENDS", "DecodeState", "Machine", "MeasureSettings", "Measurement",
    "Stat", "Timing", "coefficient_of_variation", "decode", "decode_roofline_tokens_per_s", "decode_step_s",
    "decode_steps_for", "lock_path", "measure", "measure_decode", "measurement_lock", "node_lock", "start_decode",
    "time_calls",
]

"""Memory of one phase of a measurement: resident-set growth on the CPU, allocator
statistics on CUDA."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from typing import Any

import torch

from nas.measure.fingerprint import MB


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

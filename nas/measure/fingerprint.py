"""What machine a figure was measured on, and what that machine's GPU can report.

`fingerprint()` names the hardware and software beside every measured figure, so that two
figures are only compared when they come from comparable setups. `Nvml` wraps the NVIDIA
management library for one torch CUDA device: driver version, used memory and the total
energy counter. NVML is optional: without a driver, without the `nvidia-ml-py` package or on
a CPU, every reading is None and `reason` says why in one line.
"""
from __future__ import annotations

import os
import platform
import sys
from types import ModuleType
from typing import Any

import torch

MB = 1024 * 1024


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("model name", "Processor", "cpu model")):  # x86, arm, mips
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Nvml:
    """NVML readings for one CUDA device; `handle is None` and `reason` set when unavailable."""

    def __init__(self, device: torch.device) -> None:
        self.module: ModuleType | None = None
        self.handle: Any = None
        self.reason: str | None = None
        if device.type != "cuda":
            self.reason = f"device is {device.type}, not CUDA: no NVML"
            return
        try:
            import pynvml  # from the nvidia-ml-py package
        except ImportError:
            self.reason = "the pynvml module is missing; pip install nvidia-ml-py"
            return
        try:
            pynvml.nvmlInit()  # reference-counted by NVML: repeated calls are cheap
            self.handle = _handle_for(pynvml, device)
        except pynvml.NVMLError as err:
            self.reason = f"NVML unavailable: {err}"
            return
        self.module = pynvml

    def _read(self, name: str, *args: Any) -> Any:
        if self.handle is None or self.module is None:
            return None
        try:
            return getattr(self.module, name)(*args)
        except self.module.NVMLError:
            return None

    def driver(self) -> str | None:
        version = self._read("nvmlSystemGetDriverVersion")
        return version.decode() if isinstance(version, bytes) else version

    def used_memory_mb(self) -> float | None:
        """Memory in use on the whole device (every process), as the driver sees it."""
        info = self._read("nvmlDeviceGetMemoryInfo", self.handle)
        return None if info is None else info.used / MB

    def energy_mj(self) -> int | None:
        """The device's total energy counter in millijoules since the driver loaded (Volta+)."""
        return self._read("nvmlDeviceGetTotalEnergyConsumption", self.handle)

    def energy_reason(self) -> str | None:
        """Why `energy_mj()` gives None, or None when it works."""
        if self.handle is None:
            return self.reason
        if self.energy_mj() is None:
            return "this GPU or driver does not report the NVML total energy counter"
        return None


def _handle_for(pynvml: ModuleType, device: torch.device) -> Any:
    """NVML's handle for a torch device. NVML numbers devices without CUDA_VISIBLE_DEVICES, so
    match by UUID; fall back to the index where torch does not expose the UUID."""
    index = device.index if device.index is not None else 0
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    if not uuid.startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"
    return pynvml.nvmlDeviceGetHandleByUUID(uuid)


def fingerprint(device: torch.device, settings: dict[str, Any], nvml: Nvml | None = None) -> dict[str, Any]:
    """Hardware, library versions and measurement settings, stored beside every figure."""
    cuda = device.type == "cuda"
    nvml = nvml or Nvml(device)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu_model": cpu_model(),
        "cpu_count": cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": nvml.driver(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "settings": settings,
    }

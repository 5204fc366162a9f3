"""Which device a run uses: one resolver for training, probes and measurement."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' → the first CUDA device if torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but torch sees no CUDA device here; use device='cpu' or 'auto'")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ValueError(f"device={name!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device

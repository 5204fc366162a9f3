"""Trained weights that leave qkvnas: ``save_model(model, DIR)`` and ``load_model(DIR)``.

A weights folder holds ``model.safetensors`` (the state dict; safetensors, not pickle, so that
loading runs no code), ``spec.json`` (the design, which rebuilds the module tree) and
``qkvnas.json`` (the qkvnas and schema versions, torch's, the spec hash, and the training
record if there was one). ``load_model`` rebuilds the model from the spec and loads the weights
strictly, after checking that the spec is the one the weights were saved with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.common import atomic_write_text
from nas.model import build_model
from search_spaces.spec import ArchSpec

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
META_FILE = "qkvnas.json"
SCHEMA_VERSION = 1  # of a weights folder; raised when its files change meaning


def qkvnas_version() -> str:
    try:
        return metadata.version("qkvnas")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


@dataclass(frozen=True)
class Saved:
    model: nn.Module
    spec: ArchSpec
    meta: dict[str, Any]


def save_model(model: nn.Module, spec: ArchSpec, folder: str | Path, *, record: dict[str, Any] | None = None) -> Path:
    """Write the weights, the spec and the metadata into ``folder`` (made if missing)."""
    from safetensors.torch import save_model as save_tensors

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_tensors(model, str(tmp))  # handles tied (shared) tensors, which save_file refuses
    tmp.replace(out / WEIGHTS_FILE)
    atomic_write_text(out / SPEC_FILE, spec.to_json(indent=2) + "\n")
    meta = {"schema_version": SCHEMA_VERSION, "qkvnas_version": qkvnas_version(), "torch": torch.__version__,
            "spec_hash": spec.hash, "params": sum(p.numel() for p in model.parameters()), "record": record}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")  # written last: complete
    return out


def load_model(folder: str | Path, *, device: str = "cpu") -> Saved:
    """Rebuild the model of a weights folder and load its weights; a one-line ValueError names
    what is missing or inconsistent."""
    from safetensors.torch import load_model as load_tensors

    path = Path(folder)
    for name in (WEIGHTS_FILE, SPEC_FILE, META_FILE):
        if not (path / name).is_file():
            raise ValueError(f"{path} has no {name}: give a folder written by `qkvnas train --save` or save_model()")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: weights schema {meta.get('schema_version')!r}; this qkvnas reads {SCHEMA_VERSION}")
    spec = ArchSpec.load(str(path / SPEC_FILE))
    if spec.hash != meta.get("spec_hash"):
        raise ValueError(f"{path}: spec.json (hash {spec.hash}) is not the design these weights were saved with "
                         f"({meta.get('spec_hash')}); restore the saved spec.json")
    model = build_model(spec)
    try:
        load_tensors(model, str(path / WEIGHTS_FILE), strict=True, device=device)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: the weights do not fit the spec's model: {first}") from None
    return Saved(model=model.to(device), spec=spec, meta=meta)

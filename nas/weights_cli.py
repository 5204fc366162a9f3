"""The commands for trained weights that leave qkvnas: ``qkvnas load DIR`` (rebuild a saved
model and check it) and ``qkvnas export-hf SOURCE --out DIR`` (a Hugging Face Llama model)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def writable_folder(path: str, flag: str) -> None:
    """A folder that exists or can be made, and can be written, before any work starts."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {path}: is a file; give a folder")
    parent = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path}: {parent} cannot be written; give a folder you can write")


def add_weights_commands(sub: Any) -> None:
    p = sub.add_parser("load", help="rebuild a saved model (qkvnas train --save DIR) and check its weights")
    p.add_argument("folder", help="a folder written by `qkvnas train --save`")
    p.set_defaults(handler=_cmd_load)
    p = sub.add_parser("export-hf", help="a design as a Hugging Face LlamaConfig and state dict (save_pretrained)")
    p.add_argument("source", help="a weights folder (qkvnas train --save) or a spec file (fresh, seeded weights)")
    p.add_argument("--out", required=True, help="folder for config.json and model.safetensors")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights when SOURCE is a spec file")
    p.set_defaults(handler=_cmd_export_hf)


def _cmd_load(args: argparse.Namespace) -> int:
    from nas.weights import load_model

    saved = load_model(args.folder)
    _print_json({"spec_hash": saved.spec.hash, "params": sum(p.numel() for p in saved.model.parameters()),
                 "qkvnas_version": saved.meta.get("qkvnas_version"), "schema_version": saved.meta.get("schema_version"),
                 "val_loss": (saved.meta.get("record") or {}).get("val_loss")})
    return 0


def _cmd_export_hf(args: argparse.Namespace) -> int:
    from nas.hf_export import export_hf, llama_incompatibility
    from nas.train import seeded_model
    from nas.weights import load_model
    from search_spaces.spec import ArchSpec

    source = Path(args.source)
    if source.is_dir():
        saved = load_model(source)
        spec, model = saved.spec, saved.model
    else:
        spec = ArchSpec.load(args.source)
        reason = llama_incompatibility(spec)  # before building anything
        if reason is not None:
            raise ValueError(f"design {spec.hash} cannot be a Hugging Face Llama model: {reason}")
        model = seeded_model(spec, args.seed)
    writable_folder(args.out, "--out")
    out = export_hf(spec, model.state_dict(), args.out)
    _print_json({"spec_hash": spec.hash, "out": str(out), "architecture": "LlamaForCausalLM"})
    return 0

"""Trained weights that leave qkvnas: save and load, and the Hugging Face Llama export checked
against qkvnas's own model in transformers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.model import build_model
from nas.weights import META_FILE, SPEC_FILE, load_model, save_model
from search_spaces.spec import ArchSpec, LayerSpec, uniform

LLAMA = dict(vocab_size=50, context=32, d_model=32, n_heads=4, ffn_dim=64, pos="rope", norm="rmsnorm",
             activation="swiglu")


def _scrambled(spec: ArchSpec) -> torch.nn.Module:
    """A model whose weights are far from initialisation, so attention and norms do real work."""
    torch.manual_seed(1)
    model = build_model(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return model


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    spec = ArchSpec(vocab_size=40, context=16, d_model=16, n_heads=2, ffn_dim=32, tie_embeddings=True,
                    layers=(LayerSpec(proj="q_kv"), LayerSpec(proj="qkv", n_kv_heads=1)))
    model = _scrambled(spec)
    save_model(model, spec, tmp_path / "w", record={"val_loss": 1.5})
    saved = load_model(tmp_path / "w")
    x = torch.randint(0, 40, (2, 16))
    assert saved.spec == spec and torch.equal(saved.model(x), model(x))
    assert saved.meta["spec_hash"] == spec.hash and saved.meta["record"] == {"val_loss": 1.5}
    assert saved.meta["qkvnas_version"] and saved.meta["schema_version"] == 1


def test_load_refuses_a_changed_spec_or_missing_files(tmp_path: Path) -> None:
    spec = ArchSpec(vocab_size=40, context=16, d_model=16, n_heads=2, ffn_dim=32, layers=uniform(1))
    folder = save_model(build_model(spec), spec, tmp_path / "w")
    other = ArchSpec(vocab_size=40, context=16, d_model=16, n_heads=2, ffn_dim=48, layers=uniform(1))
    (folder / SPEC_FILE).write_text(other.to_json())
    with pytest.raises(ValueError, match="not the design these weights were saved with"):
        load_model(folder)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "spec_hash": other.hash}))
    with pytest.raises(ValueError, match="do not fit the spec's model"):
        load_model(folder)
    with pytest.raises(ValueError, match="has no model.safetensors"):
        load_model(tmp_path / "nothing")


def test_train_save_then_load_and_export_from_the_command_line(tmp_path: Path, capsys) -> None:
    spec = ArchSpec(**{**LLAMA, "vocab_size": 256}, layers=(LayerSpec(n_kv_heads=2), LayerSpec(n_kv_heads=2)))
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert main(["train", str(path), "--tokens", "2048", "--batch-size", "4", "--no-progress",
                 "--save", str(tmp_path / "w"), "--data", str(_text(tmp_path))]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["load", str(tmp_path / "w")]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["val_loss"] == pytest.approx(trained["val_loss"]) and loaded["spec_hash"] == spec.hash
    assert main(["export-hf", str(tmp_path / "w"), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "LlamaForCausalLM"
    assert (tmp_path / "hf" / "config.json").exists()


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return path


@pytest.mark.parametrize("tied, kv_heads", [(True, 4), (False, 2), (False, 1)])
def test_llama_export_computes_the_same_logits_in_transformers(tmp_path: Path, tied: bool, kv_heads: int) -> None:
    from transformers import LlamaForCausalLM

    from nas.hf_export import export_hf

    spec = ArchSpec(**LLAMA, tie_embeddings=tied, layers=(LayerSpec(n_kv_heads=kv_heads),) * 3)
    model = _scrambled(spec)
    export_hf(spec, model.state_dict(), tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_key_value_heads == kv_heads and hf.config.tie_word_embeddings == tied
    x = torch.randint(0, 50, (2, 32))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.abs().mean() > 0.1  # a model that does something
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layers, changes, reason", [
    ((LayerSpec(proj="q_kv"),), {}, "proj='q_kv'"),
    ((LayerSpec(proj="qk_v"),), {}, "proj='qk_v'"),
    ((LayerSpec(n_kv_heads=2), LayerSpec(n_kv_heads=1)), {}, "different K/V head counts"),
    ((LayerSpec(kv_latent=8),), {}, "kv_latent"),
    ((LayerSpec(),), {"norm": "layernorm"}, "norm='layernorm'"),
    ((LayerSpec(),), {"pos": "learned"}, "pos='learned'"),
    ((LayerSpec(),), {"activation": "gelu"}, "activation='gelu'"),
    ((LayerSpec(),), {"bias": True}, "bias=True"),
])
def test_designs_llama_cannot_express_are_refused_with_the_reason(layers, changes, reason, tmp_path, capsys) -> None:
    spec = ArchSpec(**{**LLAMA, **changes}, layers=layers)
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert main(["export-hf", str(path), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert reason in err and "cannot be a Hugging Face Llama model" in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists()


def test_a_study_keeps_each_trials_weights_when_asked(tmp_path: Path) -> None:
    import optuna

    from nas.config import load_config
    from nas.trial import run_trial
    from search_spaces import get_space
    from tests.conftest import tiny_study

    path = tmp_path / "study.toml"
    path.write_text(tiny_study(extra="[export]\nweights = true\n"))
    config = load_config(path, [f"directory={tmp_path / 'study'}"])
    assert config.to_dict()["export"] == {"weights": True}
    assert "export" not in load_config(path, ["export.weights=false"]).to_dict()  # stored configs unchanged
    spec = get_space(config.space.name, **config.space.options).sample(
        optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    record = run_trial(spec, config, seed=3)
    assert record.status == "complete" and record.weights is not None
    saved = load_model(record.weights)
    assert saved.spec == spec and Path(record.weights).name == f"{spec.hash}-s3"
    assert saved.meta["record"]["val_loss"] == pytest.approx(record.values["val_loss"])
